"""Expectation over Transformation: render a patch into images, batched and differentiable.

The transforms act on the patch (the printed sticker), not on the scene: rotation,
scale, perspective, brightness, contrast, sensor noise and blur (Athalye et al.
2018, "Synthesizing robust adversarial examples"), then a placement in the image:

* ``side`` — touching a random side of the image, random position along it (the OT
  patch paper places patches "to the side of images" so they do not hide the object);
* ``random`` — anywhere fully inside the image;
* ``center`` — in the middle;
* ``fixed`` — at ``position = (fx, fy)``, fractions of the free range (0, 0 = top-left).

Everything random is drawn by :meth:`PatchRenderer.sample` from the generator it is
given, into an :class:`EOTParams` that can be logged (``to_dict``) and replayed
(``from_dict``): rendering itself is deterministic. The geometric part is one
homography per image (kornia's ``warp_perspective``, into a window around the
sticker rather than the whole image), so there is no per-sample Python loop; with
no rotation, scale or perspective the patch is pasted pixel for pixel at an
integer position.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import ConfigError
from .utils import check_images, check_patch

PLACEMENTS = ("side", "random", "center", "fixed")
SHAPES = ("square", "circle")
#: ``side`` placement: how far from its side (fraction of the free range) the patch may move inwards.
SIDE_JITTER_FRAC = 0.125
#: Render into a window around the sticker only while the window is at most this fraction of the image.
WINDOW_MAX_FRAC = 0.6


@dataclass(frozen=True)
class EOTConfig:
    """Ranges of the patch transforms; every field's neutral value disables it.

    Attributes:
        rotation_deg: in-plane rotation, uniform in ``[-r, r]`` degrees.
        scale: side length factor, uniform in ``[lo, hi]``.
        perspective: corner jitter, uniform in ``[-p, p]`` times the patch side, per coordinate.
        brightness: additive light change, uniform in ``[-b, b]``.
        contrast: multiplicative contrast about mid-grey, uniform in ``[lo, hi]``.
        noise: Gaussian sensor noise, standard deviation uniform in ``[0, noise]``.
        blur: Gaussian blur, sigma uniform in ``[0, blur]`` image pixels.
    """

    rotation_deg: float = 0.0
    scale: tuple[float, float] = (1.0, 1.0)
    perspective: float = 0.0
    brightness: float = 0.0
    contrast: tuple[float, float] = (1.0, 1.0)
    noise: float = 0.0
    blur: float = 0.0

    def __post_init__(self) -> None:
        def bad(msg: str) -> None:
            raise ConfigError(f"EOT: {msg}")

        for name in ("scale", "contrast"):
            v = getattr(self, name)
            if len(v) != 2 or not 0 < v[0] <= v[1]:
                bad(f"{name} must be [lo, hi] with 0 < lo <= hi, got {v}")
        for name in ("rotation_deg", "perspective", "brightness", "noise", "blur"):
            if getattr(self, name) < 0:
                bad(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.perspective >= 0.5:
            bad(f"perspective must be < 0.5 (corners would cross), got {self.perspective}")

    @property
    def geometric(self) -> bool:
        return self.rotation_deg > 0 or self.scale != (1.0, 1.0) or self.perspective > 0

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "EOT config") -> "EOTConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known - {"preset"})
        if unknown:
            raise ConfigError(f"{source}: unknown EOT keys {unknown}; known: {sorted(known)}")
        base = PRESETS[_preset_name(d.get("preset", "none"), source)]
        kw: dict[str, Any] = {}
        for k, v in d.items():
            if k == "preset":
                continue
            try:
                kw[k] = (float(v[0]), float(v[1])) if k in ("scale", "contrast") else float(v)
            except (TypeError, ValueError, IndexError):
                raise ConfigError(f"{source}: bad value for {k}: {v!r}") from None
        return replace(base, **kw)


PRESETS: dict[str, EOTConfig] = {
    # LaVAN / plain digital patch: placement only.
    "none": EOTConfig(),
    # robustness to resampling and small framing changes of a digital paste
    "digital": EOTConfig(rotation_deg=10.0, scale=(0.9, 1.1), brightness=0.05, contrast=(0.9, 1.1), noise=0.02),
    # a printed sticker in front of a camera: pose, light, sensor, focus
    "physical": EOTConfig(
        rotation_deg=20.0,
        scale=(0.8, 1.2),
        perspective=0.15,
        brightness=0.15,
        contrast=(0.8, 1.2),
        noise=0.04,
        blur=0.8,
    ),
}


def _preset_name(name: str, source: str = "--eot") -> str:
    if name not in PRESETS:
        raise ConfigError(f"{source}: unknown EOT preset {name!r}; presets: {', '.join(PRESETS)} (or a TOML file path)")
    return name


def load_eot(spec: str | Path) -> EOTConfig:
    """A preset name (``none``, ``digital``, ``physical``) or a TOML file.

    The TOML holds the :class:`EOTConfig` fields at top level or in an ``[eot]``
    table, optionally ``preset = "physical"`` as the base they override::

        preset = "physical"
        rotation_deg = 30
        scale = [0.7, 1.3]
    """
    s = str(spec)
    if s in PRESETS:
        return PRESETS[s]
    p = Path(s)
    if p.suffix.lower() != ".toml" and not p.exists():
        _preset_name(s)
    if not p.is_file():
        raise ConfigError(f"EOT file not found: {p}")
    try:
        d = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p} is not valid TOML: {exc}") from exc
    d = d.get("eot", d)
    return EOTConfig.from_dict(d, source=str(p))


@dataclass(frozen=True)
class EOTParams:
    """The sampled transform of each image of a batch (``B`` rows); replayable.

    Attributes:
        top_left: ``(B, 2)`` integer ``(x, y)`` of the patch's nominal box in the image.
        angle: ``(B,)`` rotation in degrees; scale: ``(B,)``; corners: ``(B, 4, 2)``
            perspective jitter in units of the patch side (TL, TR, BR, BL).
        brightness, contrast, noise_sigma, blur_sigma: ``(B,)``.
        noise_seed: seed of the noise field (drawn from the run's generator).
    """

    top_left: torch.Tensor
    angle: torch.Tensor
    scale: torch.Tensor
    corners: torch.Tensor
    brightness: torch.Tensor
    contrast: torch.Tensor
    noise_sigma: torch.Tensor
    blur_sigma: torch.Tensor
    noise_seed: int

    def __len__(self) -> int:
        return int(self.top_left.shape[0])

    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: (
                getattr(self, f.name).tolist()
                if isinstance(getattr(self, f.name), torch.Tensor)
                else getattr(self, f.name)
            )
            for f in fields(self)
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EOTParams":
        kw: dict[str, Any] = {}
        for f in fields(cls):
            v = d[f.name]
            if f.name == "noise_seed":
                kw[f.name] = int(v)
            elif f.name == "top_left":
                kw[f.name] = torch.tensor(v, dtype=torch.long)
            else:
                kw[f.name] = torch.tensor(v, dtype=torch.float32)
        return cls(**kw)


def params_rows(params: EOTParams, rows: slice) -> EOTParams:
    """The transforms of rows ``rows`` of a draw (the noise seed stays the draw's)."""
    kw = {
        f.name: (
            getattr(params, f.name)[rows]
            if isinstance(getattr(params, f.name), torch.Tensor)
            else getattr(params, f.name)
        )
        for f in fields(params)
    }
    return EOTParams(**kw)


def footprint(image_hw: tuple[int, int], patch_hw: tuple[int, int], frac: float) -> tuple[int, int]:
    """Patch size ``(h, w)`` in image pixels for an area fraction ``frac`` (aspect kept)."""
    H, W = image_hw
    h, w = patch_hw
    if not 0.0 < frac < 1.0:
        raise ConfigError(f"patch area fraction must be in (0, 1), got {frac}")
    area = frac * H * W
    fh = max(1, int(round(math.sqrt(area * h / w))))
    fw = max(1, int(round(math.sqrt(area * w / h))))
    return fh, fw


class PatchRenderer(nn.Module):
    """Paste a transformed patch into a batch of images.

    Args:
        image_hw: image size ``(H, W)`` the patch goes into.
        patch_hw: patch size ``(h, w)`` in patch pixels.
        frac: patch area over image area (the sticker's marker frame comes on top).
        shape: ``square`` or ``circle`` (inscribed; the rest of the square is not pasted).
        placement: one of :data:`PLACEMENTS`; ``position`` for ``fixed``.
        eot: transform ranges.
        color: optional differentiable ``(B, 3, h, w) -> (B, 3, h, w)`` printer-to-camera
            colour transform (``patchlab.calib.ColorTransform``), applied to the sticker.
        frame: render the printed marker frame around the patch (``patchlab.markers.marker_frame``),
            so EOT trains on what the camera sees of the cut-out; or a
            :class:`patchlab.markers.CarrierGeometry` (``print patch --carrier``, e.g.
            ``CarrierGeometry.from_dict(layout.meta["carrier"])``) to render the whole
            carrier card around it (``patchlab.markers.carrier_frame``).
        marker_ratio: marker side over patch side for the frame.

    ``forward(images, patch, params)``: images ``(B, 3, H, W)`` in [0, 1], patch
    ``(3, h, w)`` in [0, 1] (gradients flow to it), params from :meth:`sample`.
    """

    def __init__(
        self,
        image_hw: tuple[int, int],
        patch_hw: tuple[int, int],
        *,
        frac: float = 0.1,
        shape: str = "square",
        placement: str = "side",
        position: tuple[float, float] | None = None,
        eot: EOTConfig = PRESETS["none"],
        color: nn.Module | None = None,
        frame: Any = False,
        marker_ratio: float | None = None,
    ):
        super().__init__()
        if shape not in SHAPES:
            raise ConfigError(f"unknown patch shape {shape!r}; choose {' or '.join(SHAPES)}")
        if placement not in PLACEMENTS:
            raise ConfigError(f"unknown placement {placement!r}; choose one of {', '.join(PLACEMENTS)}")
        if placement == "fixed":
            if position is None or len(position) != 2 or not all(0.0 <= v <= 1.0 for v in position):
                raise ConfigError(f"placement 'fixed' needs --position FX,FY with both in [0, 1], got {position}")
        self.image_hw = (int(image_hw[0]), int(image_hw[1]))
        self.patch_hw = (int(patch_hw[0]), int(patch_hw[1]))
        self.frac, self.shape, self.placement = float(frac), shape, placement
        self.position = tuple(position) if position is not None else None
        self.eot = eot
        self.color = color
        fh, fw = footprint(self.image_hw, self.patch_hw, self.frac)
        h, w = self.patch_hw
        # The sticker (patch + marker frame) is drawn ``up`` times finer than the patch
        # grid, so a patch shown larger than its pixels keeps sharp marker edges and
        # exact cells (each patch pixel is ``up`` x ``up`` sticker pixels).
        self.up = max(1, int(math.ceil(fw / w - 1e-9))) if frame else 1
        self.px_scale = fw / (w * self.up)  # image pixels per sticker pixel
        u = self.up
        if frame:
            from .markers import FRAME_MARKER_RATIO, CarrierGeometry, carrier_frame, marker_frame

            if isinstance(frame, CarrierGeometry):
                mf = carrier_frame(frame, (w, h), scale=u)
            else:
                mf = marker_frame((w, h), scale=u, marker_ratio=marker_ratio or FRAME_MARKER_RATIO)
            self.inner = mf.inner_box
            sticker = torch.from_numpy(mf.image.astype(np.float32) / 255.0).permute(2, 0, 1)
        else:
            self.inner = (0, 0, w, h)
            sticker = torch.zeros(3, h, w)
        x0, y0, x1, y1 = self.inner
        alpha = torch.ones(1, *sticker.shape[1:])
        if shape == "circle":
            hu, wu = h * u, w * u
            yy, xx = torch.meshgrid(torch.arange(hu) + 0.5, torch.arange(wu) + 0.5, indexing="ij")
            inside = (((xx - wu / 2) / (wu / 2)) ** 2 + ((yy - hu / 2) / (hu / 2)) ** 2) <= 1.0
            patch_alpha = inside.float()
            if frame:  # paper around the circle stays in the cut-out
                sticker[:, y0:y1, x0:x1] = torch.where(inside, 0.0, 1.0)
            else:
                alpha[0, y0:y1, x0:x1] = patch_alpha
        else:
            patch_alpha = torch.ones(h * u, w * u)
        self.register_buffer("sticker", sticker, persistent=False)
        self.register_buffer("alpha", alpha, persistent=False)
        self.register_buffer("patch_alpha", patch_alpha, persistent=False)
        sh, sw = sticker.shape[1:]
        self.sticker_px = (int(round(sh * self.px_scale)), int(round(sw * self.px_scale)))
        if self.sticker_px[0] > self.image_hw[0] or self.sticker_px[1] > self.image_hw[1]:
            raise ConfigError(
                f"the patch ({self.sticker_px[1]}x{self.sticker_px[0]} px for area fraction {frac:g}"
                f"{' with its marker frame' if frame else ''}) is larger than the "
                f"{self.image_hw[1]}x{self.image_hw[0]} image: lower --patch-frac"
            )

    def extra_repr(self) -> str:
        return (
            f"image_hw={self.image_hw}, patch_hw={self.patch_hw}, frac={self.frac}, shape={self.shape!r}, "
            f"placement={self.placement!r}, eot={self.eot}, frame={self.inner != (0, 0) + self.patch_hw[::-1]}"
        )

    # ------------------------------------------------------------------ sampling
    def sample(self, batch: int, generator: torch.Generator | None = None) -> EOTParams:
        """Draw the transform of ``batch`` images from ``generator`` (CPU)."""
        g = generator
        H, W = self.image_hw
        sh, sw = self.sticker_px
        free_x, free_y = W - sw, H - sh

        def u(lo: float, hi: float) -> torch.Tensor:
            return lo + (hi - lo) * torch.rand(batch, generator=g)

        def ints(hi: int) -> torch.Tensor:
            return torch.randint(0, hi + 1, (batch,), generator=g)

        if self.placement == "random":
            tl = torch.stack([ints(free_x), ints(free_y)], 1)
        elif self.placement == "center":
            tl = torch.tensor([[free_x // 2, free_y // 2]]).expand(batch, 2).clone()
        elif self.placement == "fixed":
            fx, fy = self.position  # type: ignore[misc]
            tl = torch.tensor([[int(round(fx * free_x)), int(round(fy * free_y))]]).expand(batch, 2).clone()
        else:  # side: touch one of the four sides, anywhere along it
            side = torch.randint(0, 4, (batch,), generator=g)
            along_x, along_y = ints(free_x), ints(free_y)
            inset_x = ints(int(SIDE_JITTER_FRAC * free_x))
            inset_y = ints(int(SIDE_JITTER_FRAC * free_y))
            x = torch.where(side == 0, inset_x, torch.where(side == 1, free_x - inset_x, along_x))
            y = torch.where(side == 2, inset_y, torch.where(side == 3, free_y - inset_y, along_y))
            tl = torch.stack([x, y], 1)
        e = self.eot
        return EOTParams(
            top_left=tl.long(),
            angle=u(-e.rotation_deg, e.rotation_deg),
            scale=u(*e.scale),
            corners=(torch.rand(batch, 4, 2, generator=g) * 2 - 1) * e.perspective,
            brightness=u(-e.brightness, e.brightness),
            contrast=u(*e.contrast),
            noise_sigma=u(0.0, e.noise),
            blur_sigma=u(0.0, e.blur),
            noise_seed=int(torch.randint(0, 2**62, (1,), generator=g)),
        )

    # ----------------------------------------------------------------- rendering
    def stickers(
        self, patch: torch.Tensor, params: EOTParams, *, rows: slice | None = None, dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The transformed stickers before placement: colour ``(B, 3, sh, sw)`` and alpha ``(B, 1, sh, sw)``.

        ``rows`` renders only those rows of the draw ``params`` (a data-parallel rank's
        share of the global batch), bit for bit as the whole draw would render them: the
        blur kernel's size and the noise field are those of the whole draw.

        ``dtype`` (default: the patch's): the stickers' precision. The sticker is composed
        in the patch's precision and cast once it is repeated for the batch, so the
        gradient's sum over the batch runs in the patch's precision (the optimiser passes a
        float64 patch: see :meth:`patchlab.optimize.loop.PatchOptimizer.one_step`).
        """
        check_patch(patch)
        if tuple(patch.shape[1:]) != self.patch_hw:
            raise ValueError(
                f"expected a patch of shape (3, {self.patch_hw[0]}, {self.patch_hw[1]}), got {tuple(patch.shape)}"
            )
        sig_all = params.blur_sigma / self.px_scale  # sticker pixels; params live on the CPU (no device sync)
        blur_k = 2 * int(math.ceil(3 * float(sig_all.max()))) + 1 if float(sig_all.max()) > 0 else 0
        noisy = float(params.noise_sigma.max()) > 0
        n_all = len(params)
        if rows is not None:
            params = params_rows(params, rows)
        B = len(params)
        dev, pdt = patch.device, patch.dtype
        dt = pdt if dtype is None else dtype
        x0, y0, x1, y1 = self.inner
        sticker = self.sticker.to(dev, pdt)
        pa = self.patch_alpha.to(dev, pdt)
        up = patch.repeat_interleave(self.up, 1).repeat_interleave(self.up, 2) if self.up > 1 else patch
        inner = sticker[:, y0:y1, x0:x1] * (1 - pa) + up * pa
        s = torch.cat(
            [sticker[:, :y0], torch.cat([sticker[:, y0:y1, :x0], inner, sticker[:, y0:y1, x1:]], 2), sticker[:, y1:]], 1
        )
        s = s.unsqueeze(0).expand(B, -1, -1, -1)
        if dt != pdt:
            s = s.to(dt)
        if self.color is not None:
            s = self.color(s)
        if blur_k:
            import kornia

            k = blur_k
            # sigma stays a host tensor: kornia checks it there and copies it without waiting for the device
            sigma = (params.blur_sigma.to(dt) / self.px_scale).clamp_min(1e-3)[:, None].expand(B, 2).contiguous()
            s = kornia.filters.gaussian_blur2d(s, (k, k), sigma, border_type="replicate")
        c = params.contrast.to(dev, dt)[:, None, None, None]
        b = params.brightness.to(dev, dt)[:, None, None, None]
        s = (s - 0.5) * c + 0.5 + b
        if noisy:
            # the noise field is drawn on the device (no host-side field, no copy), for the
            # whole draw so a rank's rows match the single-process render
            # (the meta device, shapes without data, has no generator: the no-sync test runs there)
            gen = None if dev.type == "meta" else torch.Generator(device=dev).manual_seed(params.noise_seed)
            z = torch.randn((n_all,) + tuple(s.shape[1:]), generator=gen, device=dev, dtype=torch.float32)
            if rows is not None:
                z = z[rows]
            s = s + z.to(dt) * params.noise_sigma.to(dev, dt)[:, None, None, None]
        s = s.clamp(0.0, 1.0)
        return s, self.alpha.to(dev, dt).unsqueeze(0).expand(B, -1, -1, -1)

    def homographies(
        self, params: EOTParams, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """``(B, 3, 3)`` maps from sticker pixel centres to image pixel centres (computed in
        float64 on the CPU, where the params live, then moved)."""
        from kornia.geometry.transform import get_perspective_transform

        B = len(params)
        sh, sw = self.sticker.shape[1:]
        # pixel-centre convention (kornia align_corners=True): sticker pixels 0..sw-1
        src = torch.tensor([[0, 0], [sw - 1, 0], [sw - 1, sh - 1], [0, sh - 1]], dtype=torch.float64)
        c_src = torch.tensor([(sw - 1) / 2, (sh - 1) / 2], dtype=torch.float64)
        fh, fw = self.sticker_px
        c_dst = params.top_left.double() + torch.tensor([(fw - 1) / 2, (fh - 1) / 2], dtype=torch.float64)
        k = (fw / sw) * params.scale.double()  # image px per sticker px, per sample
        a = torch.deg2rad(params.angle.double())
        rot = torch.stack([torch.stack([a.cos(), -a.sin()], -1), torch.stack([a.sin(), a.cos()], -1)], -2)
        rel = (src - c_src)[None] * k[:, None, None]  # (B, 4, 2)
        dst = torch.einsum("bij,bkj->bki", rot, rel) + c_dst[:, None, :]
        dst = dst + params.corners.double() * (k * max(sw, sh))[:, None, None]
        Hm = get_perspective_transform(src[None].expand(B, 4, 2).contiguous(), dst)
        return Hm.to(device=device, dtype=dtype)

    def windows(self, H64: torch.Tensor) -> tuple[torch.Tensor, int, int] | None:
        """The image window each warped sticker lies in: ``(top_left (B, 2) [x, y], height, width)``,
        from the float64 CPU maps ``H64`` of :meth:`homographies`.

        Bilinear sampling with zero padding reads nothing beyond one sticker pixel past
        the sticker's edge, so every image pixel outside the map of the rectangle
        ``[-1, sw] x [-1, sh]`` gets exactly zero colour and zero alpha. The window is that
        map's bounding box with a pixel of margin, one size for the whole draw (the
        largest), moved inside the image. ``None`` when it would cover most of the image:
        then warping the whole image costs no more.
        """
        sh, sw = self.sticker.shape[1:]
        H, W = self.image_hw
        corners = torch.tensor([[-1, -1, 1], [sw, -1, 1], [sw, sh, 1], [-1, sh, 1]], dtype=torch.float64)
        q = torch.einsum("bij,kj->bki", H64, corners)
        if not bool((q[..., 2] > 0).all()):  # a corner behind the camera: no finite box
            return None
        xy = q[..., :2] / q[..., 2:]
        lo = torch.floor(xy.amin(1)) - 1
        hi = torch.ceil(xy.amax(1)) + 1
        if not bool(torch.isfinite(lo).all() and torch.isfinite(hi).all()):
            return None
        ww = min(W, int((hi[:, 0] - lo[:, 0]).max()) + 1)
        wh = min(H, int((hi[:, 1] - lo[:, 1]).max()) + 1)
        if wh * ww > WINDOW_MAX_FRAC * H * W:
            return None
        x0 = lo[:, 0].clamp(0, W - ww)
        y0 = lo[:, 1].clamp(0, H - wh)
        return torch.stack([x0, y0], 1).long(), wh, ww

    def forward(
        self, images: torch.Tensor, patch: torch.Tensor, params: EOTParams, *, rows: slice | None = None
    ) -> torch.Tensor:
        """Paste ``patch`` into ``images`` with the transforms ``params``.

        ``rows``: ``images`` are only those rows of the batch ``params`` was drawn for
        (a data-parallel rank's share); they render exactly as in the whole batch.

        The sticker is warped into a window around it, not into the whole image (the
        warp and the compositing, forward and backward, are most of a render's cost);
        outside the window the image is only clamped to [0, 1], as everywhere.
        """
        from kornia.geometry.transform import warp_perspective

        check_images(images)
        if images.shape[-2:] != self.image_hw:
            raise ValueError(f"expected images of size {self.image_hw}, got {tuple(images.shape[-2:])}")
        n = len(params) if rows is None else len(range(*rows.indices(len(params))))
        if images.shape[0] != n:
            raise ValueError(f"expected {n} images for these params, got {images.shape[0]}")
        s, alpha = self.stickers(patch, params, rows=rows, dtype=images.dtype)
        both = torch.cat([s * alpha, alpha], 1)
        dev, dt = images.device, images.dtype
        H64 = self.homographies(params, dtype=torch.float64)  # the whole draw's: its window is the same on every rank
        win = self.windows(H64)
        if rows is not None:
            H64 = H64[rows]
        B, (H, W) = images.shape[0], self.image_hw
        if win is not None:  # move each map so the window's top-left corner is the origin
            tl, wh, ww = win
            tl = tl if rows is None else tl[rows]
            shift = torch.eye(3, dtype=torch.float64).repeat(B, 1, 1)
            shift[:, :2, 2] = -tl.double()
            H64 = shift @ H64
        else:
            wh, ww = H, W
        warped = warp_perspective(
            both, H64.to(dev, dt), (wh, ww), mode="bilinear", padding_mode="zeros", align_corners=True
        )
        color, m = warped[:, :3], warped[:, 3:].clamp(0.0, 1.0)
        if win is None:
            return (images * (1 - m) + color).clamp(0.0, 1.0)
        # flat indices of each window's pixels, built on the device from the (B, 2) corners
        tl = tl.to(dev, non_blocking=True)
        ys = tl[:, 1, None, None] + torch.arange(wh, device=dev)[:, None]
        xs = tl[:, 0, None, None] + torch.arange(ww, device=dev)
        idx = (ys * W + xs).reshape(B, 1, wh * ww).expand(B, 3, wh * ww)
        flat = images.flatten(2)
        crop = flat.gather(2, idx).view(B, 3, wh, ww)
        inside = (crop * (1 - m) + color).clamp(0.0, 1.0)
        out = flat.clamp(0.0, 1.0)  # a new tensor: the scatter may write into it
        return out.scatter_(2, idx, inside.flatten(2)).view_as(images)

    def paste(
        self, images: torch.Tensor, patch: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, EOTParams]:
        """Sample and render in one call; returns the patched images and the params used."""
        params = self.sample(images.shape[0], generator)
        return self(images, patch, params), params


__all__ = [
    "EOTConfig",
    "EOTParams",
    "PLACEMENTS",
    "PRESETS",
    "PatchRenderer",
    "SHAPES",
    "footprint",
    "load_eot",
    "params_rows",
]
