"""ArUco fiducial markers: drawing and detection (OpenCV's aruco module).

Shared by the stages: ``print`` draws markers around patches and charts, ``calib``
finds charts and boards by them, ``capture`` finds printed patches and their pose.
Checked against OpenCV 5 (``cv2.aruco.ArucoDetector``, ``generateImageMarker``).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .errors import ConfigError
from .layout import DEFAULT_ARUCO_DICT


#: Short names accepted for the dictionaries patchlab documents (``--dictionary``).
DICTIONARY_ALIASES = {"aruco4x4": "DICT_4X4_50", "4x4": "DICT_4X4_50", "apriltag36h11": "DICT_APRILTAG_36h11",
                      "36h11": "DICT_APRILTAG_36h11"}


def dictionary_name(name: str) -> str:
    """The canonical OpenCV name of a dictionary (``aruco4x4`` -> ``DICT_4X4_50``)."""
    return DICTIONARY_ALIASES.get(name.strip().lower(), name.strip())


def get_dictionary(name: str = DEFAULT_ARUCO_DICT) -> "cv2.aruco.Dictionary":
    """An OpenCV predefined ArUco dictionary by name, e.g. ``DICT_4X4_50``,
    ``DICT_APRILTAG_36h11`` or an alias of :data:`DICTIONARY_ALIASES`."""
    key = dictionary_name(name).upper()
    if not key.startswith("DICT_"):
        key = "DICT_" + key
    if not hasattr(cv2.aruco, key):
        names = sorted(n for n in dir(cv2.aruco) if n.startswith("DICT_"))
        raise ConfigError(f"unknown ArUco dictionary {name!r}; choose one of {', '.join(names)}")
    return cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, key))


def marker_image(marker_id: int, side_px: int, dictionary: str = DEFAULT_ARUCO_DICT,
                 border_bits: int = 1) -> np.ndarray:
    """The marker as a ``(side_px, side_px)`` uint8 image (0 black, 255 white)."""
    d = get_dictionary(dictionary)
    n = d.bytesList.shape[0]
    if not 0 <= marker_id < n:
        raise ConfigError(f"marker id {marker_id} is outside {dictionary} (0..{n - 1})")
    return cv2.aruco.generateImageMarker(d, int(marker_id), int(side_px), borderBits=border_bits)


def charuco_board(spec: dict) -> "cv2.aruco.CharucoBoard":
    """The OpenCV ChArUco board a layout's ``board`` dict describes, in millimetres.

    ``spec`` keys: ``squares`` ``[cols, rows]``, ``square_mm``, ``marker_mm``,
    ``dictionary``, optional ``legacy_pattern`` (OpenCV < 4.6 layout for even rows).
    """
    try:
        sx, sy = (int(v) for v in spec["squares"])
        board = cv2.aruco.CharucoBoard((sx, sy), float(spec["square_mm"]), float(spec["marker_mm"]),
                                       get_dictionary(str(spec["dictionary"])))
        board.setLegacyPattern(bool(spec.get("legacy_pattern", False)))
    except (KeyError, TypeError, ValueError, cv2.error) as exc:
        raise ConfigError(f"invalid ChArUco board description {spec!r}: {exc}") from exc
    return board


def detector_parameters(*, small: bool = True) -> "cv2.aruco.DetectorParameters":
    """ArUco detector parameters for small, blurred, unevenly lit markers.

    Against OpenCV's defaults: more adaptive-threshold windows (3..43 px in steps of
    5, so one of them fits a marker whatever its size and the light around it),
    smaller markers accepted (perimeter 1.5 % of the image's larger side, about 2.5 px
    a side at 640 px, and 2 px from the border), looser polygon fit (blurred corners
    round off), bits read from the middle half of each cell (blur bleeds across cell
    edges) with more border errors tolerated, and sub-pixel corner refinement. The
    id check (Hamming distance within the dictionary) is unchanged, and callers keep
    only the ids they expect, so false positives stay rare.
    """
    p = cv2.aruco.DetectorParameters()
    p.cornerRefinementMethod = cv2.aruco.CORNER_REFINE_SUBPIX
    p.cornerRefinementWinSize = 3
    p.relativeCornerRefinmentWinSize = 0.3
    if small:
        p.adaptiveThreshWinSizeMin = 3
        p.adaptiveThreshWinSizeMax = 43
        p.adaptiveThreshWinSizeStep = 5
        p.minMarkerPerimeterRate = 0.015
        p.minDistanceToBorder = 2
        p.minCornerDistanceRate = 0.03
        p.polygonalApproxAccuracyRate = 0.06
        p.perspectiveRemovePixelPerCell = 6
        p.perspectiveRemoveIgnoredMarginPerCell = 0.25
        p.maxErroneousBitsInBorderRate = 0.45
        p.minOtsuStdDev = 3.0
    return p


def marker_bits(marker_id: int, dictionary: str = DEFAULT_ARUCO_DICT) -> np.ndarray:
    """The marker's cells including the 1-cell black border, 1 = white: ``(k+2, k+2)``."""
    d = get_dictionary(dictionary)
    k = d.markerSize
    img = cv2.aruco.generateImageMarker(d, int(marker_id), (k + 2) * 10, borderBits=1)
    return (img[5::10, 5::10] > 127).astype(np.uint8)


