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


def get_dictionary(name: str = DEFAULT_ARUCO_DICT) -> "cv2.aruco.Dictionary":
    """An OpenCV predefined ArUco dictionary by name, e.g. ``DICT_4X4_50``."""
    key = name.upper()
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
