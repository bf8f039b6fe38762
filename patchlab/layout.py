"""The layout file: where things are on a printed sheet, in millimetres.

``patchlab print`` writes one beside every PDF; ``patchlab calib`` and
``patchlab capture`` read it to find the patch, its markers and the chart swatches
in a photo. Coordinates are millimetres on the page, origin at the top-left corner,
x to the right, y down. Marker corners follow OpenCV's ArUco order: top-left,
top-right, bottom-right, bottom-left (clockwise as seen on the page).

This module is the contract between the stages; it lives in the core so every
stage can read it without importing another stage.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .utils import atomic_write_json, read_json_object

LAYOUT_VERSION = 1
#: OpenCV ArUco dictionary used for every patchlab marker unless a layout says otherwise.
DEFAULT_ARUCO_DICT = "DICT_4X4_50"

Point = tuple[float, float]


@dataclass
class MarkerSpec:
    """One ArUco marker: its id, the copy it belongs to and its corners (mm).

    ``copy`` is the patch copy the marker frames (0, 1, ...), or -1 for markers
    that belong to no patch (a colour chart's, a ChArUco board's).
    """

    id: int
    corners_mm: list[Point]
    copy: int = 0

    @property
    def size_mm(self) -> float:
        (x0, y0), (x1, y1) = self.corners_mm[0], self.corners_mm[1]
        return float(((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5)


@dataclass
class PatchSpec:
    """One printed copy of the patch: its rectangle on the page and its pixel grid."""

    x_mm: float
    y_mm: float
    width_mm: float
    height_mm: float
    pixels: tuple[int, int]  # (width, height) of the patch image
    copy: int = 0
    shape: str = "square"  # or "circle"

    @property
    def corners_mm(self) -> list[Point]:
        x, y, w, h = self.x_mm, self.y_mm, self.width_mm, self.height_mm
        return [(x, y), (x + w, y), (x + w, y + h), (x, y + h)]


@dataclass
class SwatchSpec:
    """One colour-chart swatch: rectangle (mm) and the sRGB it was printed with (0-255)."""

    name: str
    rect_mm: tuple[float, float, float, float]  # x, y, w, h
    srgb: tuple[int, int, int]


@dataclass
class Layout:
    """Everything a camera-side stage needs to know about a printed sheet."""

    kind: str  # "patch" | "chart" | "board"
    page_mm: tuple[float, float]  # width, height
    aruco_dict: str = DEFAULT_ARUCO_DICT
    markers: list[MarkerSpec] = field(default_factory=list)
    patches: list[PatchSpec] = field(default_factory=list)
    swatches: list[SwatchSpec] = field(default_factory=list)
    board: dict[str, Any] | None = None  # ChArUco parameters for kind == "board"
    meta: dict[str, Any] = field(default_factory=dict)  # run id, target class, date, source image, ...
    version: int = LAYOUT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def markers_of(self, copy: int) -> list[MarkerSpec]:
        return [m for m in self.markers if m.copy == copy]

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "layout") -> "Layout":
        try:
            if int(d.get("version", LAYOUT_VERSION)) > LAYOUT_VERSION:
                raise ConfigError(
                    f"{source}: layout version {d['version']} is newer than this patchlab "
                    f"understands ({LAYOUT_VERSION})"
                )
            return cls(
                kind=str(d["kind"]),
                page_mm=(float(d["page_mm"][0]), float(d["page_mm"][1])),
                aruco_dict=str(d.get("aruco_dict", DEFAULT_ARUCO_DICT)),
                markers=[
                    MarkerSpec(
                        id=int(m["id"]),
                        corners_mm=[(float(x), float(y)) for x, y in m["corners_mm"]],
                        copy=int(m.get("copy", 0)),
                    )
                    for m in d.get("markers", [])
                ],
                patches=[
                    PatchSpec(
                        x_mm=float(p["x_mm"]),
                        y_mm=float(p["y_mm"]),
                        width_mm=float(p["width_mm"]),
                        height_mm=float(p["height_mm"]),
                        pixels=(int(p["pixels"][0]), int(p["pixels"][1])),
                        copy=int(p.get("copy", 0)),
                        shape=str(p.get("shape", "square")),
                    )
                    for p in d.get("patches", [])
                ],
                swatches=[
                    SwatchSpec(
                        name=str(s["name"]),
                        rect_mm=tuple(float(v) for v in s["rect_mm"]),
                        srgb=tuple(int(v) for v in s["srgb"]),
                    )
                    for s in d.get("swatches", [])
                ],
                board=d.get("board"),
                meta=dict(d.get("meta", {})),
                version=int(d.get("version", LAYOUT_VERSION)),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ConfigError(f"{source} is not a valid patchlab layout: {exc!r}") from exc


def load_layout(path: str | Path) -> Layout:
    """Read a layout JSON file, with a clear error if it is missing or malformed."""
    d = read_json_object(path, "layout file", missing="it is written beside the PDF by `patchlab print`")
    return Layout.from_dict(d, source=str(path))
