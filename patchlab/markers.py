"""ArUco fiducial markers: drawing and detection (OpenCV's aruco module).

Shared by the stages: ``print`` draws markers around patches and charts, ``calib``
finds charts and boards by them, ``capture`` finds printed patches and their pose.
Checked against OpenCV 5 (``cv2.aruco.ArucoDetector``, ``generateImageMarker``).
"""

from __future__ import annotations

from dataclasses import dataclass

import math
import warnings

import cv2
import numpy as np

from .errors import ConfigError
from .layout import DEFAULT_ARUCO_DICT


#: Short names accepted for the dictionaries patchlab documents (``--dictionary``).
DICTIONARY_ALIASES = {
    "aruco4x4": "DICT_4X4_50",
    "4x4": "DICT_4X4_50",
    "apriltag36h11": "DICT_APRILTAG_36h11",
    "36h11": "DICT_APRILTAG_36h11",
}


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


def marker_image(
    marker_id: int, side_px: int, dictionary: str = DEFAULT_ARUCO_DICT, border_bits: int = 1
) -> np.ndarray:
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
        board = cv2.aruco.CharucoBoard(
            (sx, sy), float(spec["square_mm"]), float(spec["marker_mm"]), get_dictionary(str(spec["dictionary"]))
        )
        board.setLegacyPattern(bool(spec.get("legacy_pattern", False)))
    except (KeyError, TypeError, ValueError, cv2.error) as exc:
        raise ConfigError(f"invalid ChArUco board description {spec!r}: {exc}") from exc
    return board


def detector_parameters(*, small: bool = True) -> "cv2.aruco.DetectorParameters":
    """ArUco detector parameters for small, blurred, unevenly lit markers.

    Against OpenCV's defaults (measured on simulated films with blur, glare and
    exposure swings; each change kept only if it found more markers for its cost):
    one more adaptive-threshold window (3..33 px in steps of 10, so a window fits
    both a 10 px and a 30 px marker whatever the light around it), smaller markers
    accepted (perimeter 1.5 % of the image's larger side, about 2.5 px a side at
    640 px), a slightly looser polygon fit (blurred corners round off), bits read
    from the middle half of each cell (blur bleeds across cell edges), more
    border errors tolerated, and sub-pixel corner refinement. The id check (Hamming
    distance within the dictionary) is unchanged, and callers keep only the ids they
    expect and drop markers that disagree with the others, so false positives stay rare.
    """
    p = cv2.aruco.DetectorParameters()
    p.cornerRefinementMethod = cv2.aruco.CORNER_REFINE_SUBPIX
    p.cornerRefinementWinSize = 3
    p.relativeCornerRefinmentWinSize = 0.3
    if small:
        p.adaptiveThreshWinSizeMin = 3
        p.adaptiveThreshWinSizeMax = 33
        p.adaptiveThreshWinSizeStep = 10
        p.minMarkerPerimeterRate = 0.015
        p.minDistanceToBorder = 2
        p.polygonalApproxAccuracyRate = 0.045
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


def detect_markers(image: np.ndarray, dictionary: str = DEFAULT_ARUCO_DICT, *, refine: bool = True) -> list[Detection]:
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
        return [
            np.array([[x, y], [x + m, y], [x + m, y + m], [x, y + m]], np.float64) for x, y in self.marker_origins()
        ]


def copy_marker_ids(copy: int, dictionary: str = DEFAULT_ARUCO_DICT) -> tuple[int, int, int, int]:
    """The four marker ids (TL, TR, BR, BL) of patch copy ``copy``: ``4*copy .. 4*copy+3``."""
    n = get_dictionary(dictionary).bytesList.shape[0]
    ids = tuple(MARKERS_PER_COPY * copy + i for i in range(MARKERS_PER_COPY))
    if copy < 0 or ids[-1] >= n:
        raise ConfigError(
            f"patch copy {copy} needs marker ids {ids[0]}..{ids[-1]}, outside {dictionary} "
            f"(0..{n - 1}): print fewer copies or choose a larger dictionary"
        )
    return ids  # type: ignore[return-value]


