"""Print-and-camera simulator: a patch turned into a "recorded video" with ground truth.

How a frame is made (everything random is drawn from one seed, see :class:`SimConfig`):

1. **Print.** The cut-out of copy 0 of the layout (patch + marker frame, exactly
   as ``patchlab print patch`` draws it, through :func:`patchlab.sheet.render_sheet`)
   goes through a printer model: the colour transform of ``--calib color.json``
   when given (printed sRGB -> what a camera records), else :class:`PrinterModel`
   (gamut compression, ink black and paper white, dot spread blur).
2. **Scene.** A scene image is fitted into the middle of the frame (a square
   CIFAR photograph fills the centred square that ``capture run --crop center``
   classifies, so that crop is the digital setting: the object photograph with
   the printed patch beside its object), the margins a blurred copy of it;
   ``--scenes`` is an ImageFolder tree (class = folder name) or a plain folder
   (class unknown). A video shows ``ceil(frames / scene_frames)`` scenes in turn,
   never of the patch's own target class (as digital tSuc leaves those out).
3. **Camera.** The cut-out is a card in 3-D in front of the scene, beside the
   object, seen by a pinhole camera (``--camera camera.json`` or a default ~60
   degree lens). Its distance, tilts, roll and position follow smooth seeded
   sweeps, so a video covers near to far (apparent size from ~45 % to ~17 % of
   the frame height), +-45 degree tilts and +-35 degree roll. Without lens
   distortion the card is warped by its exact homography (supersampled 2x, from
   a mip level that never magnifies); with distortion by
   :func:`patchlab.synth.render_plane_view`.
4. **Light and sensor.** Motion blur along the card's image velocity, a smooth
   lighting change (exposure 0.55-1.25 and a colour cast, in linear light),
   defocus, vignetting and sensor noise (:func:`patchlab.synth.photograph`),
   then the video codec's compression (``.mp4``: MPEG-4 part 2; ``.avi``: MJPEG).

Ground truth, one JSON line per frame in ``<video stem>.truth.jsonl`` beside the
video: ``index``, ``timestamp``, ``object_class``, ``scene``, ``has_patch`` and the
card's pose -- ``quad_px``, ``size_px`` and ``angle_deg`` exactly as capture
computes them (:func:`patchlab.capture.pose.quad_metrics`), ``distance_mm``,
``tilt_x_deg``, ``tilt_y_deg``, ``roll_deg``, ``view_angle_deg``, the apparent
marker sides, whether all markers are inside the frame (``markers_in_frame``) and
whether the patch is (``patch_in_view``) -- and the conditions (``exposure``,
``motion_blur_px``, ``noise_sigma``, ``defocus_sigma``, ``glare``). ``<stem>.sim.json`` holds the
configuration, the sampled sweep parameters, the scenes and library versions;
``<stem>.camera.json`` the simulated camera in ``camera.json`` form (``capture run
--camera``: distances and angles).

``capture run`` reads ``<stem>.truth.jsonl`` when it sits beside the video, so
its log carries the object class of each frame.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from patchlab.captures import camera_path_for, read_truth, sim_path_for, truth_path_for
from patchlab.data import scan_folder
from patchlab.errors import ConfigError
from patchlab.layout import Layout, MarkerSpec, PatchSpec
from patchlab.sheet import render_sheet
from patchlab.synth import Pose, look_at, photograph, render_plane_view
from patchlab.utils import atomic_write_json, atomic_write_text, versions

from .pose import euler_from_rotation, quad_metrics

#: Libraries whose versions a simulated video records.
SIM_VERSION_MODULES = ("cv2", "numpy", "torch")
#: Video codecs by file extension.
CODECS = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}
#: Apparent patch side at the near and far end of the distance sweep, as a
#: fraction of the frame height.
NEAR_SIDE_FRAC, FAR_SIDE_FRAC = 0.45, 0.17
#: Default focal length of the simulated camera, in units of the frame width (~62 degree lens).
DEFAULT_FOCAL_FRAC = 0.9
#: Supersampling of the card rendering (rays per pixel side).
SUPERSAMPLE = 2
#: Generator stream ids (with the seed) of the scene draws and the per-frame sensor noise.
_SCENE_STREAM, _NOISE_STREAM = 1, 2


# --------------------------------------------------------------------------------------
# printer
# --------------------------------------------------------------------------------------


def _decode(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return np.where(x > 0.04045, ((x + 0.055) / 1.055) ** 2.4, x / 12.92)


def _encode(x: np.ndarray) -> np.ndarray:
    x = np.clip(np.asarray(x, np.float64), 0.0, 1.0)
    return np.where(x > 0.0031308, 1.055 * x ** (1 / 2.4) - 0.055, x * 12.92)


#: Rec. 709 / sRGB luminance weights of linear RGB.
_LUMA = np.array([0.2126, 0.7152, 0.0722])


@dataclass(frozen=True)
class PrinterModel:
    """A plain office-printer look, used when no measured ``color.json`` is given.

    In linear light: chroma is scaled by ``saturation`` about the luminance (the
    printer's smaller gamut), then the range is mapped from ink black to paper
    white; dots spread by a Gaussian of ``blur_mm``. Colours are sRGB 0-255.
    """

    paper_rgb: tuple[int, int, int] = (243, 240, 231)
    ink_rgb: tuple[int, int, int] = (32, 30, 34)
    saturation: float = 0.82
    blur_mm: float = 0.08

    def apply(self, rgb: np.ndarray, px_per_mm: float, calib: Any = None) -> np.ndarray:
        """Print an ``(H, W, 3)`` uint8 sRGB image; ``calib`` (a
        :class:`patchlab.calib.ColorTransform`) replaces the colour part."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
        if calib is not None:
            import torch

            with torch.no_grad():
                x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0
                out = calib(x)[0].permute(1, 2, 0).numpy()
            srgb = out
        else:
            lin = _decode(rgb / 255.0)
            y = lin @ _LUMA
            lin = y[..., None] + self.saturation * (lin - y[..., None])
            black, white = _decode(np.array(self.ink_rgb) / 255.0), _decode(np.array(self.paper_rgb) / 255.0)
            srgb = _encode(black + (white - black) * np.clip(lin, 0.0, 1.0))
        img = np.clip(np.round(srgb * 255.0), 0, 255).astype(np.uint8)
        sigma = self.blur_mm * px_per_mm
        if sigma > 0.2:
            img = cv2.GaussianBlur(img, (0, 0), sigma)
        return img


# --------------------------------------------------------------------------------------
# configuration and sweeps
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimConfig:
    """What the simulator does; every field goes into ``<stem>.sim.json``.

    ``control``: ``None`` (film the patch), ``"blank"`` (the same card with a blank
    paper patch: markers and pose kept, no adversarial pixels) or ``"none"`` (no
    card at all). A control video with the same seed has the same scenes, sweep,
    light and noise, frame for frame.
    """

    frames: int = 300
    fps: float = 30.0
    size: tuple[int, int] = (640, 480)
    seed: int = 0
    scene_frames: int = 20
    tilt_max_deg: float = 45.0
    roll_max_deg: float = 35.0
    near_side_frac: float = NEAR_SIDE_FRAC
    far_side_frac: float = FAR_SIDE_FRAC
    exposure_range: tuple[float, float] = (0.55, 1.25)
    noise_sigma: float = 2.5
    defocus_sigma: float = 0.5
    vignetting: float = 0.15
    exposure_time: float = 0.5  # fraction of the frame interval the shutter is open (motion blur)
    control: str | None = None
    printer: PrinterModel = field(default_factory=PrinterModel)
    speed: float = 1.0  # how fast the sweeps run (2 = twice the motion)
    wander_frac: float = 0.07  # how far the card's centre wanders, as a fraction of the frame height
    defocus_max: float | None = None  # defocus swings between defocus_sigma and this (px)
    shake_px: float = 0.0  # hand shake: random jitter per frame (px at the card), blurred along its direction
    rolling_shutter: float = 0.0  # sensor readout time as a fraction of the frame interval (row skew)
    glare: float = 0.0  # peak strength (0-1) of a specular highlight moving over the paper
    ae_swing: float = 0.0  # auto-exposure hunting: relative size of sudden exposure jumps and their overshoot
    clutter: int = 0  # distractor shapes drawn on each scene (bars, checkers, marker-like squares)

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ConfigError(f"--frames must be >= 1, got {self.frames}")
        if self.fps <= 0:
            raise ConfigError(f"--fps must be > 0, got {self.fps}")
        if self.size[0] < 64 or self.size[1] < 64:
            raise ConfigError(f"frame size must be at least 64x64, got {self.size[0]}x{self.size[1]}")
        if self.scene_frames < 1:
            raise ConfigError(f"--scene-frames must be >= 1, got {self.scene_frames}")
        if self.control not in (None, "blank", "none"):
            raise ConfigError(f"--control must be 'blank' or 'none', got {self.control!r}")
        if not 0 < self.far_side_frac <= self.near_side_frac:
            raise ConfigError("far_side_frac must be in (0, near_side_frac]")
        if self.speed <= 0:
            raise ConfigError(f"--speed must be > 0, got {self.speed}")
        if min(self.shake_px, self.rolling_shutter, self.glare, self.ae_swing, self.clutter, self.wander_frac) < 0:
            raise ConfigError("shake, rolling shutter, glare, auto-exposure swing, clutter and wander must be >= 0")
        if self.defocus_max is not None and self.defocus_max < self.defocus_sigma:
            raise ConfigError("defocus_max must be >= defocus_sigma")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(self.size)
        return d


@dataclass(frozen=True)
class Sweep:
    """Sampled parameters of the smooth sweeps (logged, replayable).

    Each quantity is a sine of its own period (seconds) and phase, so the motion
    has the same speed in a short clip and a long one, and a clip of ``n`` frames
    is the first ``n`` frames of any longer one with the same seed.
    """

    periods: dict[str, float]
    phases: dict[str, float]
    anchor: tuple[float, float]  # where the card's centre hovers, as fractions of (W, H)
    tint: tuple[float, float, float]

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "Sweep":
        keys = ("distance", "tilt_x", "tilt_y", "roll", "u", "v", "exposure", "tint")
        periods = {k: float(rng.uniform(4.0, 12.0)) for k in keys}
        periods["distance"] = float(rng.uniform(5.5, 8.0))
        phases = {k: float(rng.uniform(0, 2 * math.pi)) for k in keys}
        side = 1.0 if rng.random() < 0.5 else -1.0
        tint = tuple(float(v) for v in rng.uniform(-0.08, 0.08, 3))
        # drawn after the original ones, so older videos keep their sweeps
        for k in ("defocus", "glare", "glare_u", "glare_v"):
            periods[k] = float(rng.uniform(3.0, 9.0))
            phases[k] = float(rng.uniform(0, 2 * math.pi))
        return cls(periods=periods, phases=phases, anchor=(0.5 + side * 0.12, 0.56), tint=tint)  # type: ignore[arg-type]

    def wave(self, key: str, t: float) -> float:
        """``sin`` of sweep ``key`` at time ``t`` seconds."""
        return math.sin(2 * math.pi * t / self.periods[key] + self.phases[key])

    def to_dict(self) -> dict[str, Any]:
        return {"periods_s": self.periods, "phases": self.phases, "anchor": list(self.anchor), "tint": list(self.tint)}


def default_camera(size: tuple[int, int]) -> np.ndarray:
    """The simulator's pinhole camera matrix for a frame ``size`` (no distortion)."""
    w, h = size
    f = DEFAULT_FOCAL_FRAC * w
    return np.array([[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1]], np.float64)


def _rotation(tx: float, ty: float, roll: float) -> np.ndarray:
    return cv2.Rodrigues(look_at((0.0, 0.0), 1.0, tilt_x_deg=tx, tilt_y_deg=ty, roll_deg=roll).rvec)[0]


# --------------------------------------------------------------------------------------
# the card
# --------------------------------------------------------------------------------------


def cutout_layout(layout: Layout, copy: int = 0) -> tuple[Layout, tuple[float, float]]:
    """The cut-out of one patch copy as a layout of its own (origin at the cut corner).

    Returns the sub-layout and the cut corner's page position (mm), so that a
    point of the cut-out at ``(x, y)`` is at ``(x + ox, y + oy)`` on the page.
    """
    patch = next((p for p in layout.patches if p.copy == copy), None)
    if patch is None:
        raise ConfigError(f"the layout has no patch copy {copy}")
    markers = layout.markers_of(copy)
    if len(markers) != 4:
        raise ConfigError("the layout's patch has no marker frame: print it with --markers")
    cut = next((c["cut_rect_mm"] for c in layout.meta.get("copies", []) if c.get("copy") == copy), None)
    if cut is None:  # older layouts: the frame's bounding box
        pts = np.array([pt for m in markers for pt in m.corners_mm])
        quiet = float(layout.meta.get("frame", {}).get("quiet_mm", 0.0) or 0.0)
        x0, y0 = pts.min(0) - quiet
        x1, y1 = pts.max(0) + quiet
        cut = [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]
    ox, oy, w, h = (float(v) for v in cut)
    sub = Layout(
        kind="patch",
        page_mm=(w, h),
        aruco_dict=layout.aruco_dict,
        markers=[MarkerSpec(id=m.id, corners_mm=[(x - ox, y - oy) for x, y in m.corners_mm], copy=0) for m in markers],
        patches=[
            PatchSpec(
                x_mm=patch.x_mm - ox,
                y_mm=patch.y_mm - oy,
                width_mm=patch.width_mm,
                height_mm=patch.height_mm,
                pixels=patch.pixels,
                copy=0,
                shape=patch.shape,
            )
        ],
    )
    return sub, (ox, oy)


@dataclass(frozen=True)
class Card:
    """The printed cut-out, ready to film: an RGBA mip pyramid and its geometry."""

    levels: list[np.ndarray]  # RGBA uint8, level l is 2**l times smaller
    px_per_mm: float  # of level 0
    origin_mm: tuple[float, float]  # page position of the cut corner
    patch_corners_mm: np.ndarray  # (4, 2) page mm
    marker_corners_mm: dict[int, np.ndarray]
    width_mm: float

    def level_for(self, canvas_px_per_mm: float) -> int:
        """The smallest mip level that still has at least ``canvas_px_per_mm``."""
        lvl = int(math.floor(math.log2(max(self.px_per_mm / max(canvas_px_per_mm, 1e-9), 1.0))))
        return min(lvl, len(self.levels) - 1)

    def pixel_to_mm(self, level: int) -> np.ndarray:
        """3x3 matrix: level pixel (pixel-centre coordinates) -> page mm."""
        s = (2**level) / self.px_per_mm
        ox, oy = self.origin_mm
        return np.array([[s, 0, ox + 0.5 * s], [0, s, oy + 0.5 * s], [0, 0, 1]], np.float64)


def make_card(
    layout: Layout,
    patch: np.ndarray | None,
    *,
    px_per_mm: float,
    printer: PrinterModel,
    calib: Any = None,
    copy: int = 0,
) -> Card:
    """Print copy ``copy`` of ``layout`` with ``patch`` (``(h, w, 3)`` uint8 RGB, or
    None for a blank paper patch) and build its mip pyramid."""
    sub, origin = cutout_layout(layout, copy)
    patches = None if patch is None else {0: patch}
    rgb = render_sheet(sub, px_per_mm, patches=patches)
    rgb = printer.apply(rgb, px_per_mm, calib)
    n_levels = 6
    m = 2 ** (n_levels - 1)
    H, W = rgb.shape[:2]
    Hp, Wp = -(-H // m) * m, -(-W // m) * m
    rgba = np.zeros((Hp, Wp, 4), np.uint8)
    rgba[:H, :W, :3] = rgb
    rgba[:H, :W, 3] = 255
    # padding is transparent black, so reduced levels hold premultiplied colour at the edge
    levels = [rgba]
    for _ in range(n_levels - 1):
        prev = levels[-1]
        levels.append(cv2.resize(prev, (prev.shape[1] // 2, prev.shape[0] // 2), interpolation=cv2.INTER_AREA))
    p = next(q for q in layout.patches if q.copy == copy)
    return Card(
        levels=levels,
        px_per_mm=px_per_mm,
        origin_mm=origin,
        patch_corners_mm=np.asarray(p.corners_mm, np.float64),
        marker_corners_mm={mk.id: np.asarray(mk.corners_mm, np.float64) for mk in layout.markers_of(copy)},
        width_mm=p.width_mm,
    )


def _render_card(
    card: Card, K: np.ndarray, dist: np.ndarray | None, R: np.ndarray, t: np.ndarray, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """The card seen by the camera: ``(premultiplied RGB float32 (H, W, 3), alpha (H, W))``."""
    w, h = size
    Hpage = K @ np.column_stack([R[:, 0], R[:, 1], t])  # page mm -> image px (pixel centres)
    # canvas pixels per mm near the card centre, to pick the mip level
    c = card.patch_corners_mm.mean(0)
    J = []
    for dx, dy in ((1.0, 0.0), (0.0, 1.0)):
        a, b = Hpage @ [c[0], c[1], 1.0], Hpage @ [c[0] + dx, c[1] + dy, 1.0]
        J.append(np.linalg.norm(b[:2] / b[2] - a[:2] / a[2]))
    level = card.level_for(SUPERSAMPLE * max(J) * 1.3)
    src = card.levels[level]
    A = card.pixel_to_mm(level)
    s = SUPERSAMPLE
    if dist is None or not np.any(np.asarray(dist) != 0):
        S = np.array([[s, 0, (s - 1) / 2], [0, s, (s - 1) / 2], [0, 0, 1]], np.float64)
        M = S @ Hpage @ A
        big = cv2.warpPerspective(
            src, M, (w * s, h * s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0, 0)
        )
        img = cv2.resize(big, (w, h), interpolation=cv2.INTER_AREA)
    else:
        ox, oy = card.origin_mm
        t2 = t + R @ np.array([ox, oy, 0.0])
        img = render_plane_view(
            src,
            card.px_per_mm / 2**level,
            K,
            dist,
            Pose(cv2.Rodrigues(R)[0].ravel(), t2),
            (w, h),
            supersample=s,
            background=0,
        )
    # transparent texels are (0, 0, 0, 0), so every average taken (mip reduction,
    # bilinear warp, area resize) is already alpha-premultiplied
    a = img[..., 3].astype(np.float32) / 255.0
    return img[..., :3].astype(np.float32), a


def _motion_kernel(vx: float, vy: float) -> np.ndarray | None:
    L = math.hypot(vx, vy)
    if L < 0.75:
        return None
    n = int(math.ceil(L)) | 1
    k = np.zeros((n, n), np.float32)
    c = n // 2
    steps = max(2 * n, 8)
    for i in range(steps):
        f = i / (steps - 1) - 0.5
        x, y = c + f * vx, c + f * vy
        x0, y0 = int(np.clip(round(x), 0, n - 1)), int(np.clip(round(y), 0, n - 1))
        k[y0, x0] += 1.0
    return k / k.sum()


def _light_lut(gain: np.ndarray) -> np.ndarray:
    """Per-channel 8-bit LUTs applying a linear-light gain (BGR order): ``(256, 1, 3)``."""
    v = np.arange(256) / 255.0
    lin = _decode(v)
    out = np.stack([_encode(lin * g) for g in gain], -1)
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8).reshape(256, 1, 3)


def _cover(img_bgr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Scale to cover ``size`` (w, h) and centre-crop."""
    w, h = size
    ih, iw = img_bgr.shape[:2]
    s = max(w / iw, h / ih)
    nw, nh = max(w, int(math.ceil(iw * s))), max(h, int(math.ceil(ih * s)))
    big = cv2.resize(img_bgr, (nw, nh), interpolation=cv2.INTER_CUBIC if s > 1 else cv2.INTER_AREA)
    x0, y0 = (nw - w) // 2, (nh - h) // 2
    return np.ascontiguousarray(big[y0 : y0 + h, x0 : x0 + w])


def scene_frame(img_bgr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A scene image as the camera's background: the whole image fitted into the
    centre of the frame (its largest centred square for a square image, which is
    what ``capture run --crop center`` classifies), the margins filled with a blurred,
    scaled-up copy of it so the frame has no hard borders."""
    w, h = size
    ih, iw = img_bgr.shape[:2]
    s = min(w / iw, h / ih)
    fw, fh = int(round(iw * s)), int(round(ih * s))
    back = cv2.GaussianBlur(_cover(img_bgr, size), (0, 0), max(w, h) / 40)
    fit = cv2.resize(img_bgr, (fw, fh), interpolation=cv2.INTER_CUBIC if s > 1 else cv2.INTER_AREA)
    x0, y0 = (w - fw) // 2, (h - fh) // 2
    back[y0 : y0 + fh, x0 : x0 + fw] = fit
    return back


# --------------------------------------------------------------------------------------
# the video
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimResult:
    """What :func:`simulate_capture` wrote."""

    video: Path
    truth: Path
    sim: Path
    camera: Path
    frames: int
    markers_in_frame: int  # frames whose four markers are all inside the image (and >= 8 px)
    scenes: list[dict[str, Any]]
    seconds: float
    patch_in_view: int = 0  # frames whose patch corners are all inside the image

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(video=str(self.video), truth=str(self.truth), sim=str(self.sim), camera=str(self.camera))
        return d


def _pick_scenes(root: str | Path, n: int, seed: int, exclude: str | None) -> list[tuple[Path, str | None]]:
    """Scene ``k`` is drawn by its own generator ``(seed, k)``: a shorter clip shows the
    first scenes of a longer one."""
    items, classes = scan_folder(root)
    pool = [(p, classes[c] if c >= 0 else None) for p, c in items]
    if exclude:
        kept = [it for it in pool if it[1] is None or it[1].lower() != exclude.lower()]
        pool = kept or pool
    return [pool[int(np.random.default_rng([seed, _SCENE_STREAM, k]).integers(len(pool)))] for k in range(n)]


#: Generator stream ids of the clutter, the hand shake and the auto-exposure jumps.
_CLUTTER_STREAM, _SHAKE_STREAM, _AE_STREAM = 3, 4, 5


def add_clutter(img_bgr: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``n`` distractors on a scene: bars, checkerboards and marker-like squares
    (a black border around random cells) -- what a real background offers a detector."""
    out = img_bgr.copy()
    h, w = out.shape[:2]
    for _ in range(n):
        kind = int(rng.integers(3))
        s = int(rng.uniform(0.04, 0.2) * h)
        x, y = int(rng.integers(0, max(1, w - s))), int(rng.integers(0, max(1, h - s)))
        if kind == 0:
            c = tuple(int(v) for v in rng.integers(0, 256, 3))
            cv2.line(
                out,
                (x, y),
                (x + int(rng.integers(-s, s)) + s, y + int(rng.integers(-s, s))),
                c,
                int(rng.integers(1, 6)),
            )
        else:
            cells = 6 if kind == 2 else int(rng.integers(3, 8))
            bits = rng.integers(0, 2, (cells, cells)).astype(np.uint8) * 255
            if kind == 2:
                bits[0, :] = bits[-1, :] = bits[:, 0] = bits[:, -1] = 0
            tile = cv2.resize(bits, (s, s), interpolation=cv2.INTER_NEAREST)
            out[y : y + s, x : x + s] = tile[..., None]
    return out


@dataclass(frozen=True)
class CardPose:
    """Where the card is in one frame: distance, tilts, roll, rotation and translation."""

    distance: float
    tilt_x: float
    tilt_y: float
    roll: float
    R: np.ndarray
    t: np.ndarray
    centre_cam: np.ndarray  # card centre in camera coordinates (mm)

    def view_angle_deg(self) -> float:
        cc = self.centre_cam
        return math.degrees(math.acos(min(1.0, abs(float(self.R[:, 2] @ cc)) / float(np.linalg.norm(cc)))))


class CardMotion:
    """The card's smooth seeded path through distances, tilts, rolls and positions,
    plus optional hand shake; :meth:`project` maps printed mm to image pixels."""

    def __init__(
        self,
        cfg: SimConfig,
        sweep: Sweep,
        K: np.ndarray,
        dist: np.ndarray | None,
        centre_mm: np.ndarray,
        d_near: float,
        d_far: float,
    ) -> None:
        self.cfg, self.sweep, self.K, self.dist = cfg, sweep, K, dist
        self.centre_mm, self.d_near, self.d_far = centre_mm, d_near, d_far

    def _time(self, i: int) -> float:
        return i / self.cfg.fps * self.cfg.speed

    def shake(self, i: int) -> tuple[float, float]:
        """Hand-shake offset (px) of frame ``i``: independent jitter, so it blurs along its own direction."""
        if self.cfg.shake_px <= 0:
            return 0.0, 0.0
        r = np.random.default_rng([self.cfg.seed, _SHAKE_STREAM, i]).normal(0.0, self.cfg.shake_px, 2)
        return float(r[0]), float(r[1])

    def pose(self, i: int) -> CardPose:
        cfg, sw = self.cfg, self.sweep
        W, H = cfg.size
        s = self._time(i)
        sd = 0.5 - 0.5 * sw.wave("distance", s)
        d = math.exp(math.log(self.d_near) + sd * (math.log(self.d_far) - math.log(self.d_near)))
        tx = cfg.tilt_max_deg * sw.wave("tilt_x", s)
        ty = cfg.tilt_max_deg * sw.wave("tilt_y", s)
        roll = cfg.roll_max_deg * sw.wave("roll", s)
        jx, jy = self.shake(i)
        u = W * sw.anchor[0] + cfg.wander_frac * H * sw.wave("u", s) + jx
        v = H * sw.anchor[1] + cfg.wander_frac * H * sw.wave("v", s) + jy
        R = _rotation(tx, ty, roll)
        # camera-frame position of the card centre: depth d along the ray through (u, v)
        ray = np.linalg.solve(self.K, [u, v, 1.0])
        cc = d * ray / np.linalg.norm(ray)
        t = cc - R @ np.array([self.centre_mm[0], self.centre_mm[1], 0.0])
        return CardPose(distance=d, tilt_x=tx, tilt_y=ty, roll=roll, R=R, t=t, centre_cam=cc)

    def project(self, P: CardPose, pts: np.ndarray) -> np.ndarray:
        obj = np.column_stack([pts, np.zeros(len(pts))])
        if self.dist is None:
            cam = (P.R @ obj.T).T + P.t
            uv = (self.K @ cam.T).T
            return uv[:, :2] / uv[:, 2:3]
        return cv2.projectPoints(obj, cv2.Rodrigues(P.R)[0], P.t, self.K, self.dist)[0].reshape(-1, 2)


class Lighting:
    """Exposure (smooth sweep times auto-exposure jumps), colour cast, glare strength
    and defocus of each frame."""

    def __init__(self, cfg: SimConfig, sweep: Sweep) -> None:
        self.cfg, self.sweep = cfg, sweep
        self._jumps: list[tuple[float, float]] = []  # (time s, relative jump)
        if cfg.ae_swing > 0:
            rng = np.random.default_rng([cfg.seed, _AE_STREAM])
            t, end = 0.0, cfg.frames / cfg.fps + 1.0
            while t < end:
                t += float(rng.uniform(1.0, 3.0))
                self._jumps.append((t, float(rng.uniform(-1.0, 1.0)) * cfg.ae_swing))

    def exposure(self, i: int) -> float:
        cfg = self.cfg
        s = i / cfg.fps * cfg.speed
        lo, hi = cfg.exposure_range
        e = math.exp(math.log(lo) + (0.5 + 0.5 * self.sweep.wave("exposure", s)) * (math.log(hi) - math.log(lo)))
        t = i / cfg.fps
        for tj, a in self._jumps:  # light changes at tj; the camera over-corrects, then settles (~0.3 s)
            if t >= tj:
                dt = t - tj
                e *= 1.0 + a * math.exp(-dt / 0.3) * math.cos(2 * math.pi * dt / 0.8)
        return float(np.clip(e, 0.05, 4.0))

    def tint(self, i: int) -> np.ndarray:
        return np.array(self.sweep.tint) * self.sweep.wave("tint", i / self.cfg.fps * self.cfg.speed)

    def glare(self, i: int) -> tuple[float, float, float]:
        """``(strength, u, v)``: the highlight's strength and its centre on the card (0-1 across)."""
        if self.cfg.glare <= 0:
            return 0.0, 0.5, 0.5
        s = i / self.cfg.fps * self.cfg.speed
        g = self.cfg.glare * max(0.0, self.sweep.wave("glare", s))
        return g, 0.5 + 0.4 * self.sweep.wave("glare_u", s), 0.5 + 0.4 * self.sweep.wave("glare_v", s)

    def defocus(self, i: int) -> float:
        cfg = self.cfg
        if cfg.defocus_max is None:
            return cfg.defocus_sigma
        w = 0.5 + 0.5 * self.sweep.wave("defocus", i / cfg.fps * cfg.speed)
        return cfg.defocus_sigma + w * (cfg.defocus_max - cfg.defocus_sigma)


def _skew(quad: np.ndarray, vx: float, vy: float, rs: float, H: int) -> np.ndarray:
    """Rolling shutter: row ``y`` is read ``rs * (y - H/2) / H`` frames after the middle row."""
    q = quad.copy()
    f = rs * (quad[:, 1] - H / 2) / H
    q[:, 0] += vx * f
    q[:, 1] += vy * f
    return q


def _glare_blob(shape: tuple[int, int], centre: tuple[float, float], sigma: float) -> np.ndarray:
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.exp(-((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) / (2 * sigma**2)).astype(np.float32)


class _VideoOut:
    """A video written to a hidden partial file, renamed into place when complete."""

    def __init__(self, out: Path, codec: str, fps: float, size: tuple[int, int]) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        self.out = out
        self.tmp = out.with_name(f".{out.stem}.partial{out.suffix}")
        self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*codec), float(fps), size)
        if not self.writer.isOpened():
            raise ConfigError(f"cannot write video {out} with codec {codec} (OpenCV has no encoder for it here)")

    def write(self, img: np.ndarray) -> None:
        self.writer.write(img)

    def abort(self) -> None:
        self.writer.release()
        self.tmp.unlink(missing_ok=True)

    def finish(self) -> None:
        self.writer.release()
        os.replace(self.tmp, self.out)


class FrameRenderer:
    """Renders frame after frame: scene, card (motion blur, rolling shutter, glare),
    light and sensor; returns the image and its ground-truth record."""

    def __init__(
        self,
        cfg: SimConfig,
        motion: CardMotion,
        light: Lighting,
        card: Card | None,
        scenes: list[np.ndarray],
        scene_items: list[tuple[Path, str | None]],
        patch_corners: np.ndarray,
        markers: dict[int, np.ndarray],
    ) -> None:
        self.cfg, self.motion, self.light, self.card = cfg, motion, light, card
        self.scenes, self.scene_items = scenes, scene_items
        self.patch_corners, self.markers = patch_corners, markers
        self._prev_centre: tuple[float, float] | None = None

    def render(self, i: int) -> tuple[np.ndarray, dict[str, Any]]:
        cfg, W, H = self.cfg, self.cfg.size[0], self.cfg.size[1]
        k_scene = min(i // cfg.scene_frames, len(self.scenes) - 1)
        frame = self.scenes[k_scene].astype(np.float32)
        P = self.motion.pose(i)
        quad0 = self.motion.project(P, self.patch_corners)
        _, _, centre0 = quad_metrics(quad0)
        vx = vy = 0.0
        if self._prev_centre is not None:
            vx, vy = centre0[0] - self._prev_centre[0], centre0[1] - self._prev_centre[1]
        self._prev_centre = centre0
        rs = cfg.rolling_shutter
        quad = _skew(quad0, vx, vy, rs, H) if rs > 0 else quad0
        size_px, angle, centre = quad_metrics(quad)
        bx, by = vx * cfg.exposure_time, vy * cfg.exposure_time
        mk_sides, inside = [], True
        for corners in self.markers.values():
            q = self.motion.project(P, corners)
            mk_sides.append(float(np.mean([np.linalg.norm(q[j] - q[(j + 1) % 4]) for j in range(4)])))
            inside &= bool(np.all((q[:, 0] >= 1) & (q[:, 0] <= W - 2) & (q[:, 1] >= 1) & (q[:, 1] <= H - 2)))
        patch_inside = bool(
            np.all((quad[:, 0] >= 0) & (quad[:, 0] <= W - 1) & (quad[:, 1] >= 0) & (quad[:, 1] <= H - 1))
        )
        visible = self.card is not None and inside and min(mk_sides) >= 8.0
        glare = 0.0
        if self.card is not None:
            prem, a = _render_card(self.card, self.motion.K, self.motion.dist, P.R, P.t, cfg.size)
            if rs > 0 and (vx or vy):
                M = np.array([[1.0, vx * rs / H, -vx * rs / 2], [0.0, 1.0 + vy * rs / H, -vy * rs / 2]], np.float32)
                prem = cv2.warpAffine(prem, M, (W, H), flags=cv2.INTER_LINEAR)
                a = cv2.warpAffine(a, M, (W, H), flags=cv2.INTER_LINEAR)
            kern = _motion_kernel(bx, by)
            if kern is not None:
                prem = cv2.filter2D(prem, -1, kern, borderType=cv2.BORDER_CONSTANT)
                a = cv2.filter2D(a, -1, kern, borderType=cv2.BORDER_CONSTANT)
            glare, gu, gv = self.light.glare(i)
            if glare > 0:
                q = quad
                c = (1 - gv) * ((1 - gu) * q[0] + gu * q[1]) + gv * ((1 - gu) * q[3] + gu * q[2])
                blob = _glare_blob((H, W), (float(c[0]), float(c[1])), 0.35 * size_px) * (glare * a)
                paper = prem  # premultiplied card colour: screen-blend the highlight over it
                prem = paper + (255.0 * a[..., None] - paper) * blob[..., None]
            frame = frame * (1.0 - a[..., None]) + prem[..., ::-1]  # card is RGB, frame BGR
        exposure = self.light.exposure(i)
        gain_rgb = exposure * (1.0 + self.light.tint(i))
        img8 = np.clip(np.round(frame), 0, 255).astype(np.uint8)
        img8 = cv2.LUT(img8, _light_lut(gain_rgb[::-1]))
        frng = np.random.default_rng([cfg.seed, _NOISE_STREAM, i])
        sigma = cfg.noise_sigma / math.sqrt(min(exposure, 1.0))
        defocus = self.light.defocus(i)
        img8 = photograph(img8, rng=frng, vignetting=cfg.vignetting, noise_sigma=sigma, blur_sigma=defocus)
        tx, ty, roll = euler_from_rotation(P.R)
        path, cls = self.scene_items[k_scene]
        rec = {
            "index": i,
            "timestamp": round(i / cfg.fps, 6),
            "object_class": cls,
            "scene": str(path),
            "has_patch": self.card is not None and cfg.control is None,
            "card": self.card is not None,
            "quad_px": [[round(float(x), 3), round(float(y), 3)] for x, y in quad],
            "size_px": round(size_px, 4),
            "angle_deg": round(angle, 4),
            "center_px": [round(centre[0], 3), round(centre[1], 3)],
            "distance_mm": round(float(np.linalg.norm(P.centre_cam)), 3),
            "tilt_x_deg": round(tx, 4),
            "tilt_y_deg": round(ty, 4),
            "roll_deg": round(roll, 4),
            "view_angle_deg": round(P.view_angle_deg(), 4),
            "marker_side_px": [round(v_, 3) for v_ in mk_sides],
            "markers_in_frame": visible,
            "patch_in_view": self.card is not None and patch_inside,
            "exposure": round(exposure, 4),
            "motion_blur_px": round(math.hypot(bx, by), 3),
            "noise_sigma": round(sigma, 3),
            "defocus_sigma": round(defocus, 3),
            "glare": round(glare, 3),
        }
        return img8, rec


def simulate_capture(
    patch: np.ndarray | None,
    layout: Layout,
    scenes: str | Path,
    out: str | Path,
    *,
    config: SimConfig = SimConfig(),
    camera: tuple[np.ndarray, np.ndarray] | None = None,
    calib: Any = None,
    target_class: str | None = None,
    source: dict[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
) -> SimResult:
    """Film a printed patch: write ``out`` (video), its ground truth and its config.

    Args:
        patch: ``(h, w, 3)`` uint8 RGB patch image (what ``patchlab print`` prints).
        layout: the printed sheet (``patch.layout.json``); copy 0 is filmed.
        scenes: folder of scene images (ImageFolder tree or plain folder).
        out: video file, ``.mp4`` (MPEG-4) or ``.avi`` (MJPEG).
        config: see :class:`SimConfig`.
        camera: ``(K, dist)`` for a ``config.size`` frame, else :func:`default_camera`.
        calib: a :class:`patchlab.calib.ColorTransform` as the printer's colour model.
        target_class: the patch's target; scenes of that class are not used.
        source: provenance of the patch (path, run id), recorded in ``.sim.json``.
        progress: called with 1 per frame written.

    Raises:
        ConfigError: bad options, an unwritable video or an unusable layout.
    """
    t_start = time.perf_counter()
    out = Path(out)
    codec = CODECS.get(out.suffix.lower())
    if codec is None:
        raise ConfigError(f"--out must be a video file ending in {', '.join(CODECS)}, got {out}")
    if patch is not None and (patch.ndim != 3 or patch.shape[2] != 3 or patch.dtype != np.uint8):
        raise ConfigError(f"patch image must be (h, w, 3) uint8, got {patch.shape} {patch.dtype}")
    cfg = config
    W, H = cfg.size
    sweep = Sweep.sample(np.random.default_rng(cfg.seed))
    scene_items = _pick_scenes(scenes, -(-cfg.frames // cfg.scene_frames), cfg.seed, target_class)
    scene_imgs = []
    for k, (p, _) in enumerate(scene_items):
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            raise ConfigError(f"cannot read scene image {p}")
        img = scene_frame(img, cfg.size)
        if cfg.clutter:
            img = add_clutter(img, cfg.clutter, np.random.default_rng([cfg.seed, _CLUTTER_STREAM, k]))
        scene_imgs.append(img)

    K, dist = (
        (default_camera(cfg.size), None)
        if camera is None
        else (np.asarray(camera[0], np.float64), np.asarray(camera[1], np.float64))
    )
    f = float(K[0, 0])
    p0 = next((q for q in layout.patches if q.copy == 0), None)
    if p0 is None:
        raise ConfigError("the layout has no patch copy 0")
    width_mm = p0.width_mm
    d_near = f * width_mm / (cfg.near_side_frac * H)
    d_far = f * width_mm / (cfg.far_side_frac * H)
    # enough resolution that the nearest, most tilted view never magnifies the print
    ppm = max(6.0, SUPERSAMPLE * 1.6 * cfg.near_side_frac * H / width_mm)
    card = None
    if cfg.control != "none":
        card = make_card(
            layout, None if cfg.control == "blank" else patch, px_per_mm=ppm, printer=cfg.printer, calib=calib
        )
    centre_mm = np.asarray(p0.corners_mm, np.float64).mean(0)
    motion = CardMotion(cfg, sweep, K, dist, centre_mm, d_near, d_far)
    renderer = FrameRenderer(
        cfg,
        motion,
        Lighting(cfg, sweep),
        card,
        scene_imgs,
        scene_items,
        np.asarray(p0.corners_mm, np.float64),
        {m.id: np.asarray(m.corners_mm, np.float64) for m in layout.markers_of(0)},
    )
    video = _VideoOut(out, codec, cfg.fps, (W, H))
    truth_lines: list[str] = []
    markers_in_frame = in_view = 0
    try:
        for i in range(cfg.frames):
            img8, rec = renderer.render(i)
            video.write(img8)
            markers_in_frame += int(rec["markers_in_frame"])
            in_view += int(rec["patch_in_view"])
            truth_lines.append(json.dumps(rec))
            if progress is not None:
                progress(1)
    except BaseException:
        video.abort()
        raise
    video.finish()
    truth = truth_path_for(out)
    atomic_write_text(truth, "\n".join(truth_lines) + "\n")
    scenes_rec = [
        {
            "path": str(p),
            "object_class": c,
            "frames": [k * cfg.scene_frames, min((k + 1) * cfg.scene_frames, cfg.frames)],
        }
        for k, (p, c) in enumerate(scene_items)
    ]
    cam_file = camera_path_for(out)
    atomic_write_json(
        cam_file,
        {
            "camera_matrix": K.tolist(),
            "dist_coeffs": [0.0] * 5 if dist is None else np.asarray(dist, np.float64).ravel().tolist(),
            "image_size": [W, H],
            "created_by": "patchlab simulate capture (the simulated camera, exact)",
        },
    )
    sim = sim_path_for(out)
    seconds = time.perf_counter() - t_start
    atomic_write_json(
        sim,
        {
            "created_by": "patchlab simulate capture",
            "video": str(out),
            "truth": str(truth),
            "codec": codec,
            "config": cfg.to_dict(),
            "sweep": sweep.to_dict(),
            "camera_matrix": K.tolist(),
            "dist_coeffs": None if dist is None else np.asarray(dist).ravel().tolist(),
            "distance_range_mm": [d_near, d_far],
            "print_px_per_mm": ppm,
            "printer": "calib" if calib is not None else asdict(cfg.printer),
            "patch": source or {},
            "target_class": target_class,
            "layout": layout.to_dict(),
            "scenes": scenes_rec,
            "frames": cfg.frames,
            "markers_in_frame": markers_in_frame,
            "patch_in_view": in_view,
            "seconds": round(seconds, 2),
            "versions": versions(SIM_VERSION_MODULES),
        },
    )
    return SimResult(
        video=out,
        truth=truth,
        sim=sim,
        camera=cam_file,
        frames=cfg.frames,
        markers_in_frame=markers_in_frame,
        scenes=scenes_rec,
        seconds=seconds,
        patch_in_view=in_view,
    )


__all__ = [
    "CardMotion",
    "CardPose",
    "FrameRenderer",
    "Lighting",
    "PrinterModel",
    "SimConfig",
    "SimResult",
    "Sweep",
    "Card",
    "make_card",
    "cutout_layout",
    "add_clutter",
    "simulate_capture",
    "read_truth",
    "truth_path_for",
    "sim_path_for",
    "camera_path_for",
    "default_camera",
]
