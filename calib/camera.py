"""Camera intrinsics from ChArUco board views (OpenCV 5 ``CharucoDetector`` + ``calibrateCamera``).

The board is the one ``patchlab print board`` drew; its layout's ``board`` dict
(squares, square and marker sides in mm, dictionary) rebuilds it exactly, so the
calibration is in millimetres of the printed board.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import cv2
import numpy as np

from patchlab.checks import COUNT, POSITIVE, check_number, check_numbers
from patchlab.data import IMAGE_EXTENSIONS, is_image_file
from patchlab.errors import ConfigError, DataError
from patchlab.layout import Layout
from patchlab.markers import charuco_board
from patchlab.utils import read_json_object

#: Fewest ChArUco corners a view needs to count, and fewest views for a calibration.
MIN_CORNERS, MIN_VIEWS = 8, 5
#: A view whose RMS reprojection error exceeds this many times the median is dropped once.
OUTLIER_FACTOR = 3.0
#: Views must see the board at orientations at least this far apart (degrees between
#: board normals). Zhang's method (Zhang 2000, "A flexible new technique for camera
#: calibration", sec. 3.3) gets the focal length from the change of orientation:
#: boards parallel to each other (a copied view, a board only slid around) leave it
#: undetermined and ``calibrateCamera`` returns an arbitrary number.
MIN_POSE_SPREAD_DEG = 10.0
#: Largest relative standard deviation of fx or fy (OpenCV's estimate from the
#: Jacobian) accepted; above it the solve is ill-conditioned.
MAX_F_REL_STD = 0.05


def board_from_layout(layout: Layout) -> "cv2.aruco.CharucoBoard":
    """The OpenCV ChArUco board described by a ``board`` layout (units: mm)."""
    if layout.kind != "board" or not layout.board:
        raise ConfigError(
            f"the layout is a {layout.kind!r} sheet, not a ChArUco board: print one with "
            "`patchlab print board` and pass its .layout.json"
        )
    return charuco_board({"dictionary": layout.aruco_dict, **layout.board})


@dataclass(frozen=True)
class BoardView:
    """ChArUco corners found in one image."""

    name: str
    object_points: np.ndarray  # (N, 3) mm on the board
    image_points: np.ndarray  # (N, 2) px


def detect_board(
    image: np.ndarray, board: "cv2.aruco.CharucoBoard", name: str = "", *, min_corners: int = MIN_CORNERS
) -> BoardView | None:
    """Find the board's chessboard corners in a BGR or grey image; None if too few or collinear."""
    gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    detector = cv2.aruco.CharucoDetector(board)
    corners, ids, _, _ = detector.detectBoard(gray)
    if ids is None or len(ids) < min_corners or board.checkCharucoCornersCollinear(ids):
        return None
    obj, img = board.matchImagePoints(corners, ids)
    return BoardView(
        name=name,
        object_points=np.asarray(obj, np.float32).reshape(-1, 3),
        image_points=np.asarray(img, np.float32).reshape(-1, 2),
    )


@dataclass(frozen=True)
class CameraCalibration:
    """Pinhole intrinsics and OpenCV distortion (k1, k2, p1, p2, k3) of one camera."""

    camera_matrix: list[list[float]]
    dist_coeffs: list[float]
    rms_px: float
    image_size: tuple[int, int]  # (width, height)
    views_used: int
    views_total: int
    used: list[str] = field(default_factory=list)
    per_view_rms_px: list[float] = field(default_factory=list)
    corners_per_view: list[int] = field(default_factory=list)
    dropped_outliers: list[str] = field(default_factory=list)
    #: largest angle between the board's orientations in two used views, degrees
    pose_spread_deg: float | None = None
    #: OpenCV's standard deviation of fx and fy over their values (how well they are determined)
    f_rel_std: float | None = None

    @property
    def fx(self) -> float:
        return self.camera_matrix[0][0]

    @property
    def fy(self) -> float:
        return self.camera_matrix[1][1]

    @property
    def cx(self) -> float:
        return self.camera_matrix[0][2]

    @property
    def cy(self) -> float:
        return self.camera_matrix[1][2]

    @property
    def fov_deg(self) -> tuple[float, float]:
        w, h = self.image_size
        return 2 * math.degrees(math.atan(w / (2 * self.fx))), 2 * math.degrees(math.atan(h / (2 * self.fy)))

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(fx=self.fx, fy=self.fy, cx=self.cx, cy=self.cy, fov_deg=list(self.fov_deg))
        return d


