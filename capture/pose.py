"""Where the printed patch is in a frame: its markers, apparent size, angle and pose.

The patch is found by the four ArUco markers of its frame (ids ``4c .. 4c+3`` for
copy ``c``, see :func:`patchlab.markers.frame_geometry`). Their corners, matched to
the layout's millimetre geometry, give a page-to-image homography; the patch's
corners through it give the patch *quadrilateral* in the image, and from it, with
no camera calibration at all:

* ``size_px`` -- apparent size: the side of the square with the quadrilateral's
  area, ``sqrt(area)`` in pixels (perspective shrinks far edges and grows near
  ones; the area side is the one number that stays fair);
* ``angle_deg`` -- in-plane angle: direction of the line from the midpoint of the
  left edge to the midpoint of the right edge, ``atan2(dy, dx)`` in degrees, image
  y pointing down (so positive is clockwise on screen), in (-180, 180].

The simulator writes its ground truth with the same :func:`quad_metrics`, so the
two agree by definition and only the measurement can differ.

With a camera file (``camera.json``: K and distortion) :func:`cv2.solvePnP` (IPPE,
planar, then Levenberg-Marquardt) gives the 3-D pose: ``distance_mm`` from the
camera centre to the patch centre, the page's rotation decomposed as
``R = Rz(roll) Ry(tilt_y) Rx(tilt_x)`` (the convention of
:func:`patchlab.calib.synth.look_at`, so 0, 0, 0 is a frontal view) and
``view_angle_deg``, the angle between the page normal and the line of sight (0 =
seen face on). Without a layout the frame geometry is the nominal one (default
marker ratio), angles still come out but distances need the printed size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np

from patchlab.errors import ConfigError
from patchlab.layout import DEFAULT_ARUCO_DICT, Layout
from patchlab.markers import FRAME_MARKER_RATIO, MARKERS_PER_COPY, Detection, frame_geometry, get_dictionary

#: Patch pixels of the nominal frame used without a layout (large, so the band's
#: rounding to whole patch pixels is negligible: the ratio is the nominal one).
_NOMINAL_PATCH_PX = 1000


def quad_metrics(quad: np.ndarray) -> tuple[float, float, tuple[float, float]]:
    """Apparent size, in-plane angle and centre of a patch quadrilateral.

    Args:
        quad: ``(4, 2)`` image points TL, TR, BR, BL (pixels).

    Returns:
        ``(size_px, angle_deg, (cx, cy))``: ``sqrt(area)``, the left-to-right angle
        (degrees, clockwise on screen positive) and the mean of the corners.
    """
    q = np.asarray(quad, np.float64)
    if q.shape != (4, 2):
        raise ValueError(f"expected a (4, 2) quadrilateral TL, TR, BR, BL, got {q.shape}")
    x, y = q[:, 0], q[:, 1]
    area = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
    left, right = (q[0] + q[3]) / 2, (q[1] + q[2]) / 2
    d = right - left
    angle = math.degrees(math.atan2(d[1], d[0]))
    c = q.mean(0)
    return math.sqrt(area), angle, (float(c[0]), float(c[1]))


def euler_from_rotation(R: np.ndarray) -> tuple[float, float, float]:
    """``(tilt_x, tilt_y, roll)`` degrees with ``R = Rz(roll) Ry(tilt_y) Rx(tilt_x)`` as
    :func:`patchlab.calib.synth.look_at` builds it (its ``Ry`` turns x towards -z)."""
    R = np.asarray(R, np.float64)
    ty = math.degrees(math.asin(max(-1.0, min(1.0, R[2, 0]))))
    tx = math.degrees(math.atan2(R[2, 1], R[2, 2]))
    roll = math.degrees(math.atan2(R[1, 0], R[0, 0]))
    return tx, ty, roll


@dataclass(frozen=True)
class PatchTarget:
    """The printed geometry of one patch copy: marker corners and patch corners.

    Units are page millimetres when read from a layout (``metric``), else the
    nominal frame's patch pixels (shape right, scale unknown).
    """

    copy: int
    marker_corners: dict[int, np.ndarray]  # id -> (4, 2) TL, TR, BR, BL
    patch_corners: np.ndarray  # (4, 2)
    metric: bool

    @property
    def centre(self) -> np.ndarray:
        return self.patch_corners.mean(0)

    @classmethod
    def from_layout(cls, layout: Layout) -> list["PatchTarget"]:
        """One target per patch copy of ``layout`` that has markers."""
        out = []
        for p in layout.patches:
            ms = layout.markers_of(p.copy)
            if not ms:
                continue
            out.append(cls(copy=p.copy, marker_corners={m.id: np.asarray(m.corners_mm, np.float64) for m in ms},
                           patch_corners=np.asarray(p.corners_mm, np.float64), metric=True))
        if not out:
            raise ConfigError("the layout has no patch with markers: print it with `patchlab print patch --markers`")
        return out

    @classmethod
    def nominal(cls, copies: int = 1, marker_ratio: float = FRAME_MARKER_RATIO,
                dictionary: str = DEFAULT_ARUCO_DICT) -> list["PatchTarget"]:
        """Targets for the default frame geometry, when no layout is given."""
        out = []
        for c in range(copies):
            g = frame_geometry(_NOMINAL_PATCH_PX, marker_ratio=marker_ratio, copy=c, dictionary=dictionary)
            x0, y0, x1, y1 = g.inner_box
            out.append(cls(copy=c, marker_corners=dict(zip(g.marker_ids, g.marker_corners())),
                           patch_corners=np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64),
                           metric=False))
        return out


@dataclass(frozen=True)
class MarkerPose:
    """The patch as seen in one frame (see the module docstring for each quantity)."""

    copy: int
    marker_ids: tuple[int, ...]
    quad_px: np.ndarray  # (4, 2) TL, TR, BR, BL
    size_px: float
    angle_deg: float
    center_px: tuple[float, float]
    distance_mm: float | None = None
    tilt_x_deg: float | None = None
    tilt_y_deg: float | None = None
    roll_deg: float | None = None
    view_angle_deg: float | None = None
    reproj_px: float | None = None

    @property
    def n_markers(self) -> int:
        return len(self.marker_ids)

    def to_dict(self) -> dict[str, Any]:
        r = lambda v, k=3: None if v is None else round(float(v), k)  # noqa: E731
        return {"copy": self.copy, "n_markers": self.n_markers, "marker_ids": list(self.marker_ids),
                "quad_px": [[r(x, 2), r(y, 2)] for x, y in self.quad_px.tolist()],
                "size_px": r(self.size_px), "angle_deg": r(self.angle_deg),
                "center_px": [r(self.center_px[0], 2), r(self.center_px[1], 2)],
                "distance_mm": r(self.distance_mm, 2), "tilt_x_deg": r(self.tilt_x_deg, 2),
                "tilt_y_deg": r(self.tilt_y_deg, 2), "roll_deg": r(self.roll_deg, 2),
                "view_angle_deg": r(self.view_angle_deg, 2), "reproj_px": r(self.reproj_px)}


#: Edge profiles per marker side and their span along the side (fractions), for
#: :func:`refine_marker_edges`; profile sampling step (px).
_EDGE_PROFILES, _EDGE_SPAN, _PROFILE_STEP = 7, (0.2, 0.8), 0.1


def refine_marker_edges(gray: np.ndarray, corners: np.ndarray, cells: int) -> np.ndarray:
    """Move marker corners onto the true outer edges of their black squares.

    ArUco's corners sit where its adaptive threshold cut the black border, a
    fraction of a pixel inside the real edge (about 0.5 px off the side of a
    12-20 px marker: 3-4 % of the apparent size). Here every side is located
    where the brightness crosses half-way between the black border (half a cell
    inside) and the white quiet zone (half a cell outside) -- unbiased for any
    symmetric blur -- on :data:`_EDGE_PROFILES` normal profiles; a line is fitted
    to each side and the corners are the intersections of adjacent lines.

    Args:
        gray: ``(H, W)`` float32 image.
        corners: ``(M, 4, 2)`` detected corners (TL, TR, BR, BL), pixel centres.
        cells: marker cells per side including the black border (dictionary size + 2).

    Returns:
        ``(M, 4, 2)`` refined corners; a marker whose edges cannot be measured keeps its own.
    """
    c = np.asarray(corners, np.float64)
    M = c.shape[0]
    a, b = c, np.roll(c, -1, axis=1)  # side k runs from corner k to corner k+1 (clockwise on screen)
    d = b - a
    length = np.linalg.norm(d, axis=-1, keepdims=True)
    u = d / np.maximum(length, 1e-9)
    n = np.stack([u[..., 1], -u[..., 0]], -1)  # outward normal (image y down, clockwise corners)
    half_cell = (length[..., 0] / cells) / 2  # (M, 4)
    t = np.linspace(*_EDGE_SPAN, _EDGE_PROFILES)
    base = a[:, :, None, :] + t[None, None, :, None] * d[:, :, None, :]  # (M, 4, P, 2)
    S = int(np.ceil(np.max(half_cell) / _PROFILE_STEP))
    steps = np.arange(-S, S + 1) * _PROFILE_STEP  # (Q,)
    pts = base[..., None, :] + steps[None, None, None, :, None] * n[:, :, None, None, :]  # (M, 4, P, Q, 2)
    flat = pts.reshape(-1, 2).astype(np.float32)
    prof = cv2.remap(gray, flat[:, 0].reshape(1, -1), flat[:, 1].reshape(1, -1), cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE).reshape(pts.shape[:-1])  # (M, 4, P, Q)
    hc = half_cell[:, :, None]
    # brightness half a cell inside / outside, per side (median over the profiles)
    idx_in = np.clip(np.round((-hc + S * _PROFILE_STEP) / _PROFILE_STEP).astype(int), 0, 2 * S)[..., 0]
    idx_out = np.clip(np.round((hc + S * _PROFILE_STEP) / _PROFILE_STEP).astype(int), 0, 2 * S)[..., 0]
    black = np.median(np.take_along_axis(prof, idx_in[:, :, None, None].repeat(_EDGE_PROFILES, 2), 3)[..., 0], 2)
    white = np.median(np.take_along_axis(prof, idx_out[:, :, None, None].repeat(_EDGE_PROFILES, 2), 3)[..., 0], 2)
    level = (black + white) / 2  # (M, 4)
    out = c.copy()
    for m in range(M):
        lines = []
        for k in range(4):
            if white[m, k] - black[m, k] < 20.0:  # no contrast: leave this marker alone
                break
            lo, hi = idx_in[m, k], idx_out[m, k]
            offs = []
            for p in range(_EDGE_PROFILES):
                q = prof[m, k, p, lo:hi + 1]
                above = q >= level[m, k]
                ks = np.flatnonzero(~above[:-1] & above[1:])  # dark -> bright going outward
                if ks.size == 0:
                    continue
                j = int(ks[np.argmin(np.abs(steps[lo + ks]))])
                f = (level[m, k] - q[j]) / max(q[j + 1] - q[j], 1e-9)
                offs.append((p, steps[lo + j] + f * _PROFILE_STEP))
            if len(offs) < 3:
                break
            P = np.array([base[m, k, p] + o * n[m, k] for p, o in offs])
            centre = P.mean(0)
            _, _, vt = np.linalg.svd(P - centre)
            lines.append((centre, vt[0]))
        if len(lines) != 4:
            continue
        new = np.empty((4, 2))
        for k in range(4):  # corner k is where side k-1 meets side k
            (p1, d1), (p2, d2) = lines[k - 1], lines[k]
            A = np.array([d1, -d2]).T
            if abs(np.linalg.det(A)) < 1e-6:
                break
            s_ = np.linalg.solve(A, p2 - p1)
            new[k] = p1 + s_[0] * d1
        else:
            if np.max(np.linalg.norm(new - c[m], axis=1)) < 0.25 * float(np.min(length[m])):
                out[m] = new
    return out


class MarkerDetector:
    """An ArUco detector built once, for every frame, with edge-refined corners.

    Args:
        dictionary: ArUco dictionary name.
        ids: only keep these marker ids (others, e.g. a chart's, are ignored).
        refine_edges: move the corners onto the measured edges
            (:func:`refine_marker_edges`); without it they keep ArUco's sub-pixel corners.
    """

    def __init__(self, dictionary: str = DEFAULT_ARUCO_DICT, ids: Sequence[int] | None = None, *,
                 refine_edges: bool = True) -> None:
        params = cv2.aruco.DetectorParameters()
        params.cornerRefinementMethod = cv2.aruco.CORNER_REFINE_SUBPIX
        d = get_dictionary(dictionary)
        self._det = cv2.aruco.ArucoDetector(d, params)
        self._cells = int(d.markerSize) + 2
        self._ids = None if ids is None else set(int(i) for i in ids)
        self.refine_edges = refine_edges

    def detect(self, gray: np.ndarray) -> list[Detection]:
        """Markers in a grey uint8 image, sorted by id."""
        if gray.ndim != 2 or gray.dtype != np.uint8:
            raise ValueError(f"expected a (H, W) uint8 grey image, got {gray.shape} {gray.dtype}")
        corners, ids, _ = self._det.detectMarkers(gray)
        if ids is None:
            return []
        keep = [(np.asarray(c, np.float64).reshape(4, 2), int(i)) for c, i in zip(corners, ids.ravel())
                if self._ids is None or int(i) in self._ids]
        if not keep:
            return []
        cs = np.stack([c for c, _ in keep])
        if self.refine_edges:
            cs = refine_marker_edges(gray.astype(np.float32), cs, self._cells)
        return sorted((Detection(i, cs[k]) for k, (_, i) in enumerate(keep)), key=lambda d_: d_.id)


class PoseEstimator:
    """Turn marker detections into a :class:`MarkerPose` of the best-seen patch copy.

    Args:
        targets: printed geometry per copy (:meth:`PatchTarget.from_layout` or
            :meth:`PatchTarget.nominal`).
        camera: ``(K, dist)`` for the 3-D pose, or None (image quantities only).
        min_markers: markers needed to report a pose (1 is enough for a homography).
    """

    def __init__(self, targets: Sequence[PatchTarget], camera: tuple[np.ndarray, np.ndarray] | None = None, *,
                 min_markers: int = 1) -> None:
        if not targets:
            raise ConfigError("no patch targets to look for")
        if not 1 <= min_markers <= MARKERS_PER_COPY:
            raise ConfigError(f"min_markers must be in 1..{MARKERS_PER_COPY}, got {min_markers}")
        self.targets = list(targets)
        self.camera = None if camera is None else (np.asarray(camera[0], np.float64),
                                                   np.asarray(camera[1], np.float64).ravel())
        self.min_markers = min_markers
        self._by_id = {mid: t for t in self.targets for mid in t.marker_corners}

    @property
    def marker_ids(self) -> list[int]:
        return sorted(self._by_id)

    def estimate(self, detections: Sequence[Detection]) -> MarkerPose | None:
        """The pose of the copy with most detected markers, or None if none has enough."""
        groups: dict[int, list[Detection]] = {}
        for d in detections:
            t = self._by_id.get(d.id)
            if t is not None:
                groups.setdefault(t.copy, []).append(d)
        if not groups:
            return None
        copy, dets = max(groups.items(), key=lambda kv: (len(kv[1]), -kv[0]))
        if len(dets) < self.min_markers:
            return None
        target = next(t for t in self.targets if t.copy == copy)
        obj = np.concatenate([target.marker_corners[d.id] for d in dets])
        img = np.concatenate([d.corners for d in dets])
        ids = tuple(d.id for d in dets)
        if self.camera is None:
            H, _ = cv2.findHomography(obj, img, 0)
            if H is None:
                return None
            quad = cv2.perspectiveTransform(target.patch_corners.reshape(-1, 1, 2), H).reshape(4, 2)
            size, angle, centre = quad_metrics(quad)
            return MarkerPose(copy=copy, marker_ids=ids, quad_px=quad, size_px=size, angle_deg=angle,
                              center_px=centre)
        return self._pnp(target, obj, img, ids)

    def _pnp(self, target: PatchTarget, obj: np.ndarray, img: np.ndarray, ids: tuple[int, ...]) -> MarkerPose | None:
        K, dist = self.camera  # type: ignore[misc]
        obj3 = np.column_stack([obj, np.zeros(len(obj))])
        try:
            ok, rvec, tvec = cv2.solvePnP(obj3, img, K, dist, flags=cv2.SOLVEPNP_IPPE)
            if ok:
                rvec, tvec = cv2.solvePnPRefineLM(obj3, img, K, dist, rvec, tvec)
        except cv2.error:
            ok = False
        if not ok:
            return None
        proj, _ = cv2.projectPoints(obj3, rvec, tvec, K, dist)
        reproj = float(np.sqrt(np.mean(np.sum((proj.reshape(-1, 2) - img) ** 2, 1))))
        pc3 = np.column_stack([target.patch_corners, np.zeros(4)])
        quad = cv2.projectPoints(pc3, rvec, tvec, K, dist)[0].reshape(4, 2)
        size, angle, centre = quad_metrics(quad)
        R = cv2.Rodrigues(rvec)[0]
        c = R @ np.array([*target.centre, 0.0]) + tvec.ravel()
        tx, ty, roll = euler_from_rotation(R)
        cosv = abs(float(R[:, 2] @ c)) / max(float(np.linalg.norm(c)), 1e-12)
        view = math.degrees(math.acos(min(1.0, cosv)))
        return MarkerPose(copy=target.copy, marker_ids=ids, quad_px=quad, size_px=size, angle_deg=angle,
                          center_px=centre, distance_mm=float(np.linalg.norm(c)) if target.metric else None,
                          tilt_x_deg=tx, tilt_y_deg=ty, roll_deg=roll, view_angle_deg=view, reproj_px=reproj)
