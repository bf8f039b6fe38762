"""``patchlab calib``: camera intrinsics and printer-to-camera colour."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._common import console, progress_bar

app = typer.Typer(
    help="Measure the world: camera intrinsics from a ChArUco board, printer-to-camera colour "
    "from a photographed chart.",
    no_args_is_help=True,
)

#: Libraries whose versions a calibration records.
CALIB_VERSION_MODULES = ("cv2", "numpy", "torch")


OVERWRITE_HELP = "Replace outputs that already exist."


def _check_json_out(out: Path, overwrite: bool = True) -> None:
    from ..checks import check_output_file, check_overwrite

    check_output_file(out, suffixes=(".json",))
    check_overwrite(out, overwrite)


@app.command("camera")
def camera_cmd(
    board: Annotated[Path, typer.Option("--board", help="The board's layout JSON (from `patchlab print board`).")],
    out: Annotated[Path, typer.Option("--out", help="camera.json to write.")],
    images: Annotated[Optional[Path], typer.Option("--images", help="Folder of photos of the board.")] = None,
    video: Annotated[Optional[Path], typer.Option("--video", help="A video of the board.")] = None,
    max_frames: Annotated[int, typer.Option(help="Frames taken from --video, spread evenly.")] = 60,
    min_views: Annotated[int, typer.Option(help="Fewest usable views to accept a calibration.")] = 5,
    min_corners: Annotated[int, typer.Option(help="Fewest ChArUco corners for a view to count.")] = 8,
    overwrite: Annotated[bool, typer.Option(help=OVERWRITE_HELP)] = False,
) -> None:
    """Camera intrinsics and distortion from ChArUco board views (RMS reprojection error reported)."""
    from ..calib.camera import calibrate_camera, iter_image_dir, iter_video
    from ..errors import ConfigError
    from ..layout import load_layout
    from ..utils import atomic_write_json, now_iso, versions

    _check_json_out(out, overwrite)
    if (images is None) == (video is None):
        raise ConfigError("pass exactly one of --images DIR or --video FILE")
    layout = load_layout(board)
    from ..calib.camera import board_from_layout

    board_from_layout(layout)  # a wrong layout kind fails before any image is read
    total, frames = iter_image_dir(images) if images is not None else iter_video(video, max_frames=max_frames)
    with progress_bar("finding the board", total) as adv:
        cal = calibrate_camera(frames, layout, min_views=min_views, min_corners=min_corners, progress=adv)
    record = {
        "format": "patchlab.camera/1",
        **cal.to_dict(),
        "board": str(board),
        "source": str(images if images is not None else video),
        "created": now_iso(),
        "versions": versions(CALIB_VERSION_MODULES),
    }
    atomic_write_json(out, record)
    console.print(f"{cal.views_used} of {cal.views_total} views used; RMS reprojection error {cal.rms_px:.3f} px")
    console.print(
        f"fx {cal.fx:.1f}  fy {cal.fy:.1f}  cx {cal.cx:.1f}  cy {cal.cy:.1f}  "
        f"(image {cal.image_size[0]}x{cal.image_size[1]}, FOV {cal.fov_deg[0]:.1f} x {cal.fov_deg[1]:.1f} deg)"
    )
    if cal.dropped_outliers:
        console.print(f"dropped outlier views: {', '.join(cal.dropped_outliers)}")
    console.print(f"wrote {out}")


@app.command("color")
def color_cmd(
    photo: Annotated[Path, typer.Option("--photo", help="Photo of the printed chart (whole chart in view).")],
    chart: Annotated[
        Path,
        typer.Option("--chart", help="The chart's layout JSON (chart sheet, or a patch sheet printed with --chart)."),
    ],
    out: Annotated[Path, typer.Option("--out", help="color.json to write (transform, scores, palette).")],
    palette: Annotated[
        Optional[Path],
        typer.Option(help="Palette file to write (default: beside --out, X.palette.txt; lines 'r g b', 0-255)."),
    ] = None,
    holdout: Annotated[float, typer.Option(help="Fraction of swatches held out to score the fit.")] = 0.25,
    seed: Annotated[int, typer.Option(help="Seed of the held-out split.")] = 0,
    knots: Annotated[int, typer.Option(help="Tone-curve segments per channel.")] = 8,
    flat_field: Annotated[
        bool, typer.Option("--flat-field/--no-flat-field", help="Correct uneven light with the paper between swatches.")
    ] = True,
    overwrite: Annotated[bool, typer.Option(help=OVERWRITE_HELP)] = False,
) -> None:
    """Fit the printer-to-camera colour transform and write the printable palette."""
    import cv2

    from ..calib.color import palette_path_for, palette_text
    from ..calib.colorcal import calibrate_color
    from ..errors import ConfigError, DataError
    from ..layout import load_layout
    from ..checks import check_output_file, check_overwrite
    from ..utils import atomic_write_json, atomic_write_text, now_iso, versions

    _check_json_out(out, overwrite)
    if knots < 1:
        raise ConfigError(f"--knots must be >= 1, got {knots}")
    pal_path = palette or palette_path_for(out)
    check_output_file(pal_path, option="--palette")
    check_overwrite(pal_path, overwrite)
    layout = load_layout(chart)
    if not photo.is_file():
        raise ConfigError(f"photo not found: {photo}")
    bgr = cv2.imread(str(photo), cv2.IMREAD_COLOR)
    if bgr is None:
        raise DataError(f"cannot read image {photo}")
    cal = calibrate_color(
        cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB),
        layout,
        holdout=holdout,
        seed=seed,
        knots=knots,
        flat_field=flat_field,
        source=str(photo),
    )
    record = cal.to_dict()
    record.update(
        palette_file=str(pal_path),
        photo=str(photo),
        layout=str(chart),
        created=now_iso(),
        versions=versions(CALIB_VERSION_MODULES),
    )
    text = palette_text(cal.palette, [f"from {photo} and {chart}: {len(cal.palette)} swatches"])
    atomic_write_text(pal_path, text)
    atomic_write_json(out, record)
    b, a = cal.heldout_before, cal.heldout_after
    console.print(
        f"chart found: markers {cal.reading.markers_found}, {len(cal.reading.names)} swatches "
        f"({cal.train.size} fit, {cal.test.size} held out), flat field "
        + ("on" if cal.reading.flat_field.get("used") else "off")
    )
    console.print(
        f"held-out CIEDE2000  no calibration: mean {b['mean']:.2f}, max {b['max']:.2f}   "
        f"calibrated: mean {a['mean']:.2f}, max {a['max']:.2f}   ({cal.improvement:.1f}x better)"
    )
    console.print(f"wrote {out}")
    console.print(f"wrote {pal_path}")