@dataclass(frozen=True)
class Detection:
    """One detected marker: id and corners in image pixels ``(4, 2)`` (TL, TR, BR, BL)."""

    id: int
    corners: np.ndarray

    @property
    def side_px(self) -> float:
        c = self.corners
        return float(np.mean([np.linalg.norm(c[i] - c[(i + 1) % 4]) for i in range(4)]))


def detect_markers(image: np.ndarray, dictionary: str = DEFAULT_ARUCO_DICT, *,
                   refine: bool = True) -> list[Detection]:
    """Find ArUco markers in a BGR or grey uint8 image; sorted by id."""
    gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    params = cv2.aruco.DetectorParameters()
    if refine:
        params.cornerRefinementMethod = cv2.aruco.CORNER_REFINE_SUBPIX
    det = cv2.aruco.ArucoDetector(get_dictionary(dictionary), params)
    corners, ids, _ = det.detectMarkers(gray)
    if ids is None:
        return []
    out = [Detection(int(i), np.asarray(c, dtype=np.float64).reshape(4, 2)) for c, i in zip(corners, ids.ravel())]
    return sorted(out, key=lambda d: d.id)


# --------------------------------------------------------------------------------------
# The marker frame around a printed patch
# --------------------------------------------------------------------------------------

#: Default marker side as a fraction of the patch's shorter side.
FRAME_MARKER_RATIO = 0.12
#: Marker ids used by patch copy ``c``: ``4c .. 4c+3`` (TL, TR, BR, BL).
MARKERS_PER_COPY = 4


@dataclass(frozen=True)
class FrameGeometry:
    """Where the four markers of a patch's frame sit, in *patch pixels*.

    The frame is a band of ``band_px`` patch pixels on every side of the patch,
    bounded outside by the cut line. Each corner of the band holds one marker of
    side ``marker_px`` (black border included) centred in a ``band_px`` square, so a
    white gap of ``quiet_px`` (one marker cell) separates it from the cut line and
    from the patch: a cut-out patch keeps its markers detectable whatever it is
    laid on. The band between the markers is paper white.

    Coordinates are continuous with the origin at the outer top-left corner of the
    frame (the cut line), x right, y down; pixel ``(i, j)`` covers ``[j, j+1) x
    [i, i+1)``. Multiply by millimetres per patch pixel to get the page geometry
    that ``patchlab print patch`` uses; that is the whole contract.
    """

    patch_px: tuple[int, int]  # (width, height) of the patch image
    band_px: int
    marker_px: float
    quiet_px: float
    marker_ids: tuple[int, int, int, int]  # TL, TR, BR, BL
    dictionary: str = DEFAULT_ARUCO_DICT

    @property
    def size_px(self) -> tuple[int, int]:
        """(width, height) of the whole cut-out: patch plus band on both sides."""
        return self.patch_px[0] + 2 * self.band_px, self.patch_px[1] + 2 * self.band_px

    @property
    def inner_box(self) -> tuple[int, int, int, int]:
        """The patch inside the frame: ``(x0, y0, x1, y1)``, end-exclusive."""
        b = self.band_px
        return b, b, b + self.patch_px[0], b + self.patch_px[1]

    def marker_origins(self) -> list[tuple[float, float]]:
        """Top-left corner of each marker (TL, TR, BR, BL order of ``marker_ids``)."""
        W, H = self.size_px
        q, m = self.quiet_px, self.marker_px
        return [(q, q), (W - q - m, q), (W - q - m, H - q - m), (q, H - q - m)]

    def marker_corners(self) -> list[np.ndarray]:
        """Corners ``(4, 2)`` of each marker in frame coordinates (TL, TR, BR, BL)."""
        m = self.marker_px
        return [np.array([[x, y], [x + m, y], [x + m, y + m], [x, y + m]], np.float64)
                for x, y in self.marker_origins()]


def copy_marker_ids(copy: int, dictionary: str = DEFAULT_ARUCO_DICT) -> tuple[int, int, int, int]:
    """The four marker ids (TL, TR, BR, BL) of patch copy ``copy``: ``4*copy .. 4*copy+3``."""
    n = get_dictionary(dictionary).bytesList.shape[0]
    ids = tuple(MARKERS_PER_COPY * copy + i for i in range(MARKERS_PER_COPY))
    if copy < 0 or ids[-1] >= n:
        raise ConfigError(f"patch copy {copy} needs marker ids {ids[0]}..{ids[-1]}, outside {dictionary} "
                          f"(0..{n - 1}): print fewer copies or choose a larger dictionary")
    return ids  # type: ignore[return-value]


