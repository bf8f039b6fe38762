"""Procedural traffic signs, drawn with OpenCV: the pictures of the embedded world.

Every sign is drawn flat ("canonical") on a transparent square canvas, then placed in
a picture by a homography from a 3-D pose (yaw, pitch, roll, distance) over a
procedural background, and the picture is lit, blurred, occluded and noised.
Nothing is downloaded; every random choice comes from the one
:class:`numpy.random.Generator` passed in, so a seed fixes the pixels.

Signs are European-style (Vienna Convention shapes and colours), simplified:

============================  =====================================================
``stop``                      red octagon, white rim, white STOP
``yield``                     inverted triangle, red border, white inside
``no_entry``                  red disc, white bar
``speed_30|50|80``            white disc, red ring, black numerals
``priority_road``             yellow diamond, white and black border
``roundabout``                blue disc, three white arrows turning anticlockwise
``pedestrian_crossing``       blue square, white triangle, walking figure on stripes
``keep_right``                blue disc, white arrow pointing down to the right
``keep_left``                 ``keep_right`` mirrored: the reason no training
                              augmentation may flip images left-right
============================  =====================================================

Arrays are ``(H, W, 3)`` float32 RGB in ``[0, 1]`` (alpha ``(H, W)``) unless a
docstring says uint8.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

# Nominal sign colours, sRGB in [0, 1] (close to the RAL colours of road signs:
# traffic red 3020, signal white 9003, signal blue 5005, traffic yellow 1023).
RED = (0.76, 0.09, 0.11)
WHITE = (0.94, 0.94, 0.92)
BLUE = (0.0, 0.32, 0.62)
YELLOW = (0.98, 0.78, 0.05)
BLACK = (0.06, 0.06, 0.07)

#: Sub-pixel precision of OpenCV's polygon drawing (coordinates carry 4 fraction bits).
_SHIFT = 4
_ONE = 1 << _SHIFT

SignDrawer = Callable[[np.ndarray, np.ndarray, int, np.random.Generator], None]
_SIGNS: dict[str, SignDrawer] = {}


def register_sign(name: str) -> Callable[[SignDrawer], SignDrawer]:
    """Register a canonical sign drawer under a class name (the world's folder name).

    A drawer paints into a square uint8 RGB canvas and its uint8 mask (the sign's
    silhouette), both ``size`` pixels wide, using ``rng`` for its own variation
    (font, stroke width).
    """

    def deco(fn: SignDrawer) -> SignDrawer:
        if name in _SIGNS:
            raise ValueError(f"sign {name!r} is already registered")
        _SIGNS[name] = fn
        return fn

    return deco


def sign_classes() -> list[str]:
    """Class names of the registered signs, sorted (the order of an ImageFolder tree)."""
    return sorted(_SIGNS)


# --------------------------------------------------------------------- drawing kit
def _c8(rgb: tuple[float, float, float]) -> tuple[int, int, int]:
    return tuple(int(round(255 * v)) for v in rgb)  # type: ignore[return-value]


def _pts(points: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(points, np.float64) * _ONE).astype(np.int32).reshape(-1, 1, 2)


def _poly(img: np.ndarray, points: np.ndarray, color) -> None:
    cv2.fillPoly(
        img, [_pts(points)], _c8(color) if isinstance(color[0], float) else color, lineType=cv2.LINE_AA, shift=_SHIFT
    )


def _disc(img: np.ndarray, c: float, r: float, color) -> None:
    cv2.circle(
        img,
        (int(round(c * _ONE)), int(round(c * _ONE))),
        int(round(r * _ONE)),
        _c8(color) if isinstance(color[0], float) else color,
        -1,
        lineType=cv2.LINE_AA,
        shift=_SHIFT,
    )


def _regular(c: float, r: float, n: int, phase: float) -> np.ndarray:
    a = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([c + r * np.cos(a), c + r * np.sin(a)], 1)


def _text(
    img: np.ndarray,
    text: str,
    cx: float,
    cy: float,
    width: float,
    color,
    rng: np.random.Generator,
    height: float | None = None,
    fonts=(cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX),
) -> None:
    """Centre ``text`` at ``(cx, cy)``, ``width`` pixels wide and, when ``height`` is
    given, stretched to that height (road-sign numerals are tall and narrow); the
    font and stroke weight vary."""
    font = fonts[int(rng.integers(len(fonts)))]
    weight = float(rng.uniform(0.09, 0.14))  # stroke / glyph height
    base = 64.0
    (w1, h1), _ = cv2.getTextSize(text, font, 1.0, 1)
    scale = base / h1
    # A stretched glyph's vertical strokes thin by the horizontal/vertical stretch ratio,
    # about (width / height) / (w1 / h1) x 1.4 (the tight glyph box is taller than the
    # font's nominal one); drawing them that much bolder keeps the stroke weight even.
    squeeze = 1.0 if height is None else (width / height) * (h1 / w1) * 1.4
    thick = max(1, int(round(weight * base * squeeze)))
    (w, h), bl = cv2.getTextSize(text, font, scale, thick)
    pad = thick + 2
    glyphs = np.zeros((h + bl + 2 * pad, w + 2 * pad), np.uint8)
    cv2.putText(glyphs, text, (pad, pad + h), font, scale, 255, thick, lineType=cv2.LINE_AA)
    ys, xs = np.nonzero(glyphs)
    glyphs = glyphs[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    gh, gw = glyphs.shape
    tw = width
    th = height if height is not None else width * gh / gw
    x0, y0 = cx - tw / 2, cy - th / 2
    # map the tight glyph box onto the target box, with sub-pixel accuracy
    M = np.array([[tw / gw, 0, x0], [0, th / gh, y0]], np.float32)
    H, W = img.shape[:2]
    a = cv2.warpAffine(glyphs, M, (W, H), flags=cv2.INTER_AREA if tw < gw else cv2.INTER_LINEAR).astype(np.float32)
    a = (a / 255.0)[..., None]
    img[:] = np.round(img * (1 - a) + np.asarray(_c8(color), np.float32) * a).astype(np.uint8)


def _arrow(img: np.ndarray, tail, head, width: float, color) -> None:
    """A straight arrow: shaft of ``width`` and a triangular head ending at ``head``."""
    tail, head = np.asarray(tail, float), np.asarray(head, float)
    d = head - tail
    L = float(np.hypot(*d))
    u = d / L
    n = np.array([-u[1], u[0]])
    hl, hw = 1.6 * width, 1.3 * width
    base = head - u * hl
    shaft = np.array([tail + n * width / 2, base + n * width / 2, base - n * width / 2, tail - n * width / 2])
    _poly(img, shaft, color)
    _poly(img, np.array([head, base + n * hw, base - n * hw]), color)


# --------------------------------------------------------------------- the signs
@register_sign("stop")
def _stop(img, mask, s, rng):
    c, r = s / 2, 0.49 * s
    _poly(mask, _regular(c, r, 8, np.pi / 8), (255, 255, 255))
    _poly(img, _regular(c, r, 8, np.pi / 8), WHITE)
    _poly(img, _regular(c, 0.91 * r, 8, np.pi / 8), RED)
    _text(img, "STOP", c, c, 1.35 * r, WHITE, rng)


@register_sign("yield")
def _yield(img, mask, s, rng):
    tri = np.array([[0.02 * s, 0.10 * s], [0.98 * s, 0.10 * s], [0.5 * s, 0.93 * s]])
    cen = tri.mean(0)
    _poly(mask, tri, (255, 255, 255))
    _poly(img, tri, WHITE)
    _poly(img, cen + 0.93 * (tri - cen), RED)
    _poly(img, cen + float(rng.uniform(0.52, 0.6)) * (tri - cen), WHITE)


@register_sign("no_entry")
def _no_entry(img, mask, s, rng):
    c, r = s / 2, 0.49 * s
    _disc(mask, c, r, (255, 255, 255))
    _disc(img, c, r, WHITE)
    _disc(img, c, 0.94 * r, RED)
    hw, hh = 0.66 * r, float(rng.uniform(0.14, 0.18)) * r
    _poly(img, np.array([[c - hw, c - hh], [c + hw, c - hh], [c + hw, c + hh], [c - hw, c + hh]]), WHITE)


def _speed(limit: int) -> SignDrawer:
    def draw(img, mask, s, rng):
        c, r = s / 2, 0.49 * s
        _disc(mask, c, r, (255, 255, 255))
        _disc(img, c, r, RED)
        _disc(img, c, float(rng.uniform(0.74, 0.8)) * r, WHITE)
        # numerals about 45 % of the sign's diameter tall, as on real speed-limit signs
        _text(
            img,
            str(limit),
            c,
            c,
            float(rng.uniform(1.0, 1.1)) * r,
            BLACK,
            rng,
            height=float(rng.uniform(0.85, 0.95)) * r,
        )

    draw.__name__ = f"_speed_{limit}"
    return draw


for _limit in (30, 50, 80):
    register_sign(f"speed_{_limit}")(_speed(_limit))


@register_sign("priority_road")
def _priority(img, mask, s, rng):
    c, r = s / 2, 0.5 * s
    _poly(mask, _regular(c, r, 4, 0.0), (255, 255, 255))
    _poly(img, _regular(c, r, 4, 0.0), BLACK)
    _poly(img, _regular(c, 0.95 * r, 4, 0.0), WHITE)
    _poly(img, _regular(c, float(rng.uniform(0.6, 0.66)) * r, 4, 0.0), YELLOW)


@register_sign("roundabout")
def _roundabout(img, mask, s, rng):
    c, r = s / 2, 0.49 * s
    _disc(mask, c, r, (255, 255, 255))
    _disc(img, c, r, WHITE)
    _disc(img, c, 0.95 * r, BLUE)
    ra, w = 0.5 * r, 0.15 * r
    for k in range(3):
        a0 = np.deg2rad(90 + 120 * k)  # image coordinates: y down, so increasing angle is clockwise
        arc = a0 - np.linspace(0.0, np.deg2rad(78), 24)  # anticlockwise on screen
        outer = np.stack([c + (ra + w / 2) * np.cos(arc), c + (ra + w / 2) * np.sin(arc)], 1)
        inner = np.stack([c + (ra - w / 2) * np.cos(arc[::-1]), c + (ra - w / 2) * np.sin(arc[::-1])], 1)
        _poly(img, np.concatenate([outer, inner]), WHITE)
        end = arc[-1]
        p = np.array([c + ra * np.cos(end), c + ra * np.sin(end)])
        t = np.array([np.sin(end), -np.cos(end)])  # tangent, anticlockwise on screen
        nrm = np.array([np.cos(end), np.sin(end)])
        _poly(img, np.array([p + t * 1.7 * w, p + nrm * 1.4 * w, p - nrm * 1.4 * w]), WHITE)


@register_sign("pedestrian_crossing")
def _pedestrian(img, mask, s, rng):
    m = 0.03 * s
    sq = np.array([[m, m], [s - m, m], [s - m, s - m], [m, s - m]])
    _poly(mask, sq, (255, 255, 255))
    _poly(img, sq, WHITE)
    _poly(img, np.array([[2 * m, 2 * m], [s - 2 * m, 2 * m], [s - 2 * m, s - 2 * m], [2 * m, s - 2 * m]]), BLUE)
    tri = np.array([[0.5 * s, 0.14 * s], [0.88 * s, 0.84 * s], [0.12 * s, 0.84 * s]])
    _poly(img, tri, WHITE)
    # zebra stripes
    for k in range(4):
        x0 = 0.27 * s + k * 0.13 * s
        _poly(
            img,
            np.array([[x0, 0.74 * s], [x0 + 0.07 * s, 0.74 * s], [x0 + 0.05 * s, 0.80 * s], [x0 - 0.02 * s, 0.80 * s]]),
            BLACK,
        )
    # walking figure
    t = max(1, int(round(float(rng.uniform(0.035, 0.045)) * s)))
    k8 = _c8(BLACK)
    cv2.circle(img, (int(0.53 * s), int(0.35 * s)), int(0.045 * s), k8, -1, cv2.LINE_AA)
    hip, neck = (int(0.5 * s), int(0.57 * s)), (int(0.52 * s), int(0.42 * s))
    for a, b in (
        (neck, hip),
        (hip, (int(0.42 * s), int(0.71 * s))),
        (hip, (int(0.6 * s), int(0.70 * s))),
        (neck, (int(0.42 * s), int(0.53 * s))),
        (neck, (int(0.61 * s), int(0.52 * s))),
    ):
        cv2.line(img, a, b, k8, t, cv2.LINE_AA)


@register_sign("keep_right")
def _keep_right(img, mask, s, rng):
    c, r = s / 2, 0.49 * s
    _disc(mask, c, r, (255, 255, 255))
    _disc(img, c, r, WHITE)
    _disc(img, c, 0.95 * r, BLUE)
    w = float(rng.uniform(0.2, 0.24)) * r
    _arrow(img, (c - 0.45 * r, c - 0.45 * r), (c + 0.42 * r, c + 0.42 * r), w, WHITE)


@register_sign("keep_left")
def _keep_left(img, mask, s, rng):
    _keep_right(img, mask, s, rng)
    img[:] = img[:, ::-1].copy()
    mask[:] = mask[:, ::-1].copy()


def draw_sign(name: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw sign ``name`` flat on a ``size`` x ``size`` canvas.

    Returns:
        ``(rgb, alpha)``: ``(size, size, 3)`` float32 in [0, 1] with colour wear
        (fading, desaturation, tint, grime) applied, and the ``(size, size)``
        float32 silhouette in [0, 1].
    """
    if name not in _SIGNS:
        raise KeyError(f"unknown sign {name!r}; known: {', '.join(sign_classes())}")
    img = np.zeros((size, size, 3), np.uint8)
    mask = np.zeros((size, size, 3), np.uint8)
    _SIGNS[name](img, mask, size, rng)
    rgb = img.astype(np.float32) / 255.0
    alpha = mask[..., 0].astype(np.float32) / 255.0
    # wear: fading, desaturation and a tint, all sign-wide
    grey = rgb.mean(2, keepdims=True)
    sat = float(rng.uniform(0.7, 1.05))
    rgb = grey + sat * (rgb - grey)
    rgb = rgb * float(rng.uniform(0.8, 1.02)) + rng.normal(0.0, 0.025, 3).astype(np.float32)
    if rng.random() < 0.3:  # grime: a few soft dark smudges
        dirt = np.zeros((size, size), np.float32)
        for _ in range(int(rng.integers(1, 4))):
            cx, cy = rng.uniform(0.2, 0.8, 2) * size
            ax = rng.uniform(0.05, 0.2, 2) * size
            cv2.ellipse(
                dirt,
                (int(cx), int(cy)),
                (int(ax[0]), int(ax[1])),
                float(rng.uniform(0, 180)),
                0,
                360,
                float(rng.uniform(0.1, 0.3)),
                -1,
            )
        dirt = cv2.GaussianBlur(dirt, (0, 0), size * 0.03)
        rgb = rgb * (1.0 - dirt[..., None])
    return np.clip(rgb, 0.0, 1.0).astype(np.float32), alpha


# --------------------------------------------------------------------- backgrounds
def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int, ch: int = 1) -> np.ndarray:
    small = rng.random((max(2, h // cell), max(2, w // cell), ch)).astype(np.float32)
    out = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    return out.reshape(h, w, ch)


def _vgrad(h: int, w: int, top, bottom) -> np.ndarray:
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    return np.broadcast_to((1 - t) * np.asarray(top, np.float32) + t * np.asarray(bottom, np.float32), (h, w, 3)).copy()


def _sky(rng, h, w):
    top = (
        np.array([0.25, 0.45, 0.8]) * rng.uniform(0.7, 1.2)
        if rng.random() < 0.75
        else np.full(3, rng.uniform(0.5, 0.8))
    )
    img = _vgrad(h, w, np.clip(top, 0, 1), np.clip(top + rng.uniform(0.1, 0.35), 0, 1))
    cloud = np.clip(_smooth_noise(rng, h, w, max(4, w // 6)) * 1.8 - 0.9, 0, 1)
    return img * (1 - cloud) + cloud * 0.95


def _foliage(rng, h, w):
    base = np.array([0.15, 0.35, 0.1]) * rng.uniform(0.6, 1.4) + rng.normal(0, 0.04, 3)
    n = _smooth_noise(rng, h, w, max(2, w // 24)) * 0.7 + _smooth_noise(rng, h, w, max(2, w // 6)) * 0.5
    return np.clip(base * (0.5 + n), 0, 1).astype(np.float32)


def _wall(rng, h, w):
    base = rng.uniform(0.3, 0.85, 3) * np.array([1.0, 0.9, 0.8])
    img = np.broadcast_to(base.astype(np.float32), (h, w, 3)).copy()
    img *= 0.85 + 0.3 * _smooth_noise(rng, h, w, max(2, w // 16))
    step = int(rng.integers(max(4, w // 6), max(5, w // 2)))
    dark = np.clip(base * 0.3, 0, 1)
    for y in range(int(rng.integers(0, step)), h, step):
        for x in range(int(rng.integers(0, step)), w, step):
            cv2.rectangle(img, (x, y), (x + step // 2, y + step // 2), tuple(float(v) for v in dark), -1)
    return img


def _road(rng, h, w):
    g = rng.uniform(0.25, 0.5)
    img = np.full((h, w, 3), g, np.float32) + (_smooth_noise(rng, h, w, 2) - 0.5) * 0.12
    if rng.random() < 0.6:
        x = int(rng.uniform(0.2, 0.8) * w)
        cv2.line(img, (x, 0), (x + int(rng.normal(0, w / 3)), h), (0.9, 0.9, 0.85), max(1, w // 20))
    return img


def _urban(rng, h, w):
    img = _sky(rng, h, w)
    for _ in range(int(rng.integers(2, 6))):
        x0 = int(rng.uniform(-0.2, 1.0) * w)
        bw, bh = int(rng.uniform(0.2, 0.6) * w), int(rng.uniform(0.3, 0.9) * h)
        col = tuple(float(v) for v in rng.uniform(0.25, 0.8, 3))
        cv2.rectangle(img, (x0, h - bh), (x0 + bw, h), col, -1)
    return img


_BACKGROUNDS: dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "sky": _sky,
    "foliage": _foliage,
    "wall": _wall,
    "road": _road,
    "urban": _urban,
}


def background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A procedural background ``(h, w, 3)`` float32: sky, foliage, wall, road, a
    street, or a horizon splitting two of them, with random clutter shapes (some of
    them sign-coloured discs and boxes, so colour alone cannot name a sign)."""
    kinds = sorted(_BACKGROUNDS)
    img = _BACKGROUNDS[kinds[int(rng.integers(len(kinds)))]](rng, h, w)
    if rng.random() < 0.4:  # a horizon: something else below
        y = int(rng.uniform(0.3, 0.8) * h)
        low = _BACKGROUNDS[kinds[int(rng.integers(len(kinds)))]](rng, h, w)
        img[y:] = low[y:]
    for _ in range(int(rng.poisson(1.5))):
        col = (RED, BLUE, WHITE, YELLOW, tuple(rng.uniform(0, 1, 3)))[int(rng.integers(5))]
        col = tuple(float(v) * float(rng.uniform(0.6, 1.0)) for v in col)
        cx, cy = int(rng.uniform(0, w)), int(rng.uniform(0, h))
        r = int(rng.uniform(0.05, 0.3) * w)
        if rng.random() < 0.5:
            cv2.circle(img, (cx, cy), r, col, -1, cv2.LINE_AA)
        else:
            cv2.rectangle(img, (cx - r, cy - r // 2), (cx + r, cy + r // 2), col, -1)
    return np.clip(img, 0, 1).astype(np.float32)


# --------------------------------------------------------------------- pose
@dataclass(frozen=True)
class Pose:
    """Where a flat sign sits in a picture.

    ``center`` and ``side`` are in picture pixels (``side`` is the width of the sign
    seen face-on); ``yaw``/``pitch``/``roll`` in degrees; ``distance`` in sign
    widths (smaller: stronger perspective).
    """

    center: tuple[float, float]
    side: float
    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    distance: float = 3.0

    def corners(self) -> np.ndarray:
        """The sign's four corners (top-left, top-right, bottom-right, bottom-left) in
        picture pixels, ``(4, 2)`` float64: a pinhole projection of the rotated square."""
        y, p, r = (math.radians(v) for v in (self.yaw, self.pitch, self.roll))
        ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
        rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
        rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
        sq = np.array([[-0.5, -0.5, 0], [0.5, -0.5, 0], [0.5, 0.5, 0], [-0.5, 0.5, 0]])
        pts = sq @ (rz @ ry @ rx).T + np.array([0.0, 0.0, self.distance])
        xy = pts[:, :2] / pts[:, 2:3] * self.distance
        return xy * self.side + np.asarray(self.center, np.float64)


def place(canvas: np.ndarray, rgb: np.ndarray, alpha: np.ndarray, pose: Pose) -> np.ndarray:
    """Composite a flat sign into ``canvas`` (in place) at ``pose``; returns the
    warped alpha ``(H, W)`` (where the sign covers the picture)."""
    s = rgb.shape[0]
    src = np.array([[0, 0], [s, 0], [s, s], [0, s]], np.float32)
    H = cv2.getPerspectiveTransform(src, pose.corners().astype(np.float32))
    h, w = canvas.shape[:2]
    warped = cv2.warpPerspective(rgb, H, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    a = cv2.warpPerspective(alpha, H, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    canvas *= 1.0 - a[..., None]
    canvas += warped * a[..., None]
    return a


# --------------------------------------------------------------------- photometry
def occlude(img: np.ndarray, quad: np.ndarray, rng: np.random.Generator) -> None:
    """Cover part of the sign (in place): a branch with leaves, a blob or a sticker,
    anchored on the sign's outline so at most about a quarter of it is hidden."""
    side = float(np.linalg.norm(quad[1] - quad[0]) + np.linalg.norm(quad[2] - quad[1])) / 2
    k = int(rng.integers(4))
    t = float(rng.random())
    anchor = quad[k] * (1 - t) + quad[(k + 1) % 4] * t
    kind = int(rng.integers(3))
    if kind == 0:  # branch with leaves
        col = np.array([0.12, 0.3, 0.08]) * rng.uniform(0.6, 1.4)
        d = rng.normal(0, 1, 2)
        d /= np.linalg.norm(d) + 1e-9
        end = anchor + d * side * rng.uniform(0.6, 1.2)
        cv2.line(
            img,
            tuple(int(v) for v in anchor - d * side),
            tuple(int(v) for v in end),
            (0.25, 0.17, 0.08),
            max(1, int(side * 0.04)),
            cv2.LINE_AA,
        )
        for _ in range(int(rng.integers(3, 8))):
            p = anchor + d * side * rng.uniform(-0.5, 0.4) + rng.normal(0, side * 0.08, 2)
            ax = (max(1, int(side * rng.uniform(0.06, 0.13))), max(1, int(side * rng.uniform(0.03, 0.07))))
            cv2.ellipse(
                img,
                tuple(int(v) for v in p),
                ax,
                float(rng.uniform(0, 180)),
                0,
                360,
                tuple(float(v) for v in np.clip(col * rng.uniform(0.7, 1.3), 0, 1)),
                -1,
                cv2.LINE_AA,
            )
    elif kind == 1:  # blob (a person, a car roof, a bin)
        col = tuple(float(v) for v in rng.uniform(0.05, 0.7, 3))
        ax = (max(1, int(side * rng.uniform(0.12, 0.3))), max(1, int(side * rng.uniform(0.12, 0.3))))
        cv2.ellipse(img, tuple(int(v) for v in anchor), ax, float(rng.uniform(0, 180)), 0, 360, col, -1, cv2.LINE_AA)
    else:  # sticker
        c = anchor + (quad.mean(0) - anchor) * rng.uniform(0.1, 0.5)
        hs = side * rng.uniform(0.06, 0.14)
        col = tuple(float(v) for v in rng.uniform(0.5, 1.0, 3))
        cv2.rectangle(img, (int(c[0] - hs), int(c[1] - hs * 0.6)), (int(c[0] + hs), int(c[1] + hs * 0.6)), col, -1)


def light(img: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Lighting: exposure, gamma, a colour cast, a shading gradient and sometimes glare."""
    h, w = img.shape[:2]
    gain = math.exp(rng.uniform(math.log(0.5), math.log(1.3)) * strength)
    gamma = math.exp(rng.uniform(-0.22, 0.22) * strength)
    cast = 1.0 + rng.normal(0.0, 0.06 * strength, 3).astype(np.float32)
    ang = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = (xx / w - 0.5) * math.cos(ang) + (yy / h - 0.5) * math.sin(ang)
    shade = 1.0 + rng.uniform(-0.6, 0.6) * strength * ramp
    out = img * (gain * shade[..., None] * cast)
    if rng.random() < 0.15 * strength:
        glare = np.zeros((h, w), np.float32)
        cv2.circle(glare, (int(rng.uniform(0, w)), int(rng.uniform(0, h))), int(rng.uniform(0.1, 0.35) * w), 1.0, -1)
        glare = cv2.GaussianBlur(glare, (0, 0), 0.15 * w)
        out = out + glare[..., None] * rng.uniform(0.2, 0.5)
    return np.clip(out, 0.0, 1.0) ** gamma


def degrade(img: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Camera defects at the final resolution: defocus or motion blur, sensor noise."""
    r = rng.random()
    if r < 0.5:
        img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.3, 1.0) * strength) + 1e-3)
    elif r < 0.65:
        n = int(rng.integers(2, 4))
        k = np.zeros((2 * n + 1, 2 * n + 1), np.float32)
        a = rng.uniform(0, np.pi)
        cv2.line(
            k,
            (int(n - n * math.cos(a)), int(n - n * math.sin(a))),
            (int(n + n * math.cos(a)), int(n + n * math.sin(a))),
            1.0,
            1,
        )
        img = cv2.filter2D(img, -1, k / k.sum())
    sigma = float(rng.uniform(0.0, 0.03)) * strength
    img = img + rng.normal(0.0, sigma, img.shape).astype(np.float32)
    return np.clip(img, 0.0, 1.0)


def to_uint8(img: np.ndarray) -> np.ndarray:
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


# --------------------------------------------------------------------- pictures
#: Supersampling factor of the classification crops: drawn at 2x, area-downsampled.
SUPERSAMPLE = 2


def sign_crop(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One classification picture: sign ``name`` roughly centred, ``(size, size, 3)`` uint8 RGB.

    Pose: face-on width 60-92 % of the picture (GTSRB crops keep a 10 % border
    around the sign), yaw +-35 deg, pitch +-20 deg, roll
    +-10 deg, centre within the margin left; 35 % of pictures are partly occluded.
    """
    W = size * SUPERSAMPLE
    canvas = background(rng, W, W)
    frac = float(rng.uniform(0.6, 0.92))
    side = frac * W
    slack = (1.0 - frac) * W / 2
    center = (W / 2 + rng.uniform(-0.8, 0.8) * slack, W / 2 + rng.uniform(-0.8, 0.8) * slack)
    pose = Pose(
        center=center,
        side=side,
        yaw=float(rng.uniform(-35, 35)),
        pitch=float(rng.uniform(-20, 20)),
        roll=float(rng.uniform(-10, 10)),
        distance=float(rng.uniform(2.5, 6.0)),
    )
    if rng.random() < 0.3:  # the sign's pole
        pw = side * 0.08
        cv2.rectangle(
            canvas,
            (int(center[0] - pw), int(center[1])),
            (int(center[0] + pw), W),
            tuple(float(v) for v in np.full(3, rng.uniform(0.4, 0.7))),
            -1,
        )
    rgb, alpha = draw_sign(name, max(96, W), rng)
    place(canvas, rgb, alpha, pose)
    if rng.random() < 0.35:
        occlude(canvas, pose.corners(), rng)
    canvas = light(canvas, rng)
    small = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)
    return to_uint8(degrade(small, rng))


@dataclass(frozen=True)
class Scene:
    """A road-side frame with one sign: the picture and where things are in it.

    ``quad``: the sign's corners (TL, TR, BR, BL) in pixels; ``box``: its bounding
    box ``[x0, y0, x1, y1]``; ``roi``: a square crop framing the sign as the
    classification pictures do (sign about 60 % of its side), inside the frame;
    ``patch_box``: a free square beside the sign, inside ``roi``, where a printed
    patch can be composited.
    """

    image: np.ndarray
    quad: np.ndarray
    box: tuple[int, int, int, int]
    roi: tuple[int, int, int, int]
    patch_box: tuple[int, int, int, int]

    def to_dict(self) -> dict:
        return {
            "quad": [[round(float(x), 2), round(float(y), 2)] for x, y in self.quad],
            "box": list(self.box),
            "roi": list(self.roi),
            "patch_box": list(self.patch_box),
        }


def _road_scene(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    horizon = int(rng.uniform(0.38, 0.5) * h)
    img = _sky(rng, h, w)
    # distant trees / buildings along the horizon
    for _ in range(int(rng.integers(4, 12))):
        x = int(rng.uniform(0, w))
        if rng.random() < 0.6:
            r = int(rng.uniform(0.03, 0.09) * w)
            col = np.array([0.12, 0.3, 0.1]) * rng.uniform(0.6, 1.3)
            cv2.circle(img, (x, horizon - r // 2), r, tuple(float(v) for v in col), -1, cv2.LINE_AA)
        else:
            bw, bh = int(rng.uniform(0.05, 0.15) * w), int(rng.uniform(0.05, 0.25) * h)
            cv2.rectangle(
                img, (x, horizon - bh), (x + bw, horizon), tuple(float(v) for v in rng.uniform(0.3, 0.8, 3)), -1
            )
    low = _foliage(rng, h, w)
    img[horizon:] = low[horizon:]
    # the road: a trapezoid to a vanishing point, with lane marks
    vx = w * rng.uniform(0.4, 0.6)
    half = w * rng.uniform(0.35, 0.6)
    road = np.array([[vx - 4, horizon], [vx + 4, horizon], [w / 2 + half, h], [w / 2 - half, h]])
    g = float(rng.uniform(0.25, 0.45))
    cv2.fillPoly(img, [road.astype(np.int32)], (g, g, g), cv2.LINE_AA)
    for t0 in np.arange(0.05, 1.0, 0.12):
        t1 = t0 + 0.05
        p0 = np.array([vx, horizon]) + t0**2 * (np.array([w / 2, h]) - np.array([vx, horizon]))
        p1 = np.array([vx, horizon]) + t1**2 * (np.array([w / 2, h]) - np.array([vx, horizon]))
        cv2.line(
            img,
            tuple(int(v) for v in p0),
            tuple(int(v) for v in p1),
            (0.92, 0.92, 0.88),
            max(1, int(3 * t1 * w / 320)),
            cv2.LINE_AA,
        )
    img += (_smooth_noise(rng, h, w, 3) - 0.5) * 0.06
    return img


def road_scene(name: str, rng: np.random.Generator, width: int = 640, height: int = 480) -> Scene:
    """A road-side frame ``(height, width, 3)`` uint8 with sign ``name`` on a pole
    beside the road, mildly turned, lit and blurred; see :class:`Scene`."""
    img = _road_scene(rng, width, height)
    side = float(rng.uniform(0.13, 0.3) * height)
    roi_side = side / 0.6
    margin = roi_side / 2 + 2
    left = rng.random() < 0.5
    cx = float(rng.uniform(margin, 0.35 * width) if left else rng.uniform(0.65 * width, width - margin))
    cy = float(rng.uniform(margin, max(margin + 1, 0.45 * height)))
    pose = Pose(
        center=(cx, cy),
        side=side,
        yaw=float(rng.uniform(-25, 25)),
        pitch=float(rng.uniform(-8, 8)),
        roll=float(rng.uniform(-4, 4)),
        distance=float(rng.uniform(4.0, 8.0)),
    )
    pw = max(2, int(side * 0.05))
    cv2.rectangle(img, (int(cx - pw), int(cy)), (int(cx + pw), height), (0.55, 0.56, 0.58), -1)
    rgb, alpha = draw_sign(name, int(2 * side), rng)
    place(img, rgb, alpha, pose)
    img = light(img, rng, strength=0.6)
    img = degrade(img, rng, strength=0.5)
    quad = pose.corners()
    x0, y0 = np.floor(quad.min(0)).astype(int)
    x1, y1 = np.ceil(quad.max(0)).astype(int)
    box = (int(max(0, x0)), int(max(0, y0)), int(min(width, x1)), int(min(height, y1)))
    half = int(round(roi_side / 2))
    rx0 = int(min(max(0, round(cx) - half), width - 2 * half))
    ry0 = int(min(max(0, round(cy) - half), height - 2 * half))
    roi = (rx0, ry0, rx0 + 2 * half, ry0 + 2 * half)
    ps = int(round(0.3 * side))
    # beside the sign, on the side facing the road (towards the image centre)
    px0 = min(box[2] + 1, roi[2] - ps) if left else max(box[0] - 1 - ps, roi[0])
    py0 = int(round(cy - ps / 2))
    patch_box = (int(px0), py0, int(px0 + ps), py0 + ps)
    return Scene(image=to_uint8(img), quad=quad, box=box, roi=roi, patch_box=patch_box)
