"""Synthetic photographs of a printed sheet with a known camera, for tests and benchmarks.

A page image (e.g. the PDF rendered by ``pdftoppm``, or :func:`patchlab.sheet.render_sheet`)
is laid on the plane Z = 0 in page millimetres and seen through a pinhole camera
with OpenCV's distortion model; :func:`photograph` adds what a real capture adds
(vignetting, sensor noise, JPEG). Every random draw comes from the generator passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from patchlab.errors import ConfigError

#: Undistortion solver: iterations and tolerance (px) for inverting the lens model.
_UNDISTORT_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 20, 1e-6)


@dataclass(frozen=True)
class Pose:
    """A camera pose: page-mm points ``X`` are at ``R(rvec) @ X + tvec`` in camera mm."""

    rvec: np.ndarray
    tvec: np.ndarray


def look_at(
    target_mm: tuple[float, float],
    distance_mm: float,
    *,
    tilt_x_deg: float = 0.0,
    tilt_y_deg: float = 0.0,
    roll_deg: float = 0.0,
) -> Pose:
    """A camera ``distance_mm`` from the page point ``target_mm``, looking at it.

    With no tilt the camera looks straight down at the page, image x along page x
    and image y along page y; ``tilt_x_deg`` / ``tilt_y_deg`` turn the page about
    the camera's x / y axis, ``roll_deg`` about its optical axis.
    """

    def rot(axis: int, deg: float) -> np.ndarray:
        c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
        m = np.eye(3)
        i, j = [k for k in range(3) if k != axis]
        m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
        return m

    R = rot(2, roll_deg) @ rot(1, tilt_y_deg) @ rot(0, tilt_x_deg)
    target = np.array([target_mm[0], target_mm[1], 0.0])
    t = np.array([0.0, 0.0, distance_mm]) - R @ target
    return Pose(rvec=cv2.Rodrigues(R)[0].ravel(), tvec=t)


#: Spacing (fine pixels) of the grid on which the lens model is inverted exactly;
#: rays in between are interpolated (the distortion field is smooth).
_RAY_GRID_STEP = 8


def _normalised_rays(K: np.ndarray, dist: np.ndarray | None, w: int, h: int, s: int) -> np.ndarray:
    """Normalised image coordinates ``(h*s, w*s, 2)`` of each sub-pixel centre (undistorted)."""
    import torch
    import torch.nn.functional as F

    W, H = w * s, h * s
    step = _RAY_GRID_STEP
    gi = np.unique(np.r_[np.arange(0, W, step), W - 1])
    gj = np.unique(np.r_[np.arange(0, H, step), H - 1])
    u, v = np.meshgrid((gi + 0.5) / s - 0.5, (gj + 0.5) / s - 0.5)
    pts = np.stack([u, v], -1).reshape(-1, 1, 2)
    if dist is not None and np.any(dist != 0):
        coarse = cv2.undistortPoints(pts, K, dist, R=None, P=None, criteria=_UNDISTORT_CRITERIA)
    else:
        coarse = cv2.undistortPoints(pts, K, None)
    coarse = coarse.reshape(len(gj), len(gi), 2)
    # bilinear between grid nodes (torch bicubic, a = -0.75, does not even reproduce a linear ramp)
    t = torch.from_numpy(coarse).permute(2, 0, 1)[None]
    xs = np.arange(W) / step
    ys = np.arange(H) / step
    # node k sits at index k*step except the last one (W - 1): map fine index to node coordinate
    xs = np.where(np.arange(W) > gi[-2], (len(gi) - 2) + (np.arange(W) - gi[-2]) / (gi[-1] - gi[-2]), xs)
    ys = np.where(np.arange(H) > gj[-2], (len(gj) - 2) + (np.arange(H) - gj[-2]) / (gj[-1] - gj[-2]), ys)
    gx = torch.from_numpy(xs / (len(gi) - 1) * 2 - 1)
    gy = torch.from_numpy(ys / (len(gj) - 1) * 2 - 1)
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], -1)[None]
    fine = (
        F.grid_sample(t, grid, mode="bilinear", padding_mode="border", align_corners=True)[0].permute(1, 2, 0).numpy()
    )
    return fine


def render_plane_view(
    page: np.ndarray,
    px_per_mm: float,
    K: np.ndarray,
    dist: np.ndarray | None,
    pose: Pose,
    image_size: tuple[int, int],
    *,
    supersample: int = 2,
    background: int = 90,
) -> np.ndarray:
    """What a camera sees of a page lying on Z = 0 (page pixels at ``px_per_mm``).

    Args:
        page: ``(H, W)`` or ``(H, W, 3)`` uint8 page image; page point ``(x, y)`` mm is
            at pixel-centre coordinates ``(x * px_per_mm - 0.5, y * px_per_mm - 0.5)``.
        px_per_mm: page image resolution.
        K, dist: camera matrix ``(3, 3)`` and OpenCV distortion coefficients.
        pose: where the page is relative to the camera.
        image_size: ``(width, height)`` of the photograph.
        supersample: rays per pixel side (anti-aliasing).
        background: grey level around the page.
    """
    w, h = image_size
    s = int(supersample)
    if s < 1:
        raise ConfigError(f"supersample must be >= 1, got {supersample}")
    rays = _normalised_rays(np.asarray(K, np.float64), None if dist is None else np.asarray(dist, np.float64), w, h, s)
    x, y = rays[..., 0], rays[..., 1]
    R = cv2.Rodrigues(np.asarray(pose.rvec, np.float64))[0]
    Hn = np.column_stack([R[:, 0], R[:, 1], np.asarray(pose.tvec, np.float64)])  # page (X, Y, 1) -> ray
    Hi = np.linalg.inv(Hn)
    Xh = Hi[0, 0] * x + Hi[0, 1] * y + Hi[0, 2]
    Yh = Hi[1, 0] * x + Hi[1, 1] * y + Hi[1, 2]
    Z = Hi[2, 0] * x + Hi[2, 1] * y + Hi[2, 2]
    valid = Z > 0  # rays that meet the page in front of the camera
    Zs = np.where(valid, Z, 1.0)
    X = np.where(valid, Xh / Zs, -1e6)
    Y = np.where(valid, Yh / Zs, -1e6)
    mapx = (X * px_per_mm - 0.5).astype(np.float32)
    mapy = (Y * px_per_mm - 0.5).astype(np.float32)
    border = (background,) * (3 if page.ndim == 3 else 1)
    big = cv2.remap(
        page, mapx, mapy, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=border
    )
    return cv2.resize(big, (w, h), interpolation=cv2.INTER_AREA) if s > 1 else big


def photograph(
    view: np.ndarray,
    *,
    rng: np.random.Generator,
    vignetting: float = 0.0,
    noise_sigma: float = 0.0,
    jpeg_quality: int | None = None,
    blur_sigma: float = 0.0,
) -> np.ndarray:
    """Degrade a rendered view as a camera does (RGB or grey uint8 in and out).

    Args:
        view: the ideal image.
        rng: randomness for the sensor noise.
        vignetting: light lost at the image corners (0.3 = corners get 70 %): gain
            ``1 - vignetting * r**3`` with ``r`` = 1 at the corners.
        noise_sigma: Gaussian sensor noise (0-255 units).
        jpeg_quality: JPEG round trip at this quality (None = none).
        blur_sigma: Gaussian defocus blur (px).
    """
    img = view.astype(np.float32)
    if blur_sigma > 0:
        img = cv2.GaussianBlur(img, (0, 0), blur_sigma)
    if vignetting > 0:
        h, w = img.shape[:2]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        r2 = ((xx - (w - 1) / 2) ** 2 + (yy - (h - 1) / 2) ** 2) / (((w - 1) / 2) ** 2 + ((h - 1) / 2) ** 2)
        gain = 1.0 - vignetting * r2**1.5 if img.ndim == 2 else (1.0 - vignetting * r2**1.5)[..., None]
        img = img * gain
    if noise_sigma > 0:
        img = img + rng.normal(0.0, noise_sigma, img.shape).astype(np.float32)
    out = np.clip(np.round(img), 0, 255).astype(np.uint8)
    if jpeg_quality is not None:
        bgr = out if out.ndim == 2 else cv2.cvtColor(out, cv2.COLOR_RGB2BGR)
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        dec = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
        out = dec if out.ndim == 2 else cv2.cvtColor(dec, cv2.COLOR_BGR2RGB)
    return out
