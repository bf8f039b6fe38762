"""``patchlab print``: exact-size PDFs of patches, colour charts and ChArUco boards."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..layout import DEFAULT_ARUCO_DICT
from ..markers import FRAME_MARKER_RATIO
from ._common import console

app = typer.Typer(
    help="Turn a patch into paper: exact-size PDFs with cut marks and ArUco markers, colour charts, "
    "ChArUco boards; each with a layout JSON beside it.",
    no_args_is_help=True,
)

PAPER_HELP = "Paper: a4, letter or a3 (portrait)."


def _written(pdf: Path, layout: Path) -> None:
    console.print(f"wrote {pdf}")
    console.print(f"wrote {layout}")


@app.command("patch")
def patch_cmd(
    source: Annotated[Path, typer.Argument(help="Optimiser run folder (patch.png + run.json) or a patch image.")],
    size_mm: Annotated[float, typer.Option("--size-mm", help="Printed patch width in mm (height by aspect ratio).")],
    out: Annotated[Path, typer.Option("--out", help="PDF to write; its layout goes beside it (X.layout.json).")],
    paper: Annotated[str, typer.Option(help=PAPER_HELP)] = "a4",
    markers: Annotated[
        bool, typer.Option("--markers/--no-markers", help="Four ArUco markers in a thin frame inside the cut line.")
    ] = True,
    chart: Annotated[
        bool, typer.Option("--chart/--no-chart", help="Add a colour-chart strip under the patches.")
    ] = False,
    copies: Annotated[int, typer.Option(help="Copies on the page, each with its own marker ids.")] = 1,
    marker_ratio: Annotated[
        float, typer.Option(help="Marker side over the patch side (the optimiser's --frame-markers must use the same).")
    ] = FRAME_MARKER_RATIO,
    aruco_dict: Annotated[
        str,
        typer.Option(
            "--aruco-dict",
            "--dictionary",
            help="Marker dictionary: an OpenCV name (DICT_4X4_50, DICT_APRILTAG_36h11) or aruco4x4 / apriltag36h11.",
        ),
    ] = DEFAULT_ARUCO_DICT,
    carrier: Annotated[
        Optional[str],
        typer.Option(
            help="Print each copy on a rigid carrier card (A6, A5 or CARD) "
            "with four large corner markers, for filming at a distance.",
            show_default=False,
        ),
    ] = None,
    max_distance_m: Annotated[
        Optional[float],
        typer.Option(
            "--max-distance-m",
            help="With --carrier: the farthest camera distance the markers must be decodable at (default 2 m).",
            show_default=False,
        ),
    ] = None,
    camera: Annotated[
        Optional[Path],
        typer.Option(
            help="With --carrier: camera.json whose focal length sizes the "
            "markers (default: a 640 px wide, 60 degree webcam).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Print a patch at exactly --size-mm, pixel for pixel, with markers, cut marks and a caption."""
    import warnings

    from ..print.sheets import check_pdf_path, load_patch_source, make_patch_pdf

    check_pdf_path(out)
    src = load_patch_source(source)
    focal = None
    if camera is not None:
        from ..calib.camera import load_camera

        focal = float(load_camera(camera)[0][0, 0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = make_patch_pdf(
            src,
            size_mm=size_mm,
            paper=paper,
            copies=copies,
            markers=markers,
            chart=chart,
            marker_ratio=marker_ratio,
            dictionary=aruco_dict,
            carrier=carrier,
            max_distance_m=max_distance_m,
            focal_px=focal,
        )
    for w in caught:
        console.print(f"warning: {w.message}")
    pdf, lay = res.write(out)
    m = res.layout.meta
    frame, card = m["frame"], m.get("carrier")
    console.print(
        f"{copies} cop{'y' if copies == 1 else 'ies'} of {src.run_id} ({m['patch_px'][0]}x{m['patch_px'][1]} px)"
        f" at {size_mm:g} mm = {m['mm_per_px']:.3f} mm per pixel"
        + (f"; marker frame {frame['band_mm']:.1f} mm, markers {frame['marker_mm']:.1f} mm" if frame else "")
        + (
            f"; {card['name']} carrier {card['card_mm'][0]:g} x {card['card_mm'][1]:g} mm, markers "
            f"{card['marker_mm']:.1f} mm, decodable to {card['reach_m']:.2f} m"
            if card
            else ""
        )
    )
    _written(pdf, lay)


@app.command("chart")
def chart_cmd(
    out: Annotated[Path, typer.Option("--out", help="PDF to write; its layout goes beside it (X.layout.json).")],
    paper: Annotated[str, typer.Option(help=PAPER_HELP)] = "a4",
    swatches: Annotated[int, typer.Option(help="Number of swatches (greys, saturated, skin, RGB cube, random).")] = 150,
    swatch_mm: Annotated[float, typer.Option("--swatch-mm", help="Swatch side in mm.")] = 12.0,
    seed: Annotated[int, typer.Option(help="Seed of the random fill colours.")] = 0,
    aruco_dict: Annotated[str, typer.Option("--aruco-dict", help="OpenCV ArUco dictionary.")] = DEFAULT_ARUCO_DICT,
) -> None:
    """Print a colour chart (grey ramp, saturated and skin-like swatches, four markers)."""
    from ..print.sheets import check_pdf_path, make_chart_pdf

    check_pdf_path(out)
    res = make_chart_pdf(paper=paper, n_swatches=swatches, seed=seed, swatch_mm=swatch_mm, dictionary=aruco_dict)
    console.print(f"colour chart: {len(res.layout.swatches)} swatches of {swatch_mm:g} mm")
    _written(*res.write(out))


@app.command("board")
def board_cmd(
    out: Annotated[Path, typer.Option("--out", help="PDF to write; its layout goes beside it (X.layout.json).")],
    paper: Annotated[str, typer.Option(help=PAPER_HELP)] = "a4",
    squares: Annotated[
        Optional[str], typer.Option(help="Squares as COLSxROWS, e.g. 7x10 (default: fill the paper).")
    ] = None,
    square_mm: Annotated[float, typer.Option("--square-mm", help="Chessboard square side in mm.")] = 25.0,
    marker_ratio: Annotated[float, typer.Option(help="Marker side over the square side.")] = 0.75,
    aruco_dict: Annotated[str, typer.Option("--aruco-dict", help="OpenCV ArUco dictionary.")] = "DICT_5X5_100",
) -> None:
    """Print a ChArUco board for `patchlab calib camera`."""
    from ..errors import ConfigError
    from ..print.sheets import check_pdf_path, make_board_pdf

    check_pdf_path(out)
    sq = None
    if squares is not None:
        try:
            a, b = squares.lower().split("x")
            sq = (int(a), int(b))
        except ValueError:
            raise ConfigError(f"--squares must look like 7x10, got {squares!r}") from None
    res = make_board_pdf(paper=paper, squares=sq, square_mm=square_mm, marker_ratio=marker_ratio, dictionary=aruco_dict)
    b = res.layout.board
    console.print(
        f"ChArUco board {b['squares'][0]}x{b['squares'][1]} squares of {b['square_mm']:g} mm, "
        f"markers {b['marker_mm']:g} mm ({b['dictionary']})"
    )
    _written(*res.write(out))


@app.command("check")
def check_cmd(
    image: Annotated[Path, typer.Argument(help="A flatbed scan of the printed sheet, or the PDF itself.")],
    layout: Annotated[Optional[Path], typer.Option(help="The sheet's layout JSON (default: beside a PDF).")] = None,
    dpi: Annotated[float, typer.Option(help="Scan resolution, or the resolution to render a PDF at.")] = 600.0,
    patch: Annotated[
        Optional[Path], typer.Option(help="Patch image to compare cells with (default: the layout's source).")
    ] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the measurements as JSON here.")] = None,
) -> None:
    """Measure each printed patch copy: size against the request, marker size, PSNR of its cells."""
    import cv2

    from ..errors import ConfigError, DataError
    from ..layout import load_layout
    from ..print.sheets import layout_path_for, load_patch_source
    from ..print.verify import measure_patch, render_pdf
    from ..utils import atomic_write_json

    is_pdf = image.suffix.lower() == ".pdf"
    if not image.is_file():
        raise ConfigError(f"image not found: {image}")
    if layout is None:
        if not is_pdf:
            raise ConfigError("--layout is required for a scan (it is the .layout.json written beside the PDF)")
        layout = layout_path_for(image)
    lay = load_layout(layout)
    if lay.kind != "patch" or not lay.patches:
        raise ConfigError(f"{layout} is a {lay.kind} layout: `print check` measures patch sheets")
    if is_pdf:
        rgb = render_pdf(image, dpi)
    else:
        bgr = cv2.imread(str(image), cv2.IMREAD_COLOR)
        if bgr is None:
            raise DataError(f"cannot read image {image}")
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    ref = None
    src_path = patch or (Path(lay.meta["source"]) if lay.meta.get("source") else None)
    if src_path is not None and src_path.exists():
        ref = load_patch_source(src_path).image
    results = [measure_patch(rgb, lay, dpi / 25.4, p.copy, patch=ref) for p in lay.patches]
    table = Table("copy", "width mm", "height mm", "error mm", "marker error mm", "offset mm", "PSNR dB")
    for r in results:
        table.add_row(
            str(r.copy),
            f"{r.width_mm:.3f}",
            f"{r.height_mm:.3f}",
            f"{r.width_error_mm:+.3f} / {r.height_error_mm:+.3f}",
            f"{r.marker_error_mm:+.3f}",
            f"{r.offset_mm:.3f}",
            "-" if r.psnr_db is None else f"{r.psnr_db:.1f}",
        )
    console.print(table)
    if json_path is not None:
        atomic_write_json(
            json_path,
            {"image": str(image), "layout": str(layout), "dpi": dpi, "copies": [r.to_dict() for r in results]},
        )
        console.print(f"wrote {json_path}")