def calibrate_camera(
    frames: Iterable[tuple[str, np.ndarray]],
    layout: Layout,
    *,
    min_views: int = MIN_VIEWS,
    min_corners: int = MIN_CORNERS,
    progress: Callable[[int], None] | None = None,
) -> CameraCalibration:
    """Calibrate from named images (BGR or grey uint8) of the layout's ChArUco board.

    Views with fewer than ``min_corners`` corners (blurred, too far, cut off) are
    skipped; a view whose reprojection error is an outlier (``OUTLIER_FACTOR``
    times the median) is dropped and the calibration redone once.

    Raises:
        DataError: fewer than ``min_views`` usable views, or images of different sizes.
    """
    board = board_from_layout(layout)
    views: list[BoardView] = []
    size: tuple[int, int] | None = None
    total = 0
    for name, img in frames:
        total += 1
        hw = (img.shape[1], img.shape[0])
        if size is None:
            size = hw
        elif hw != size:
            raise DataError(
                f"{name} is {hw[0]}x{hw[1]} but earlier views are {size[0]}x{size[1]}: calibrate one "
                "camera mode at a time"
            )
        v = detect_board(img, board, name, min_corners=min_corners)
        if v is not None:
            views.append(v)
        if progress is not None:
            progress(1)
    if total == 0:
        raise DataError("no images to calibrate from")
    if len(views) < min_views:
        raise DataError(
            f"only {len(views)} of {total} views show the ChArUco board usably (>= {min_corners} corners, "
            f"not in a line); need at least {min_views}: film the whole board sharp, from several angles"
        )
    assert size is not None
    cal, errs = _calibrate(views, size)
    med = float(np.median(errs))
    keep = [v for v, e in zip(views, errs) if e <= OUTLIER_FACTOR * max(med, 0.05)]
    dropped = [v.name for v, e in zip(views, errs) if e > OUTLIER_FACTOR * max(med, 0.05)]
    if dropped and len(keep) >= min_views:
        views = keep
        cal, errs = _calibrate(views, size)
    else:
        dropped = []
    rms, K, dist, rvecs, f_rel_std = cal
    spread = pose_spread_deg(nominal_rvecs(views, size))
    _check_conditioning(views, spread, f_rel_std, K, min_views)
    return CameraCalibration(
        camera_matrix=K.tolist(),
        dist_coeffs=dist.ravel().tolist(),
        rms_px=float(rms),
        image_size=size,
        views_used=len(views),
        views_total=total,
        used=[v.name for v in views],
        per_view_rms_px=[float(e) for e in errs],
        corners_per_view=[len(v.image_points) for v in views],
        dropped_outliers=dropped,
        pose_spread_deg=round(spread, 3),
        f_rel_std=float(f_rel_std),
    )


def distinct_views(views: list[BoardView], tol_px: float = 0.5) -> int:
    """How many views are not copies of an earlier one (same corners within ``tol_px``)."""
    kept: list[BoardView] = []
    for v in views:
        if not any(
            len(k.image_points) == len(v.image_points)
            and np.allclose(k.object_points, v.object_points)
            and float(np.max(np.abs(k.image_points - v.image_points))) <= tol_px
            for k in kept
        ):
            kept.append(v)
    return len(kept)


def nominal_rvecs(views: list[BoardView], size: tuple[int, int]) -> list[np.ndarray]:
    """Each view's board orientation, seen through a nominal camera (focal length = the image's
    longer side, centred, no distortion): independent of the calibration being judged, so
    views that cannot determine it are not judged by its own garbage estimate."""
    w, h = size
    f = float(max(w, h))
    K = np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]], np.float64)
    out = []
    for v in views:
        ok, rvec, _ = cv2.solvePnP(
            v.object_points.astype(np.float64), v.image_points.astype(np.float64), K, None, flags=cv2.SOLVEPNP_IPPE
        )
        if ok:
            out.append(rvec)
    return out


def pose_spread_deg(rvecs) -> float:
    """Largest angle (degrees) between the board normals of any two views."""
    normals = [cv2.Rodrigues(np.asarray(r, np.float64))[0][:, 2] for r in rvecs]
    best = 0.0
    for i in range(len(normals)):
        for j in range(i + 1, len(normals)):
            c = float(np.clip(np.dot(normals[i], normals[j]), -1.0, 1.0))
            best = max(best, math.degrees(math.acos(c)))
    return best


