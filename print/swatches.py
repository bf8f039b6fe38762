"""The colours a patchlab chart prints: grey ramp, saturated, skin-like, RGB cube fill.

A chart measures how a printer and a camera change colours; ``patchlab calib
color`` fits its transform on some swatches and scores it on the others, so the
set spans the whole RGB cube (cube corners and a seeded random fill) and
densely samples the regions that matter most to the eye (greys and skin).
"""

from __future__ import annotations

import colorsys

import numpy as np

RGB = tuple[int, int, int]

#: Skin-like sRGB tones, light to dark (spread over common photographic skin reflectances).
SKIN_TONES: tuple[RGB, ...] = (
    (255, 224, 196),
    (247, 207, 178),
    (241, 194, 167),
    (232, 180, 148),
    (224, 172, 138),
    (207, 150, 114),
    (198, 134, 98),
    (175, 116, 84),
    (161, 102, 70),
    (135, 86, 60),
    (110, 70, 48),
    (80, 52, 38),
)
#: Hue angles (degrees) of the saturated swatches: primaries, secondaries and the six between them.
_HUES = {
    "red": 0,
    "orange": 30,
    "yellow": 60,
    "chartreuse": 90,
    "green": 120,
    "spring": 150,
    "cyan": 180,
    "azure": 210,
    "blue": 240,
    "violet": 270,
    "magenta": 300,
    "rose": 330,
}
_PRIMARY_SECONDARY = ("red", "yellow", "green", "cyan", "blue", "magenta")


def _hsv(h_deg: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h_deg / 360.0, s, v)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def grey_ramp(n: int) -> list[tuple[str, RGB]]:
    """``n`` evenly spaced greys from black to paper white (sRGB 0 .. 255)."""
    return [(f"grey_{i:02d}", (v, v, v)) for i, v in enumerate(np.round(np.linspace(0, 255, n)).astype(int).tolist())]


def saturated(full: bool = True) -> list[tuple[str, RGB]]:
    """Saturated swatches: 12 hues at full strength; with ``full``, also dark and light
    versions of the six primaries and secondaries."""
    out = [(name, _hsv(h, 1.0, 1.0)) for name, h in _HUES.items()]
    if full:
        out += [(f"{name}_dark", _hsv(_HUES[name], 1.0, 0.5)) for name in _PRIMARY_SECONDARY]
        out += [(f"{name}_light", _hsv(_HUES[name], 0.45, 1.0)) for name in _PRIMARY_SECONDARY]
    return out


def skin(n: int = len(SKIN_TONES)) -> list[tuple[str, RGB]]:
    """``n`` skin-like tones spread over :data:`SKIN_TONES`."""
    idx = np.round(np.linspace(0, len(SKIN_TONES) - 1, n)).astype(int)
    return [(f"skin_{i:02d}", SKIN_TONES[k]) for i, k in enumerate(idx.tolist())]


def rgb_cube(levels: int) -> list[tuple[str, RGB]]:
    """The ``levels**3`` colours of an evenly sampled RGB cube, corners first."""
    v = np.round(np.linspace(0, 255, levels)).astype(int).tolist()
    out = [(f"cube_{r}_{g}_{b}", (r, g, b)) for r in v for g in v for b in v]
    corners = [x for x in out if all(c in (0, 255) for c in x[1])]
    return corners + [x for x in out if x not in corners]


def _dedupe(items: list[tuple[str, RGB]]) -> list[tuple[str, RGB]]:
    seen: set[RGB] = set()
    out = []
    for name, rgb in items:
        if rgb not in seen:
            seen.add(rgb)
            out.append((name, rgb))
    return out


def chart_swatches(n: int = 150, *, seed: int = 0) -> list[tuple[str, RGB]]:
    """The full chart: 16 greys, 24 saturated, 12 skin, the 4-level RGB cube, then a
    seeded uniform random fill up to ``n`` swatches (no colour twice)."""
    return _fill(grey_ramp(16) + saturated(True) + skin(12) + rgb_cube(4), n, seed)


def _fill(items: list[tuple[str, RGB]], n: int, seed: int) -> list[tuple[str, RGB]]:
    """``items`` without repeats, topped up to ``n`` with seeded uniform random colours."""
    items = _dedupe(items)
    seen = {rgb for _, rgb in items}
    rng = np.random.default_rng(seed)
    k = 0
    while len(items) < n:
        rgb: RGB = tuple(int(v) for v in rng.integers(0, 256, 3))  # type: ignore[assignment]
        if rgb not in seen:
            seen.add(rgb)
            items.append((f"rand_{k:03d}", rgb))
        k += 1
    return items[:n]


def strip_swatches(n: int, *, seed: int = 0) -> list[tuple[str, RGB]]:
    """A small chart for a strip beside a patch: greys, the 12 saturated hues, skin, then
    a seeded random fill, ``n`` swatches in all."""
    n_grey = max(2, min(9, n // 4))
    n_skin = max(0, min(6, (n - n_grey - 12) // 2))
    return _fill(grey_ramp(n_grey) + saturated(False) + skin(n_skin), n, seed)