def frame_geometry(
    patch_px: int | tuple[int, int],
    *,
    marker_ratio: float = FRAME_MARKER_RATIO,
    copy: int = 0,
    dictionary: str = DEFAULT_ARUCO_DICT,
) -> FrameGeometry:
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
    return FrameGeometry(
        patch_px=(w, h),
        band_px=band,
        marker_px=band * cells / (cells + 2),
        quiet_px=band / (cells + 2),
        marker_ids=copy_marker_ids(copy, dictionary),
        dictionary=dictionary,
    )


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


def marker_frame(
    patch_px: int | tuple[int, int],
    *,
    scale: int = 1,
    marker_ratio: float = FRAME_MARKER_RATIO,
    copy: int = 0,
    dictionary: str = DEFAULT_ARUCO_DICT,
    paper: tuple[int, int, int] = (255, 255, 255),
    supersample: int = 8,
) -> MarkerFrame:
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
                    big[edges_y[i] : edges_y[i + 1], edges_x[j] : edges_x[j + 1]] = 0
    image = cv2.resize(big, (W * scale, H * scale), interpolation=cv2.INTER_AREA) if supersample > 1 else big
    x0, y0, x1, y1 = (v * scale for v in g.inner_box)
    mask = np.ones(image.shape[:2], bool)
    mask[y0:y1, x0:x1] = False
    image[~mask] = paper
    return MarkerFrame(image=image, mask=mask, inner_box=(x0, y0, x1, y1), geometry=g, scale=scale)


# --------------------------------------------------------------------------------------
# The carrier card: the patch in the middle of a rigid card with four large markers
# --------------------------------------------------------------------------------------

#: Carrier card sizes (short side, long side) in mm: ISO A6, A5, and an ID-1 (credit) card.
CARRIERS: dict[str, tuple[float, float]] = {"A6": (105.0, 148.0), "A5": (148.0, 210.0), "CARD": (53.98, 85.6)}
#: Distance the markers are sized for when none is asked (m), and the documented
#: default camera: a 640 px wide webcam with a 60 degree horizontal field of view.
DEFAULT_MAX_DISTANCE_M = 2.0
DEFAULT_CAMERA_WIDTH_PX, DEFAULT_CAMERA_HFOV_DEG = 640, 60.0
#: Image pixels per marker cell (border included) a marker needs to be decoded.
MIN_PX_PER_CELL = 2.0
#: Smallest quiet zone (mm) between a marker and the card edge or the patch.
MIN_QUIET_MM = 2.0


def default_focal_px(width_px: int = DEFAULT_CAMERA_WIDTH_PX, hfov_deg: float = DEFAULT_CAMERA_HFOV_DEG) -> float:
    """Focal length in pixels of a pinhole camera ``width_px`` wide with ``hfov_deg`` field of view."""
    return (width_px / 2) / math.tan(math.radians(hfov_deg) / 2)