def frame_geometry(patch_px: int | tuple[int, int], *, marker_ratio: float = FRAME_MARKER_RATIO,
                   copy: int = 0, dictionary: str = DEFAULT_ARUCO_DICT) -> FrameGeometry:
    """The marker frame of a patch of ``patch_px`` pixels (``int`` for square, or ``(w, h)``).

    Args:
        patch_px: patch size in pixels.
        marker_ratio: marker side over the patch's shorter side. The band is
            rounded to whole patch pixels, so the realised ratio is within half a
            patch pixel of this.
        copy: which printed copy (chooses the marker ids, see :func:`copy_marker_ids`).
        dictionary: ArUco dictionary name.
    """
    w, h = (patch_px, patch_px) if isinstance(patch_px, (int, np.integer)) else (int(patch_px[0]), int(patch_px[1]))
    if w < 1 or h < 1:
        raise ConfigError(f"patch size must be >= 1 pixel, got {w}x{h}")
    if not 0.0 < marker_ratio <= 1.0:
        raise ConfigError(f"marker_ratio must be in (0, 1], got {marker_ratio}")
    k = get_dictionary(dictionary).markerSize
    cells = k + 2  # marker cells including the black border
    band = max(1, int(round(marker_ratio * min(w, h) * (cells + 2) / cells)))
    return FrameGeometry(patch_px=(w, h), band_px=band, marker_px=band * cells / (cells + 2),
                         quiet_px=band / (cells + 2), marker_ids=copy_marker_ids(copy, dictionary),
                         dictionary=dictionary)


@dataclass(frozen=True)
class MarkerFrame:
    """The frame as the camera sees a cut-out patch, ready to composite.

    Attributes:
        image: ``(H, W, 3)`` RGB uint8: paper and markers, the patch area left white.
        mask: ``(H, W)`` bool, True on the frame (everything outside ``inner_box``).
        inner_box: ``(x0, y0, x1, y1)`` end-exclusive pixel box where the patch goes.
        geometry: the :class:`FrameGeometry` it was drawn from.
        scale: output pixels per patch pixel.
    """

    image: np.ndarray
    mask: np.ndarray
    inner_box: tuple[int, int, int, int]
    geometry: FrameGeometry
    scale: int


def marker_frame(patch_px: int | tuple[int, int], *, scale: int = 1, marker_ratio: float = FRAME_MARKER_RATIO,
                 copy: int = 0, dictionary: str = DEFAULT_ARUCO_DICT, paper: tuple[int, int, int] = (255, 255, 255),
                 supersample: int = 8) -> MarkerFrame:
    """Draw the marker frame of a ``patch_px`` patch, as printed by ``patchlab print patch``.

    The optimiser composites it around the patch (``--frame-markers``) so that EOT
    trains on what the camera will see of the cut-out. Marker edges that fall
    between pixels are area-averaged (drawn ``supersample`` times finer, then
    reduced), as a camera integrates them.

    Compositing, for a patch ``p`` of shape ``(h, w, 3)`` at ``scale=1``::

        f = marker_frame((w, h))
        x0, y0, x1, y1 = f.inner_box
        out = f.image.copy(); out[y0:y1, x0:x1] = p

    Args:
        patch_px: patch size in pixels (``int`` for square, or ``(w, h)``).
        scale: output pixels per patch pixel (upsample the patch by this much,
            nearest-neighbour, before pasting it into ``inner_box``).
        marker_ratio, copy, dictionary: see :func:`frame_geometry`.
        paper: the paper colour (RGB 0-255).
        supersample: sub-pixel rendering factor for the marker edges.

    Returns:
        :class:`MarkerFrame`.
    """
    if scale < 1 or supersample < 1:
        raise ConfigError(f"scale and supersample must be >= 1, got {scale}, {supersample}")
    g = frame_geometry(patch_px, marker_ratio=marker_ratio, copy=copy, dictionary=dictionary)
    W, H = g.size_px
    s = scale * supersample
    big = np.empty((H * s, W * s, 3), np.uint8)
    big[:] = paper
    for mid, (x, y) in zip(g.marker_ids, g.marker_origins()):
        bits = marker_bits(mid, dictionary)
        n = bits.shape[0]
        edges_x = np.round((x + np.arange(n + 1) * g.marker_px / n) * s).astype(int)
        edges_y = np.round((y + np.arange(n + 1) * g.marker_px / n) * s).astype(int)
        for i in range(n):
            for j in range(n):
                if not bits[i, j]:
                    big[edges_y[i]:edges_y[i + 1], edges_x[j]:edges_x[j + 1]] = 0
    image = cv2.resize(big, (W * scale, H * scale), interpolation=cv2.INTER_AREA) if supersample > 1 else big
    x0, y0, x1, y1 = (v * scale for v in g.inner_box)
    mask = np.ones(image.shape[:2], bool)
    mask[y0:y1, x0:x1] = False
    image[~mask] = paper
    return MarkerFrame(image=image, mask=mask, inner_box=(x0, y0, x1, y1), geometry=g, scale=scale)
