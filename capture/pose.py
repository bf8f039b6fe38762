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
:func:`patchlab.synth.look_at`, so 0, 0, 0 is a frontal view) and
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
from patchlab.captures import DETECTED
from patchlab.markers import (
    FRAME_MARKER_RATIO,
    MARKERS_PER_COPY,
    Detection,
    detector_parameters,
    frame_geometry,
    get_dictionary,
)

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
    :func:`patchlab.synth.look_at` builds it (its ``Ry`` turns x towards -z)."""
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
            out.append(
                cls(
                    copy=p.copy,
                    marker_corners={m.id: np.asarray(m.corners_mm, np.float64) for m in ms},
                    patch_corners=np.asarray(p.corners_mm, np.float64),
                    metric=True,
                )
            )
        if not out:
            raise ConfigError("the layout has no patch with markers: print it with `patchlab print patch --markers`")
        return out

    @classmethod
    def nominal(
        cls, copies: int = 1, marker_ratio: float = FRAME_MARKER_RATIO, dictionary: str = DEFAULT_ARUCO_DICT
    ) -> list["PatchTarget"]:
        """Targets for the default frame geometry, when no layout is given."""
        out = []
        for c in range(copies):
            g = frame_geometry(_NOMINAL_PATCH_PX, marker_ratio=marker_ratio, copy=c, dictionary=dictionary)
            x0, y0, x1, y1 = g.inner_box
            out.append(
                cls(
                    copy=c,
                    marker_corners=dict(zip(g.marker_ids, g.marker_corners())),
                    patch_corners=np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64),
                    metric=False,
                )
            )
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
    source: str = DETECTED  # "detected" (markers found in this frame) or "tracked"
    confidence: float = 1.0  # 0..1, see :class:`patchlab.capture.track.PatchTracker`
    tracked_points: int = 0  # tracked texture points fused into a detection with fewer than 4 markers

    @property
    def n_markers(self) -> int:
        """Markers found in this frame (0 for a tracked pose)."""
        return len(self.marker_ids)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MarkerPose":
        """Inverse of :meth:`to_dict` (values as rounded there)."""
        c = d.get("center_px") or [float("nan"), float("nan")]
        return cls(
            copy=int(d["copy"]),
            marker_ids=tuple(int(i) for i in d.get("marker_ids", [])),
            quad_px=np.asarray(d["quad_px"], np.float64),
            size_px=float(d["size_px"]),
            angle_deg=float(d["angle_deg"]),
            center_px=(float(c[0]), float(c[1])),
            **{
                k: (None if d.get(k) is None else float(d[k]))
                for k in ("distance_mm", "tilt_x_deg", "tilt_y_deg", "roll_deg", "view_angle_deg", "reproj_px")
            },
            source=str(d.get("source", DETECTED)),
            confidence=float(d.get("confidence", 1.0)),
            tracked_points=int(d.get("tracked_points", 0)),
        )

    def to_dict(self) -> dict[str, Any]:
        r = lambda v, k=3: None if v is None else round(float(v), k)  # noqa: E731
        return {
            "copy": self.copy,
            "n_markers": self.n_markers,
            "marker_ids": list(self.marker_ids),
            "quad_px": [[r(x, 2), r(y, 2)] for x, y in self.quad_px.tolist()],
            "size_px": r(self.size_px),
            "angle_deg": r(self.angle_deg),
            "center_px": [r(self.center_px[0], 2), r(self.center_px[1], 2)],
            "distance_mm": r(self.distance_mm, 2),
            "tilt_x_deg": r(self.tilt_x_deg, 2),
            "tilt_y_deg": r(self.tilt_y_deg, 2),
            "roll_deg": r(self.roll_deg, 2),
            "view_angle_deg": r(self.view_angle_deg, 2),
            "reproj_px": r(self.reproj_px),
            "source": self.source,
            "confidence": r(self.confidence),
            "tracked_points": self.tracked_points,
        }


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
    prof = cv2.remap(
        gray, flat[:, 0].reshape(1, -1), flat[:, 1].reshape(1, -1), cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    ).reshape(pts.shape[:-1])  # (M, 4, P, Q)
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
                q = prof[m, k, p, lo : hi + 1]
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
    """An ArUco detector built once, for every frame, tuned for small, blurred,
    unevenly lit markers, with edge-refined corners.

    Where the patch is expected (``hint``, from the tracker's motion model) only
    that region is searched, enlarged so that its markers are at least
    :data:`UPSCALE_TARGET_PX` wide, with the robust parameters of
    :func:`patchlab.markers.detector_parameters`, then once more after contrast
    normalisation (CLAHE) if markers are still missing. Without a hint (nothing
    tracked) the whole frame is searched with OpenCV's faster default thresholds,
    then -- every ``full_every`` frames while markers are missing -- with the robust
    parameters and after contrast normalisation. Each pass runs only when the
    earlier ones missed some of the expected markers.

    Args:
        dictionary: ArUco dictionary name.
        ids: only keep these marker ids (others, e.g. a chart's, are ignored).
        refine_edges: move the corners onto the measured edges
            (:func:`refine_marker_edges`); without it they keep ArUco's sub-pixel corners.
        robust: use the robust passes at all (False: one fast full-frame pass).
        full_every: how often (frames) the slow full-frame passes may run.
    """

    #: Marker side (px) a hinted region is enlarged towards, and the largest enlargement.
    UPSCALE_TARGET_PX, MAX_UPSCALE = 24.0, 3.0
    #: Largest hinted region (pixels, after enlargement): bigger ones are searched at their own scale.
    MAX_ROI_AREA = 320 * 320
    #: Markers found in the hinted region that make the contrast-normalised pass unnecessary.
    ROI_ENOUGH = 3
    #: CLAHE clip limit and tile side (px) of the contrast-normalised pass.
    CLAHE_CLIP, CLAHE_TILE_PX = 3.0, 64

    def __init__(
        self,
        dictionary: str = DEFAULT_ARUCO_DICT,
        ids: Sequence[int] | None = None,
        *,
        refine_edges: bool = True,
        robust: bool = True,
        full_every: int = 3,
    ) -> None:
        d = get_dictionary(dictionary)
        fast = detector_parameters(small=False)
        fast.minMarkerPerimeterRate = 0.015
        self._fast = cv2.aruco.ArucoDetector(d, fast)
        self._robust = cv2.aruco.ArucoDetector(d, detector_parameters())
        self._cells = int(d.markerSize) + 2
        self._ids = None if ids is None else set(int(i) for i in ids)
        self.refine_edges = refine_edges
        self.robust = robust
        self.full_every = max(1, int(full_every))
        self._frame = 0
        self._rejected: Sequence[np.ndarray] = ()
        self.last_passes: list[str] = []  # passes the last call ran (for timing and tests)

    def _run(self, det: "cv2.aruco.ArucoDetector", gray: np.ndarray) -> dict[int, np.ndarray]:
        corners, ids, rejected = det.detectMarkers(gray)
        self._rejected = rejected
        if ids is None:
            return {}
        return {
            int(i): np.asarray(c, np.float64).reshape(4, 2)
            for c, i in zip(corners, ids.ravel())
            if self._ids is None or int(i) in self._ids
        }

    def _clahe(self, gray: np.ndarray) -> np.ndarray:
        h, w = gray.shape
        tiles = max(1, int(round(max(h, w) / self.CLAHE_TILE_PX)))
        return cv2.createCLAHE(clipLimit=self.CLAHE_CLIP, tileGridSize=(tiles, tiles)).apply(gray)

    def detect(
        self,
        gray: np.ndarray,
        *,
        hint: tuple[float, float, float, float, float] | None = None,
        expected: int = MARKERS_PER_COPY,
        markers: dict[int, np.ndarray] | None = None,
    ) -> list[Detection]:
        """Markers in a grey uint8 image, sorted by id.

        Args:
            gray: ``(H, W)`` uint8.
            hint: ``(x0, y0, x1, y1, marker_px)``: where the markers are expected and
                how large (a tracker's prediction).
            expected: markers wanted; passes stop once this many are found.
            markers: predicted corners ``(4, 2)`` of each expected marker: markers still
                missing after the region passes are looked for one by one, each in a
                small window around its prediction enlarged to :data:`UPSCALE_TARGET_PX`
                (a blurred 10 px marker that the whole-region pass misses is often
                read at 3x).
        """
        if gray.ndim != 2 or gray.dtype != np.uint8:
            raise ValueError(f"expected a (H, W) uint8 grey image, got {gray.shape} {gray.dtype}")
        self._frame += 1
        found: dict[int, np.ndarray] = {}
        self.last_passes = []

        def add(name: str, new: dict[int, np.ndarray]) -> bool:
            self.last_passes.append(name)
            for i, c in new.items():
                found.setdefault(i, c)
            return len(found) >= expected

        done = False
        if hint is not None and self.robust:
            roi = self._roi(gray, hint)
            if roi is not None:
                img, off, scale = roi
                back = lambda m: {i: (c + 0.5) / scale - 0.5 + off for i, c in m.items()}  # noqa: E731
                done = add("roi", back(self._run(self._robust, img)))
                if len(found) < min(expected, self.ROI_ENOUGH):  # a 3-marker pose is as good; spare the time
                    done = add("roi+clahe", back(self._run(self._robust, self._clahe(img))))
        if not done and markers and self.robust:
            missing = {i: c for i, c in markers.items() if i not in found}
            if missing:
                self.last_passes.append("markers")
                for i, c in missing.items():
                    got = self._one(gray, i, c)
                    if got is not None:
                        found[i] = got
                done = len(found) >= expected
        if not done and (hint is None or not self.robust):
            done = add("full", self._run(self._fast, gray))
            if not done and self.robust and (self._frame % self.full_every == 0 or not found):
                done = add("full robust", self._run(self._robust, gray))
                if not done:
                    done = add("candidates", self._candidates(gray, self._rejected))
                if not done and not found:
                    add("full+clahe", self._run(self._robust, self._clahe(gray)))
        if not found:
            return []
        keys = sorted(found)
        cs = np.stack([found[i] for i in keys])
        if self.refine_edges:
            cs = refine_marker_edges(gray.astype(np.float32), cs, self._cells)
        return [Detection(i, cs[k]) for k, i in enumerate(keys)]

    def detect_at(self, gray: np.ndarray, markers: dict[int, np.ndarray]) -> list[Detection]:
        """Only the given markers, each in an enlarged window around its predicted corners."""
        found = {}
        for i, c in markers.items():
            got = self._one(gray, i, c)
            if got is not None:
                found[i] = got
        if not found:
            return []
        keys = sorted(found)
        cs = np.stack([found[i] for i in keys])
        if self.refine_edges:
            cs = refine_marker_edges(gray.astype(np.float32), cs, self._cells)
        return [Detection(i, cs[k]) for k, i in enumerate(keys)]

    #: Most rejected candidates (squares ArUco found but could not read) re-read enlarged per frame.
    MAX_CANDIDATES = 16

    def _candidates(self, gray: np.ndarray, rejected: Sequence[np.ndarray]) -> dict[int, np.ndarray]:
        """Re-read small squares the full-frame pass found but could not decode, each
        enlarged on its own (how a far, blurred marker is first picked up)."""
        out: dict[int, np.ndarray] = {}
        cands = []
        for r in rejected or ():
            c = np.asarray(r, np.float64).reshape(4, 2)
            sides = np.linalg.norm(np.diff(c[[0, 1, 2, 3, 0]], axis=0), axis=1)
            if 4.0 <= sides.mean() <= self.UPSCALE_TARGET_PX and sides.min() > 0.5 * sides.max():
                cands.append((sides.mean(), c))
        cands.sort(key=lambda t: -t[0])
        for _, c in cands[: self.MAX_CANDIDATES]:
            for mid, corners in self._window(gray, c).items():
                if self._ids is None or mid in self._ids:
                    out.setdefault(mid, corners)
        return out

    def _one(self, gray: np.ndarray, mid: int, corners: np.ndarray) -> np.ndarray | None:
        return self._window(gray, corners).get(mid)

    def _window(self, gray: np.ndarray, corners: np.ndarray) -> dict[int, np.ndarray]:
        """Markers in a window around ``corners`` (a predicted or candidate marker), enlarged."""
        h, w = gray.shape
        c = np.asarray(corners, np.float64)
        side = float(np.mean(np.linalg.norm(np.diff(c[[0, 1, 2, 3, 0]], axis=0), axis=1)))
        if side < 4 or side > 4 * self.UPSCALE_TARGET_PX:
            return {}
        ctr, r = c.mean(0), 1.2 * side + 3
        x0, y0 = int(max(0, math.floor(ctr[0] - r))), int(max(0, math.floor(ctr[1] - r)))
        x1, y1 = int(min(w, math.ceil(ctr[0] + r))), int(min(h, math.ceil(ctr[1] + r)))
        if x1 - x0 < 6 or y1 - y0 < 6:
            return {}
        scale = float(np.clip(self.UPSCALE_TARGET_PX / side, 1.0, 4.0))
        roi = gray[y0:y1, x0:x1]
        if scale > 1.05:
            roi = cv2.resize(roi, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        else:
            scale = 1.0
        pad = 8
        roi = cv2.copyMakeBorder(roi, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        return {
            i: (got - pad + 0.5) / scale - 0.5 + np.array([x0, y0], np.float64)
            for i, got in self._run(self._robust, roi).items()
        }

    def _roi(
        self, gray: np.ndarray, hint: tuple[float, float, float, float, float]
    ) -> tuple[np.ndarray, np.ndarray, float] | None:
        """The hinted region, padded and enlarged: ``(image, offset, scale)``."""
        h, w = gray.shape
        x0, y0, x1, y1, mk = hint
        pad = 0.2 * max(x1 - x0, y1 - y0) + 6
        x0, y0 = int(max(0, math.floor(x0 - pad))), int(max(0, math.floor(y0 - pad)))
        x1, y1 = int(min(w, math.ceil(x1 + pad))), int(min(h, math.ceil(y1 + pad)))
        if x1 - x0 < 8 or y1 - y0 < 8:
            return None
        area = (x1 - x0) * (y1 - y0)
        scale = float(np.clip(self.UPSCALE_TARGET_PX / max(mk, 1.0), 1.0, self.MAX_UPSCALE))
        scale = max(1.0, min(scale, math.sqrt(self.MAX_ROI_AREA / area)))
        roi = gray[y0:y1, x0:x1]
        if scale > 1.05:
            roi = cv2.resize(roi, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        else:
            scale = 1.0
        return roi, np.array([x0, y0], np.float64), scale


@dataclass(frozen=True)
class MarkerMatch:
    """Detected markers of one patch copy matched to their printed geometry."""

    target: PatchTarget
    ids: tuple[int, ...]
    obj: np.ndarray  # (4k, 2) printed corners (mm or nominal px)
    img: np.ndarray  # (4k, 2) image corners (px)
    homography: np.ndarray  # printed -> image, least squares over all corners
    rms_px: float  # corner residual of that homography
    marker_px: float  # mean apparent marker side


#: A marker whose corners miss the others' homography by more than this fraction of
#: its side (or 2 px) is dropped as a false or damaged detection.
_MARKER_OUTLIER_FRAC, _MARKER_OUTLIER_MIN_PX = 0.15, 2.0


def fit_homography(obj: np.ndarray, img: np.ndarray) -> tuple[np.ndarray | None, float]:
    """Least-squares homography ``obj -> img`` and its RMS corner residual (px)."""
    if len(obj) < 4:
        return None, float("inf")
    H, _ = cv2.findHomography(obj, img, 0)
    if H is None:
        return None, float("inf")
    proj = cv2.perspectiveTransform(obj.reshape(-1, 1, 2), H).reshape(-1, 2)
    return H, float(np.sqrt(np.mean(np.sum((proj - img) ** 2, 1))))


class PoseEstimator:
    """Turn marker detections into a :class:`MarkerPose` of the best-seen patch copy.

    Args:
        targets: printed geometry per copy (:meth:`PatchTarget.from_layout` or
            :meth:`PatchTarget.nominal`).
        camera: ``(K, dist)`` for the 3-D pose, or None (image quantities only).
        min_markers: markers needed to report a pose (1 is enough for a homography;
            2 keep it well determined when the other two are lost).
    """

    def __init__(
        self,
        targets: Sequence[PatchTarget],
        camera: tuple[np.ndarray, np.ndarray] | None = None,
        *,
        min_markers: int = 1,
    ) -> None:
        if not targets:
            raise ConfigError("no patch targets to look for")
        if not 1 <= min_markers <= MARKERS_PER_COPY:
            raise ConfigError(f"min_markers must be in 1..{MARKERS_PER_COPY}, got {min_markers}")
        self.targets = list(targets)
        self.camera = (
            None if camera is None else (np.asarray(camera[0], np.float64), np.asarray(camera[1], np.float64).ravel())
        )
        self.min_markers = min_markers
        self._by_id = {mid: t for t in self.targets for mid in t.marker_corners}

    @property
    def marker_ids(self) -> list[int]:
        return sorted(self._by_id)

    def target(self, copy: int) -> PatchTarget:
        return next(t for t in self.targets if t.copy == copy)

    def match(self, detections: Sequence[Detection]) -> MarkerMatch | None:
        """The copy with most detected markers, its outliers dropped; None below ``min_markers``."""
        groups: dict[int, list[Detection]] = {}
        for d in detections:
            t = self._by_id.get(d.id)
            if t is not None:
                groups.setdefault(t.copy, []).append(d)
        if not groups:
            return None
        copy, dets = max(groups.items(), key=lambda kv: (len(kv[1]), -kv[0]))
        target = self.target(copy)
        while True:
            if len(dets) < self.min_markers:
                return None
            obj = np.concatenate([target.marker_corners[d.id] for d in dets])
            img = np.concatenate([d.corners for d in dets])
            H, rms = fit_homography(obj, img)
            if H is None:
                return None
            if len(dets) < 3:
                break
            # leave one marker out: the others' fit predicts it (a false marker cannot hide in
            # the fit); the suspect is the one whose removal leaves the others most consistent
            err, rest_rms = [], []
            for j in range(len(dets)):
                rest = [d for i_, d in enumerate(dets) if i_ != j]
                Hj, rj = fit_homography(
                    np.concatenate([target.marker_corners[d.id] for d in rest]),
                    np.concatenate([d.corners for d in rest]),
                )
                pj = (
                    cv2.perspectiveTransform(target.marker_corners[dets[j].id].reshape(-1, 1, 2), Hj).reshape(4, 2)
                    if Hj is not None
                    else dets[j].corners + 1e9
                )
                err.append(float(np.sqrt(np.mean(np.sum((pj - dets[j].corners) ** 2, -1)))))
                rest_rms.append(rj)
            k = int(np.argmin(rest_rms)) if len(dets) >= 4 else int(np.argmax(err))
            if err[k] <= max(_MARKER_OUTLIER_MIN_PX, _MARKER_OUTLIER_FRAC * dets[k].side_px):
                break
            dets = dets[:k] + dets[k + 1 :]
        return MarkerMatch(
            target=target,
            ids=tuple(d.id for d in dets),
            obj=obj,
            img=img,
            homography=H,
            rms_px=rms,
            marker_px=float(np.mean([d.side_px for d in dets])),
        )

    def estimate(self, detections: Sequence[Detection]) -> MarkerPose | None:
        """The pose of the copy with most detected markers, or None if none has enough."""
        m = self.match(detections)
        return None if m is None else self.pose(m.target, m.obj, m.img, m.ids, homography=m.homography)

    def pose(
        self,
        target: PatchTarget,
        obj: np.ndarray,
        img: np.ndarray,
        ids: tuple[int, ...],
        *,
        homography: np.ndarray | None = None,
        source: str = DETECTED,
        confidence: float = 1.0,
        tracked_points: int = 0,
    ) -> MarkerPose | None:
        """The pose from printed points ``obj`` seen at image points ``img``."""
        if self.camera is None:
            H = homography if homography is not None else fit_homography(obj, img)[0]
            if H is None:
                return None
            quad = cv2.perspectiveTransform(target.patch_corners.reshape(-1, 1, 2), H).reshape(4, 2)
            size, angle, centre = quad_metrics(quad)
            return MarkerPose(
                copy=target.copy,
                marker_ids=ids,
                quad_px=quad,
                size_px=size,
                angle_deg=angle,
                center_px=centre,
                source=source,
                confidence=confidence,
                tracked_points=tracked_points,
            )
        pose = self._pnp(target, obj, img, ids, source, confidence)
        if pose is not None and tracked_points:
            from dataclasses import replace

            pose = replace(pose, tracked_points=tracked_points)
        return pose

    def _pnp(
        self,
        target: PatchTarget,
        obj: np.ndarray,
        img: np.ndarray,
        ids: tuple[int, ...],
        source: str,
        confidence: float,
    ) -> MarkerPose | None:
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
        return MarkerPose(
            copy=target.copy,
            marker_ids=ids,
            quad_px=quad,
            size_px=size,
            angle_deg=angle,
            center_px=centre,
            distance_mm=float(np.linalg.norm(c)) if target.metric else None,
            tilt_x_deg=tx,
            tilt_y_deg=ty,
            roll_deg=roll,
            view_angle_deg=view,
            reproj_px=reproj,
            source=source,
            confidence=confidence,
        )