def _check_conditioning(views: list[BoardView], spread: float, f_rel_std: float, K: np.ndarray, min_views: int) -> None:
    """Refuse a calibration whose views cannot determine the intrinsics (see :data:`MIN_POSE_SPREAD_DEG`)."""
    n = distinct_views(views)
    if n < min_views:
        raise DataError(
            f"only {n} of {len(views)} usable views differ from one another (the others are copies); "
            f"need at least {min_views} distinct views: film the board from several angles"
        )
    if spread < MIN_POSE_SPREAD_DEG:
        raise DataError(
            f"degenerate views: the board is tilted by at most {spread:.1f} deg between views "
            f"(need >= {MIN_POSE_SPREAD_DEG:.0f} deg), so the focal length cannot be measured: "
            "film the board tilted left, right, up and down, not only moved"
        )
    if not np.all(np.isfinite(K)) or not math.isfinite(f_rel_std) or f_rel_std > MAX_F_REL_STD:
        raise DataError(
            f"ill-conditioned calibration: the focal length is uncertain to {f_rel_std:.0%} "
            f"(more than {MAX_F_REL_STD:.0%}): add views with more tilt, nearer the image corners"
        )


def _calibrate(views: list[BoardView], size: tuple[int, int]):
    obj = [v.object_points for v in views]
    img = [v.image_points for v in views]
    rms, K, dist, rvecs, tvecs, std_int, _, _ = cv2.calibrateCameraExtended(obj, img, size, None, None)
    std = np.asarray(std_int, np.float64).ravel()
    with np.errstate(divide="ignore", invalid="ignore"):
        f_rel = float(max(std[0] / abs(K[0, 0]), std[1] / abs(K[1, 1]))) if std.size >= 2 else float("nan")
    errs = []
    for o, i, r, t in zip(obj, img, rvecs, tvecs):
        proj, _ = cv2.projectPoints(o, r, t, K, dist)
        errs.append(float(np.sqrt(np.mean(np.sum((proj.reshape(-1, 2) - i) ** 2, axis=1)))))
    return (rms, K, dist, rvecs, f_rel), errs


def iter_image_dir(folder: str | Path) -> tuple[int, Iterator[tuple[str, np.ndarray]]]:
    """Image files of a folder (sorted) as ``(name, BGR image)``; the count comes first."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    files = sorted(p for p in root.iterdir() if is_image_file(p))
    if not files:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {root}")

    def gen() -> Iterator[tuple[str, np.ndarray]]:
        for p in files:
            img = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if img is None:
                raise DataError(f"cannot read image {p}")
            yield p.name, img

    return len(files), gen()


def iter_video(path: str | Path, *, max_frames: int = 60) -> tuple[int, Iterator[tuple[str, np.ndarray]]]:
    """Up to ``max_frames`` frames spread evenly over a video, as ``(name, BGR image)``."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"video not found: {p}")
    cap = cv2.VideoCapture(str(p))
    if not cap.isOpened():
        raise DataError(f"cannot open video {p}")
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    if n <= 0:
        cap.release()
        raise DataError(f"video {p} reports no frames")
    step = max(1, n // max_frames)
    wanted = list(range(0, n, step))[:max_frames]

    def gen() -> Iterator[tuple[str, np.ndarray]]:
        try:
            idx = 0
            want = set(wanted)
            while True:
                ok = cap.grab()
                if not ok:
                    break
                if idx in want:
                    ok, frame = cap.retrieve()
                    if ok:
                        yield f"frame{idx:06d}", frame
                idx += 1
        finally:
            cap.release()

    return len(wanted), gen()


def load_camera(path: str | Path) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Read ``camera.json``: ``(K (3, 3), dist (k,), (width, height))``."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"camera file not found: {p} (write one with `patchlab calib camera`)")
    d = read_json_object(p, "camera file")
    try:
        K = np.asarray(d["camera_matrix"], np.float64)
        dist = np.asarray(d["dist_coeffs"], np.float64)
        size = (int(d["image_size"][0]), int(d["image_size"][1]))
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ConfigError(f"{p} is not a patchlab camera file: {exc!r}") from exc
    if K.shape != (3, 3) or not np.all(np.isfinite(K)) or not np.all(np.isfinite(dist)):
        raise ConfigError(f"{p} is not a patchlab camera file: camera_matrix must be 3x3 finite numbers")
    check_number(float(K[0, 0]), f"camera file {p}: fx", POSITIVE)
    check_number(float(K[1, 1]), f"camera file {p}: fy", POSITIVE)
    check_numbers(size, f"camera file {p}: image_size", COUNT)
    return K, dist, size