@dataclass(frozen=True)
class CarrierGeometry:
    """A carrier card in card millimetres (origin at its top-left corner, x right, y down).

    The patch is centred; a marker of side ``marker_mm`` sits in each corner, a
    ``quiet_mm`` white margin from the card edge and from the patch. ``reach_m`` is
    the farthest distance at which the markers keep :data:`MIN_PX_PER_CELL` pixels
    per cell for a camera of focal length ``focal_px``.
    """

    name: str
    card_mm: tuple[float, float]  # (width, height) as printed (orientation chosen for the patch)
    patch_mm: tuple[float, float]
    marker_mm: float
    quiet_mm: float
    marker_ids: tuple[int, int, int, int]  # TL, TR, BR, BL
    dictionary: str
    max_distance_m: float  # asked for
    reach_m: float  # achieved
    focal_px: float

    @property
    def patch_box(self) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)`` of the patch on the card (mm)."""
        (W, H), (w, h) = self.card_mm, self.patch_mm
        x0, y0 = (W - w) / 2, (H - h) / 2
        return x0, y0, x0 + w, y0 + h

    def marker_origins(self) -> list[tuple[float, float]]:
        W, H = self.card_mm
        q, m = self.quiet_mm, self.marker_mm
        return [(q, q), (W - q - m, q), (W - q - m, H - q - m), (q, H - q - m)]

    def marker_corners(self) -> list[np.ndarray]:
        """Corners ``(4, 2)`` of each marker in card mm (TL, TR, BR, BL)."""
        m = self.marker_mm
        return [
            np.array([[x, y], [x + m, y], [x + m, y + m], [x, y + m]], np.float64) for x, y in self.marker_origins()
        ]

    @classmethod
    def from_dict(cls, d: dict) -> "CarrierGeometry":
        """Inverse of :meth:`to_dict` (a layout's ``meta["carrier"]``)."""
        try:
            return cls(
                name=str(d["name"]),
                card_mm=(float(d["card_mm"][0]), float(d["card_mm"][1])),
                patch_mm=(float(d["patch_mm"][0]), float(d["patch_mm"][1])),
                marker_mm=float(d["marker_mm"]),
                quiet_mm=float(d["quiet_mm"]),
                marker_ids=tuple(int(i) for i in d["marker_ids"]),  # type: ignore[arg-type]
                dictionary=str(d["dictionary"]),
                max_distance_m=float(d["max_distance_m"]),
                reach_m=float(d["reach_m"]),
                focal_px=float(d["focal_px"]),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ConfigError(f"not a carrier description: {exc!r}") from exc

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "card_mm": list(self.card_mm),
            "patch_mm": list(self.patch_mm),
            "marker_mm": self.marker_mm,
            "quiet_mm": self.quiet_mm,
            "marker_ids": list(self.marker_ids),
            "dictionary": self.dictionary,
            "max_distance_m": self.max_distance_m,
            "reach_m": self.reach_m,
            "focal_px": self.focal_px,
            "min_px_per_cell": MIN_PX_PER_CELL,
        }


def _marker_room(card: tuple[float, float], patch: tuple[float, float], cells: int) -> float:
    """Largest marker side (mm) that fits in the card's corners around a centred patch."""
    (W, H), (w, h) = card, patch
    if w > W or h > H:
        return 0.0
    px0, py0 = (W - w) / 2, (H - h) / 2

    def fits(m: float) -> bool:
        q = max(MIN_QUIET_MM, m / cells)
        clear = q + m + q <= max(px0, py0)  # beside or above the patch, with a quiet zone both sides
        apart = 2 * (q + m) + q <= min(W, H) or 2 * (q + m) + q <= max(W, H)
        return clear and 2 * (q + m) + q <= W and 2 * (q + m) + q <= H and apart

    lo, hi = 0.0, min(W, H)
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def carrier_geometry(
    name: str,
    patch_mm: float | tuple[float, float],
    *,
    max_distance_m: float | None = None,
    focal_px: float | None = None,
    copy: int = 0,
    dictionary: str = DEFAULT_ARUCO_DICT,
) -> CarrierGeometry:
    """Lay out a carrier card: the card's orientation, the marker side, its reach.

    The marker side is what the farthest distance needs --
    ``cells * MIN_PX_PER_CELL * distance / focal_px`` -- capped by the room left in
    the card's corners; when capped, a warning says how far the markers will reach
    and that a larger carrier reaches farther.

    Args:
        name: one of :data:`CARRIERS` (case-insensitive).
        patch_mm: patch width (square) or ``(width, height)`` in mm.
        max_distance_m: farthest camera distance to plan for (default
            :data:`DEFAULT_MAX_DISTANCE_M`).
        focal_px: the camera's focal length in pixels (``camera.json``'s ``K[0, 0]``;
            default :func:`default_focal_px`, a 640 px, 60 degree webcam).
        copy, dictionary: marker ids and dictionary (see :func:`copy_marker_ids`).

    Raises:
        ConfigError: unknown carrier, or the patch leaves no room for markers.
    """
    key = name.strip().upper()
    if key not in CARRIERS:
        raise ConfigError(f"unknown carrier {name!r}; choose one of {', '.join(CARRIERS)}")
    pw, ph = (float(patch_mm), float(patch_mm)) if isinstance(patch_mm, (int, float)) else map(float, patch_mm)
    d_m = DEFAULT_MAX_DISTANCE_M if max_distance_m is None else float(max_distance_m)
    f = default_focal_px() if focal_px is None else float(focal_px)
    if d_m <= 0 or f <= 0:
        raise ConfigError(f"--max-distance-m and the focal length must be > 0, got {d_m}, {f}")
    cells = get_dictionary(dictionary).markerSize + 2
    short, long_ = CARRIERS[key]
    options = [(short, long_), (long_, short)]
    card = max(options, key=lambda c: _marker_room(c, (pw, ph), cells))
    room = _marker_room(card, (pw, ph), cells)
    min_marker = cells * 1.0  # 1 mm per cell: below that a printer cannot draw the cells cleanly
    if room < min_marker:
        raise ConfigError(
            f"a {pw:g} x {ph:g} mm patch leaves no room for markers on a {key} carrier "
            f"({card[0]:g} x {card[1]:g} mm): choose a larger --carrier or a smaller --size-mm"
        )
    need = cells * MIN_PX_PER_CELL * d_m * 1000.0 / f
    marker = max(min(need, room), min_marker)
    reach = marker * f / (cells * MIN_PX_PER_CELL) / 1000.0
    if need > room:
        bigger = [
            k
            for k, (a, b) in CARRIERS.items()
            if _marker_room((b, a), (pw, ph), cells) > room or _marker_room((a, b), (pw, ph), cells) > room
        ]
        warnings.warn(
            f"the {key} carrier has room for {room:.1f} mm markers: they decode to {reach:.2f} m, not "
            f"{d_m:g} m (they would need {need:.1f} mm)"
            + (f"; --carrier {bigger[0]} reaches farther" if bigger else ""),
            stacklevel=2,
        )
    return CarrierGeometry(
        name=key,
        card_mm=card,
        patch_mm=(pw, ph),
        marker_mm=float(marker),
        quiet_mm=max(MIN_QUIET_MM, marker / cells),
        marker_ids=copy_marker_ids(copy, dictionary),
        dictionary=dictionary,
        max_distance_m=d_m,
        reach_m=float(reach),
        focal_px=f,
    )


def carrier_frame(
    geometry: CarrierGeometry,
    patch_px: int | tuple[int, int],
    *,
    scale: int = 1,
    paper: tuple[int, int, int] = (255, 255, 255),
    supersample: int = 4,
) -> MarkerFrame:
    """Draw a carrier card around a ``patch_px`` patch, as ``print patch --carrier`` prints it.

    The card is drawn on the patch's pixel grid (``patch_px`` pixels across the
    patch's width), the patch area left white at a whole-pixel ``inner_box``; the
    optimiser composites it around the patch exactly as :func:`marker_frame` (the
    card's margins are rounded to whole patch pixels, within half a pixel of print).

    Returns:
        :class:`MarkerFrame` (its ``geometry`` is the :class:`CarrierGeometry`).
    """
    if scale < 1 or supersample < 1:
        raise ConfigError(f"scale and supersample must be >= 1, got {scale}, {supersample}")
    w, h = (patch_px, patch_px) if isinstance(patch_px, (int, np.integer)) else (int(patch_px[0]), int(patch_px[1]))
    ppm = w / geometry.patch_mm[0]  # patch pixels per mm
    W, H = (int(round(v * ppm)) for v in geometry.card_mm)
    x0, y0 = (W - w) // 2, (H - h) // 2
    s = scale * supersample
    big = np.empty((H * s, W * s, 3), np.uint8)
    big[:] = paper
    for mid, (mx, my) in zip(geometry.marker_ids, geometry.marker_origins()):
        bits = marker_bits(mid, geometry.dictionary)
        n = bits.shape[0]
        step = geometry.marker_mm / n
        edges_x = np.round((mx + np.arange(n + 1) * step) * ppm * s).astype(int)
        edges_y = np.round((my + np.arange(n + 1) * step) * ppm * s).astype(int)
        for i in range(n):
            for j in range(n):
                if not bits[i, j]:
                    big[edges_y[i] : edges_y[i + 1], edges_x[j] : edges_x[j + 1]] = 0
    image = cv2.resize(big, (W * scale, H * scale), interpolation=cv2.INTER_AREA) if supersample > 1 else big
    bx0, by0, bx1, by1 = x0 * scale, y0 * scale, (x0 + w) * scale, (y0 + h) * scale
    mask = np.ones(image.shape[:2], bool)
    mask[by0:by1, bx0:bx1] = False
    image[~mask] = paper
    return MarkerFrame(
        image=image,
        mask=mask,
        inner_box=(bx0, by0, bx1, by1),
        geometry=geometry,  # type: ignore[arg-type]
        scale=scale,
    )
