"""Input defences as batched torch modules: ``(B, 3, H, W)`` in ``[0, 1]`` in and out.

Each defence runs on the input's device and dtype. The differentiable ones (blur,
LGS) pass exact gradients. The others (JPEG, median, bit depth) take ``bpda=True``:
Backward Pass Differentiable Approximation (Athalye et al. 2018, "Obfuscated
Gradients Give a False Sense of Security", sec. 4.1) with the identity as the
approximation, i.e. the forward pass is the defence and the backward pass is a
straight-through ``x + (f(x) - x).detach()``. Without ``bpda`` JPEG passes no
gradient at all, bit depth a zero gradient (rounding) and median the gradient of the
selected pixel (a sparse but true derivative).
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..utils import check_images

#: ITU-R 601 luma weights, as torchvision's ``Grayscale`` (the LGS reference uses it).
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


class Defense(nn.Module):
    """Base class and the identity (``none``). Subclasses set ``name`` and implement ``_forward``.

    ``forward(x)`` takes and returns ``(B, 3, H, W)`` float in ``[0, 1]``.
    """

    name = "none"
    #: the forward pass has no useful gradient; ``bpda`` makes it straight-through
    needs_bpda = False

    def __init__(self, *, bpda: bool = False):
        super().__init__()
        if bpda and not self.needs_bpda:
            raise ConfigError(f"defence {self.name!r} is differentiable; bpda applies to jpeg, median and bitdepth")
        self.bpda = bool(bpda)

    def params(self) -> dict[str, Any]:
        """The hyperparameters, in spec order."""
        return {}

    @property
    def spec(self) -> str:
        """The short canonical spec (parameters that differ from the defaults, then ``bpda``),
        which :func:`get_defense` parses back to an equal defence: ``lgs``, ``jpeg:quality=50,bpda``."""
        defaults = {k: p.default for k, p in inspect.signature(type(self).__init__).parameters.items()}
        args = [f"{k}={_fmt(v)}" for k, v in self.params().items() if defaults.get(k) != v]
        args += ["bpda"] if self.bpda else []
        return self.name + (":" + ",".join(args) if args else "")

    @property
    def plain_spec(self) -> str:
        """:attr:`spec` without ``bpda``: how to name the defence to a judge (``eval transfer --defense``)."""
        defaults = {k: p.default for k, p in inspect.signature(type(self).__init__).parameters.items()}
        args = [f"{k}={_fmt(v)}" for k, v in self.params().items() if defaults.get(k) != v]
        return self.name + (":" + ",".join(args) if args else "")

    @property
    def forward_spec(self) -> str:
        """Every parameter spelled out, without ``bpda``: what the forward pass computes (BPDA
        changes the gradient only), so two defences with the same ``forward_spec`` give the same output."""
        args = [f"{k}={_fmt(v)}" for k, v in self.params().items()]
        return self.name + (":" + ",".join(args) if args else "")

    @property
    def is_identity(self) -> bool:
        """``none``: the input passes unchanged."""
        return type(self) is Defense

    @property
    def full_spec(self) -> str:
        """Every parameter spelled out (for records)."""
        args = [f"{k}={_fmt(v)}" for k, v in self.params().items()] + (["bpda"] if self.bpda else [])
        return self.name + (":" + ",".join(args) if args else "")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "spec": self.full_spec, "bpda": self.bpda, **self.params()}

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x)
        y = self._forward(x)
        if self.bpda:
            return x + (y - x).detach()
        return y

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in {**self.params(), "bpda": self.bpda}.items())


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


class GaussianBlur(Defense):
    """Gaussian blur of ``sigma`` pixels, as ``cv2.GaussianBlur(img, (0, 0), sigma)`` on a
    uint8 image: kernel size ``round(6 sigma + 1) | 1``, reflect-101 border. Differentiable."""

    name = "blur"

    def __init__(self, *, sigma: float = 1.0, bpda: bool = False):
        super().__init__(bpda=bpda)
        if not sigma > 0:
            raise ConfigError(f"blur sigma must be > 0, got {sigma}")
        self.sigma = float(sigma)
        k = int(round(self.sigma * 6 + 1)) | 1
        r = torch.arange(k, dtype=torch.float64) - (k - 1) / 2
        g = torch.exp(-(r**2) / (2 * self.sigma**2))
        self.register_buffer("kernel", (g / g.sum()).float(), persistent=False)

    def params(self) -> dict[str, Any]:
        return {"sigma": self.sigma}

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel.to(x.dtype)
        n = k.numel()
        r = n // 2
        b, c, h, w = x.shape
        y = x.reshape(b * c, 1, h, w)
        if r >= h or r >= w:  # reflect padding needs r < size; fall back to replicate on tiny inputs
            y = F.pad(y, (r, r, r, r), mode="replicate")
        else:
            y = F.pad(y, (r, r, r, r), mode="reflect")
        y = F.conv2d(y, k.view(1, 1, 1, n))
        y = F.conv2d(y, k.view(1, 1, n, 1))
        return y.reshape(b, c, h, w)


class MedianFilter(Defense):
    """Median of each ``k x k`` neighbourhood per channel (feature squeezing's spatial smoothing,
    Xu et al. 2018), replicate border as ``cv2.medianBlur``. ``bpda`` for a straight-through gradient."""

    name = "median"
    needs_bpda = True

    def __init__(self, *, k: int = 3, bpda: bool = False):
        super().__init__(bpda=bpda)
        if k < 1 or k % 2 == 0:
            raise ConfigError(f"median k must be an odd integer >= 1, got {k}")
        self.k = int(k)

    def params(self) -> dict[str, Any]:
        return {"k": self.k}

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.k == 1:
            return x
        r = self.k // 2
        b, c, h, w = x.shape
        y = F.pad(x.reshape(b * c, 1, h, w), (r, r, r, r), mode="replicate")
        patches = F.unfold(y, self.k)  # (b*c, k*k, h*w)
        return patches.median(dim=1).values.reshape(b, c, h, w)


class BitDepth(Defense):
    """Colour bit-depth reduction to ``bits`` per channel (feature squeezing, Xu et al. 2018):
    ``round(x (2^bits - 1)) / (2^bits - 1)``. ``bpda`` for a straight-through gradient."""

    name = "bitdepth"
    needs_bpda = True

    def __init__(self, *, bits: int = 5, bpda: bool = False):
        super().__init__(bpda=bpda)
        if not 1 <= bits <= 8:
            raise ConfigError(f"bitdepth bits must be in 1..8, got {bits}")
        self.bits = int(bits)

    def params(self) -> dict[str, Any]:
        return {"bits": self.bits}

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = 2**self.bits - 1
        return torch.round(x * levels) / levels


class Jpeg(Defense):
    """JPEG round trip at ``quality`` with OpenCV (Dziugaite et al. 2016), the same codec and
    settings as the capture loop's ``jpeg``: the image is quantised to uint8 RGB, encoded and
    decoded on the CPU, and returned on the input's device. No gradient unless ``bpda``."""

    name = "jpeg"
    needs_bpda = True

    def __init__(self, *, quality: int = 75, bpda: bool = False):
        super().__init__(bpda=bpda)
        if not 1 <= quality <= 100:
            raise ConfigError(f"jpeg quality must be in 1..100, got {quality}")
        self.quality = int(quality)

    def params(self) -> dict[str, Any]:
        return {"quality": self.quality}

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        import cv2

        u8 = (x.detach() * 255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        out = np.empty_like(u8)
        for i, img in enumerate(u8):
            ok, buf = cv2.imencode(
                ".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, self.quality]
            )
            if not ok:
                raise ConfigError("JPEG encoding failed")
            out[i] = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        return torch.from_numpy(out).to(x.device).permute(0, 3, 1, 2).to(x.dtype) / 255.0


class LocalGradientsSmoothing(Defense):
    """Local Gradients Smoothing (Naseer, Khan and Porikli, WACV 2019), as the reference code
    (github.com/fabiobrau/local_gradients_smoothing).

    1. ``g``: first-order gradient magnitude of the grayscale image (ITU-R 601 luma, as the
       reference): ``sqrt((I[i,j] - I[i,j+1])^2 + (I[i,j] - I[i+1,j])^2)``, zero difference past
       the last row/column; normalised per image to ``[0, 1]`` by its min and max (+1e-7).
       Grayscale, not per channel, is the documented choice: one mask for all channels.
    2. Windows of ``window`` pixels at stride ``window - overlap`` (only whole windows, as
       ``unfold``): a window whose mean ``g`` exceeds ``threshold`` is selected; pixels covered
       by a selected window keep ``g``, all others get 0.
    3. Output ``x * (1 - clamp(smoothing * g, 0, 1))`` (eq. 4 of the paper, lambda = ``smoothing``).

    Window scaling: ``window`` and ``overlap`` are given in pixels of a ``ref``-pixel image
    (default 224) and scaled by ``min(H, W) / ref``, rounded, with ``window >= 3`` and
    ``overlap <= window - 1``: a 224 px input uses the paper's 15/5, a 32 px CIFAR image
    ``window 3, overlap 1`` (stride 2). ``ref=0`` uses ``window`` and ``overlap`` as given at
    any size. Differentiable (the mask's selection is piecewise constant).
    """

    name = "lgs"

    def __init__(
        self,
        *,
        window: int = 15,
        overlap: int = 5,
        threshold: float = 0.1,
        smoothing: float = 2.3,
        ref: int = 224,
        bpda: bool = False,
    ):
        super().__init__(bpda=bpda)
        if window < 1 or not 0 <= overlap < window:
            raise ConfigError(
                f"lgs needs window >= 1 and 0 <= overlap < window, got window={window}, overlap={overlap}"
            )
        if ref < 0:
            raise ConfigError(f"lgs ref must be >= 0 (0: no scaling), got {ref}")
        self.window, self.overlap, self.ref = int(window), int(overlap), int(ref)
        self.threshold, self.smoothing = float(threshold), float(smoothing)

    def params(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "overlap": self.overlap,
            "threshold": self.threshold,
            "smoothing": self.smoothing,
            "ref": self.ref,
        }

    def window_for(self, h: int, w: int) -> tuple[int, int]:
        """The ``(window, overlap)`` used on an ``h x w`` image."""
        if self.ref == 0:
            win, ov = self.window, self.overlap
        else:
            s = min(h, w) / self.ref
            win = max(3, int(round(self.window * s)))
            ov = min(int(round(self.overlap * s)), win - 1)
        return min(win, h, w), min(ov, min(win, h, w) - 1)

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        """The smoothing mask ``clamp(lambda * g_selected, 0, 1)``, ``(B, 1, H, W)``."""
        check_images(x)
        wts = torch.tensor(GRAY_WEIGHTS, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        gray = (x * wts).sum(1, keepdim=True)
        dx = F.pad(gray[..., :, :-1] - gray[..., :, 1:], (0, 1, 0, 0))
        dy = F.pad(gray[..., :-1, :] - gray[..., 1:, :], (0, 0, 0, 1))
        sq = dx**2 + dy**2
        # sqrt with a finite derivative at 0 (flat regions): no NaN gradients
        g = torch.where(sq > 0, sq.clamp_min(1e-20).sqrt(), torch.zeros_like(sq))
        gmin = g.amin(dim=(2, 3), keepdim=True)
        gmax = g.amax(dim=(2, 3), keepdim=True)
        g = (g - gmin) / (gmax - gmin + 1e-7)
        h, w = g.shape[-2:]
        win, ov = self.window_for(h, w)
        stride = win - ov
        cols = F.unfold(g.detach(), win, stride=stride)  # (B, win*win, L)
        sel = (cols.mean(dim=1, keepdim=True) > self.threshold).to(g.dtype).expand(-1, cols.shape[1], -1)
        cover = F.fold(sel, (h, w), kernel_size=win, stride=stride)
        keep = (cover >= 1).to(g.dtype)
        return torch.clamp(self.smoothing * g * keep, 0, 1)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (1 - self.mask(x))


#: name -> class, in the order parameters are accepted positionally
DEFENSES: dict[str, type[Defense]] = {
    "none": Defense,
    "blur": GaussianBlur,
    "median": MedianFilter,
    "jpeg": Jpeg,
    "bitdepth": BitDepth,
    "lgs": LocalGradientsSmoothing,
}

_POSITIONAL = {
    "none": (),
    "blur": ("sigma",),
    "median": ("k",),
    "jpeg": ("quality",),
    "bitdepth": ("bits",),
    "lgs": ("window", "overlap", "threshold", "smoothing", "ref"),
}
_TYPES = {
    "sigma": float,
    "k": int,
    "quality": int,
    "bits": int,
    "window": int,
    "overlap": int,
    "threshold": float,
    "smoothing": float,
    "ref": int,
}


def list_defenses() -> list[str]:
    """Names the registry knows (``get_defense`` takes ``NAME[:ARGS]``)."""
    return list(DEFENSES)


def register_defense(
    name: str, cls: type[Defense], positional: tuple[str, ...] = (), types: dict[str, type] | None = None
) -> None:
    """Add a defence class: ``get_defense("NAME:a,b,key=v")`` calls ``cls(**kwargs)``."""
    DEFENSES[name.lower()] = cls
    _POSITIONAL[name.lower()] = tuple(positional)
    _TYPES.update(types or {})


def _to_int(text: str) -> int:
    v = float(text)
    if v != int(v):
        raise ValueError(f"{text!r} is not an integer")
    return int(v)


def get_defense(spec: "str | Defense | None") -> Defense:
    """Parse a defence spec: ``NAME[:ARGS]`` with ARGS comma-separated, positional in the
    documented order or ``key=value``, plus the flag ``bpda``.

    ``none``, ``blur``, ``blur:1.5``, ``median:5``, ``jpeg:50``, ``jpeg:50,bpda``, ``bitdepth:4``,
    ``lgs``, ``lgs:window=15,overlap=5,threshold=0.1,smoothing=2.3``, ``lgs:15,5,0.1,2.3,ref=0``.
    The capture loop's specs (``none``, ``blur[:SIGMA]``, ``jpeg[:QUALITY]``) mean the same here.

    Raises:
        ConfigError: an unknown name, key or a bad value (one line saying which).
    """
    if isinstance(spec, Defense):
        return spec
    text = (spec or "none").strip()
    name, _, argtext = text.partition(":")
    key = name.strip().lower()
    if key not in DEFENSES:
        raise ConfigError(
            f"unknown defence {name!r}; choose one of {', '.join(DEFENSES)} "
            "(NAME[:ARGS], e.g. blur:1.5, median:3, jpeg:50,bpda, bitdepth:5, lgs:threshold=0.1)"
        )
    kwargs: dict[str, Any] = {}
    pos = list(_POSITIONAL[key])
    for i, item in enumerate(a.strip() for a in argtext.split(",") if a.strip()):
        if item.lower() == "bpda":
            kwargs["bpda"] = True
            continue
        k, eq, v = item.partition("=")
        if not eq:
            if i >= len(pos):
                raise ConfigError(
                    f"defence {key!r} takes at most {len(pos)} positional value(s) "
                    f"({', '.join(pos) or 'none'}); got {argtext!r}"
                )
            k, v = pos[i], item
        k = k.strip().lower()
        if k == "bpda":
            kwargs["bpda"] = v.strip().lower() in ("1", "true", "yes", "on")
            continue
        if k not in _POSITIONAL[key]:
            raise ConfigError(
                f"defence {key!r} has no parameter {k!r}; it takes {', '.join(pos) or 'none'}"
                f"{' and bpda' if DEFENSES[key].needs_bpda else ''}"
            )
        try:
            typ = _TYPES.get(k, float)
            kwargs[k] = _to_int(v) if typ is int else typ(v)
        except ValueError as exc:
            raise ConfigError(f"bad value for {key} {k}: {v!r} ({exc})") from exc
    return DEFENSES[key](**kwargs)


def adaptive(spec: "str | Defense | None") -> Defense:
    """The defence as an adaptive attacker differentiates it (Athalye et al. 2018): the same forward
    pass, with the BPDA straight-through gradient where the defence has no useful one
    (``needs_bpda``: jpeg, median, bitdepth); a differentiable defence is returned as it is."""
    d = get_defense(spec)
    if not d.needs_bpda or d.bpda:
        return d
    return type(d)(**d.params(), bpda=True)


def lgs_window_note(h: int, w: int, d: Defense) -> str:
    """A human line on the effective LGS window at ``h x w`` (for reports)."""
    if isinstance(d, LocalGradientsSmoothing):
        win, ov = d.window_for(h, w)
        return f"lgs window {win} px, overlap {ov} px (stride {win - ov}) at {h}x{w}"
    return ""


__all__ = [
    "Defense",
    "GaussianBlur",
    "MedianFilter",
    "BitDepth",
    "Jpeg",
    "LocalGradientsSmoothing",
    "DEFENSES",
    "GRAY_WEIGHTS",
    "adaptive",
    "get_defense",
    "list_defenses",
    "register_defense",
    "lgs_window_note",
]
