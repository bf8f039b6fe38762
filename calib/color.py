"""Printer-to-camera colour: a differentiable transform, its fit, and the printable palette.

The transform maps the sRGB a patch is *printed with* to the sRGB a camera
*records* of the print (paper, inks and the camera's response together):

    t_c = curve_c(x_c)                 per-channel monotone tone curve (piecewise linear,
                                       ``knots`` segments, 0 -> 0, 1 -> 1), sRGB in, linear out
    y_lin = M @ t + b                  3x3 matrix and offset in linear RGB (ink cross-talk,
                                       paper white, black level, exposure, white balance)
    y = srgb_encode(clip(y_lin, 0, 1))

:class:`ColorTransform` applies it to ``(B, 3, H, W)`` images in [0, 1] and is
differentiable in its input, so the optimiser's EOT renderer can put it between the
patch and the scene (``patchlab optimize --calib color.json``). It is fitted to a
photographed chart by :func:`fit_color_transform` minimising the squared CIELAB
error, and scored in CIEDE2000 on held-out swatches.

The *printable palette* (for a non-printability score) is the set of colours the
camera saw on the chart, written by :func:`write_palette` as a text file with one
colour per line, ``r g b`` as integers 0-255 (sRGB), ``#`` comment lines allowed::

    np.loadtxt("color.palette.txt", ndmin=2) / 255.0   # (N, 3) in [0, 1]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from patchlab.color import linear_to_srgb, srgb_to_lab, srgb_to_linear
from patchlab.errors import ConfigError
from patchlab.utils import atomic_write_text, check_images, read_json_object

#: Name of the transform family in color.json.
TRANSFORM_TYPE = "tone_curves+matrix"
#: Default number of tone-curve segments.
DEFAULT_KNOTS = 8


def apply_color_transform(
    x: torch.Tensor, curves: torch.Tensor, matrix: torch.Tensor, offset: torch.Tensor
) -> torch.Tensor:
    """Apply a printer-to-camera transform to sRGB images.

    Args:
        x: ``(B, 3, H, W)`` sRGB in [0, 1] (values outside are clipped).
        curves: ``(3, K+1)`` tone-curve values at ``x = 0, 1/K, ..., 1`` (linear light).
        matrix: ``(3, 3)`` linear-RGB matrix.
        offset: ``(3,)`` linear-RGB offset.

    Returns:
        ``(B, 3, H, W)`` sRGB in [0, 1], same device and dtype as ``x``.
    """
    check_images(x)
    curves = curves.to(device=x.device, dtype=x.dtype)
    matrix = matrix.to(device=x.device, dtype=x.dtype)
    offset = offset.to(device=x.device, dtype=x.dtype)
    k = curves.shape[1] - 1
    u = x.clamp(0.0, 1.0) * k
    idx = u.detach().floor().clamp(max=k - 1).long()
    frac = u - idx.to(x.dtype)
    t = torch.stack(
        [curves[c][idx[:, c]] * (1 - frac[:, c]) + curves[c][idx[:, c] + 1] * frac[:, c] for c in range(3)], 1
    )
    lin = torch.einsum("ij,bjhw->bihw", matrix, t) + offset.view(1, 3, 1, 1)
    return linear_to_srgb(lin.clamp(0.0, 1.0))


class ColorTransform(nn.Module):
    """Printer-to-camera colour transform as a module (buffers; nothing to train).

    Shapes: ``(B, 3, H, W)`` sRGB in [0, 1] in and out. Load a fitted one with
    :meth:`from_json` (``color.json`` from ``patchlab calib color``).
    """

    def __init__(self, curves: torch.Tensor, matrix: torch.Tensor, offset: torch.Tensor):
        super().__init__()
        curves, matrix, offset = (torch.as_tensor(v, dtype=torch.float32) for v in (curves, matrix, offset))
        if curves.ndim != 2 or curves.shape[0] != 3 or curves.shape[1] < 2:
            raise ValueError(f"expected curves of shape (3, K+1) with K >= 1, got {tuple(curves.shape)}")
        if matrix.shape != (3, 3) or offset.shape != (3,):
            raise ValueError(
                f"expected matrix (3, 3) and offset (3,), got {tuple(matrix.shape)}, {tuple(offset.shape)}"
            )
        self.register_buffer("curves", curves)
        self.register_buffer("matrix", matrix)
        self.register_buffer("offset", offset)

    @property
    def knots(self) -> int:
        return self.curves.shape[1] - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply_color_transform(x, self.curves, self.matrix, self.offset)

    def extra_repr(self) -> str:
        return f"type={TRANSFORM_TYPE!r}, knots={self.knots}"

    @classmethod
    def identity(cls, knots: int = DEFAULT_KNOTS) -> "ColorTransform":
        """The (piecewise-linear approximation of the) identity: sRGB decode, I, 0, encode."""
        grid = torch.linspace(0, 1, knots + 1, dtype=torch.float64)
        return cls(srgb_to_linear(grid).repeat(3, 1), torch.eye(3), torch.zeros(3))

    def to_dict(self) -> dict:
        return {
            "type": TRANSFORM_TYPE,
            "space": "linear sRGB (D65)",
            "knots": self.knots,
            "curves": self.curves.tolist(),
            "matrix": self.matrix.tolist(),
            "offset": self.offset.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict, source: str = "colour transform") -> "ColorTransform":
        try:
            if d.get("type") != TRANSFORM_TYPE:
                raise ConfigError(
                    f"{source}: unknown colour transform type {d.get('type')!r} "
                    f"(this patchlab reads {TRANSFORM_TYPE!r})"
                )
            parts = [torch.tensor(d["curves"]), torch.tensor(d["matrix"]), torch.tensor(d["offset"])]
            if not all(bool(torch.isfinite(t).all()) for t in parts):
                raise ValueError("it holds numbers that are not finite")
            return cls(*parts)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ConfigError(f"{source} holds no valid colour transform: {exc}") from exc

    @classmethod
    def from_json(cls, path: str | Path) -> "ColorTransform":
        """Load the transform of a ``color.json`` written by ``patchlab calib color``."""
        p = Path(path)
        d = read_json_object(p, "colour calibration", missing="write one with `patchlab calib color`")
        if "transform" not in d:
            raise ConfigError(f"{p} is not a patchlab colour calibration (no 'transform' key)")
        return cls.from_dict(d["transform"], source=str(p))


def load_color_transform(path: str | Path) -> ColorTransform:
    """:meth:`ColorTransform.from_json`, as a function."""
    return ColorTransform.from_json(path)


def _lab(rgb_n3: torch.Tensor) -> torch.Tensor:
    return srgb_to_lab(rgb_n3, dim=-1)


def fit_color_transform(
    intended: np.ndarray,
    observed: np.ndarray,
    *,
    knots: int = DEFAULT_KNOTS,
    smoothness: float = 1e-2,
    max_iter: int = 500,
) -> ColorTransform:
    """Fit the transform mapping printed sRGB to observed sRGB (both ``(N, 3)`` in 0-255).

    Minimises the mean squared CIELAB difference plus ``smoothness`` times the
    squared second differences of the tone curves (in units of the curve range),
    with L-BFGS in float64. Curves stay monotone by construction (softmax steps).

    Raises:
        ConfigError: fewer swatches than the transform has parameters.
    """
    x = torch.as_tensor(np.asarray(intended, np.float64) / 255.0)
    y = torch.as_tensor(np.asarray(observed, np.float64) / 255.0)
    if x.ndim != 2 or x.shape[1] != 3 or x.shape != y.shape:
        raise ValueError(f"expected intended and observed as (N, 3), got {tuple(x.shape)}, {tuple(y.shape)}")
    n_params = 3 * knots + 12
    if x.shape[0] < max(8, n_params // 3):
        raise ConfigError(
            f"{x.shape[0]} swatches are too few to fit a {knots}-knot colour transform "
            f"({n_params} parameters): print the full chart (`patchlab print chart`) or lower --knots"
        )
    grid = torch.linspace(0, 1, knots + 1, dtype=torch.float64)
    steps0 = torch.diff(srgb_to_linear(grid)).clamp_min(1e-6)
    logits = torch.log(steps0).repeat(3, 1).clone().requires_grad_(True)
    matrix = torch.eye(3, dtype=torch.float64, requires_grad=True)
    offset = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    target = _lab(y)
    img = x.T.reshape(1, 3, -1, 1)

    def curves_of(lg: torch.Tensor) -> torch.Tensor:
        steps = torch.softmax(lg, dim=1)
        return torch.cat([torch.zeros(3, 1, dtype=lg.dtype), steps.cumsum(1)], 1)

    opt = torch.optim.LBFGS(
        [logits, matrix, offset],
        lr=1.0,
        max_iter=max_iter,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-10,
        tolerance_change=1e-12,
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        c = curves_of(logits)
        pred = apply_color_transform(img, c, matrix, offset).reshape(3, -1).T
        loss = ((_lab(pred) - target) ** 2).sum(1).mean()
        loss = loss + smoothness * (torch.diff(c, n=2, dim=1) * knots).pow(2).sum()
        loss.backward()
        return loss

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a few hundred parameters: thread hand-offs would cost more than the maths
    try:
        opt.step(closure)
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        return ColorTransform(curves_of(logits).float(), matrix.detach().float(), offset.detach().float())


def predict(transform: ColorTransform, rgb255: np.ndarray) -> np.ndarray:
    """Apply a transform to ``(N, 3)`` colours in 0-255; returns ``(N, 3)`` floats in 0-255."""
    x = torch.as_tensor(np.asarray(rgb255, np.float64) / 255.0).T.reshape(1, 3, -1, 1)
    with torch.no_grad():
        y = transform(x)  # computed in float64: the parameters follow the input's dtype
    return y.reshape(3, -1).T.numpy() * 255.0


# --------------------------------------------------------------------------------------
# palette file
# --------------------------------------------------------------------------------------

PALETTE_HEADER = (
    "patchlab printable palette: sRGB colours a camera saw on the printed chart, one per line, 'r g b' integers 0-255"
)


def palette_path_for(color_json: str | Path) -> Path:
    """The palette written beside a colour calibration: ``color.json`` -> ``color.palette.txt``."""
    p = Path(color_json)
    return p.with_name(p.stem + ".palette.txt")


def palette_text(colors: np.ndarray, comments: list[str] | None = None) -> str:
    """The palette file's text for ``(N, 3)`` colours in 0-255 (rounded, duplicates dropped)."""
    rgb = np.clip(np.round(np.asarray(colors, np.float64)), 0, 255).astype(int)
    _, first = np.unique(rgb, axis=0, return_index=True)
    rgb = rgb[np.sort(first)]
    lines = [f"# {PALETTE_HEADER}"] + [f"# {c}" for c in comments or []]
    lines += [f"{r} {g} {b}" for r, g, b in rgb.tolist()]
    return "\n".join(lines) + "\n"


def write_palette(path: str | Path, colors: np.ndarray, comments: list[str] | None = None) -> Path:
    """Write a palette file atomically (see the module docstring for the format)."""
    return atomic_write_text(path, palette_text(colors, comments))


def load_palette(path: str | Path) -> torch.Tensor:
    """Read a palette file as a ``(N, 3)`` float32 tensor in [0, 1]."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"palette file not found: {p} (write one with `patchlab calib color`)")
    try:
        arr = np.loadtxt(p, comments="#", ndmin=2, dtype=np.float64)
    except OSError as exc:
        raise ConfigError(f"cannot read palette file {p}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ConfigError(f"{p} is not a palette file ('r g b' integers 0-255 per line): {exc}") from exc
    if arr.shape[1] != 3 or arr.shape[0] == 0 or not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 255:
        raise ConfigError(f"{p} is not a palette file: expected rows of 3 values in 0-255, got shape {arr.shape}")
    return torch.from_numpy(arr / 255.0).float()
