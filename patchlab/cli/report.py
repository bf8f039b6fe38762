"""``patchlab report``: HTML/PDF reports of runs and captures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._common import command_line, console


def report_cmd(
    ctx: typer.Context,
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="RUN_DIR (optimiser run folder), then any CAPTURE_DIRs of its patch (from `patchlab capture run`)."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="report.html (self-contained) or report.pdf.")],
    matrix: Annotated[Optional[Path], typer.Option(help="matrix.json from `patchlab eval matrix`.")] = None,
    control: Annotated[
        Optional[list[Path]], typer.Option("--control", help="Control capture for each CAPTURE_DIR, in order (repeat).")
    ] = None,
    n_bins: Annotated[int, typer.Option(help="Bins per condition in the physical sections.")] = 5,
    compare: Annotated[
        Optional[list[Path]],
        typer.Option("--compare", help="Another run folder whose patch is shown side by side (repeat)."),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a report already at --out.")] = False,
) -> None:
    """A report of a run: patch, loss curves, digital transfer, transfer matrix, physical tSuc by condition with
    intervals, sample frames, and the commands, configs and versions behind every figure."""
    from ..checks import check_output_file, check_overwrite
    from ..eval.report import build_report, check_report_path, write_report

    check_report_path(out)
    check_output_file(out)
    run_dir, captures = paths[0], paths[1:]
    rep = build_report(
        run_dir,
        captures,
        matrix=matrix,
        controls=control or [],
        n_bins=n_bins,
        argv=command_line(ctx),
        compare=compare or [],
    )
    check_overwrite(out, overwrite)  # after the inputs are read: their errors come first
    path = write_report(rep, out)
    for line in rep.headline:
        console.print(line, highlight=False)
    missing = [t for s in rep.to_dict()["sections"] for t in s["missing"]]
    if missing:
        console.print(f"[yellow]{len(missing)} item(s) not measured[/] (listed in the report)")
    console.print(f"wrote {path} ({len(rep.figures)} figures)")


def register(app: typer.Typer) -> None:
    """Attach the ``report`` command to the top-level app."""
    app.command("report")(report_cmd)
