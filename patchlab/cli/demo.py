"""``patchlab demo``: the whole mission on the embedded sign world, in one command.

A thin command over :class:`patchlab.pipeline.DemoPipeline`: it parses the options,
runs the stages (each a library call, announced as the ``patchlab`` command that does
the same by hand) and prints what each stage did.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..pipeline import DemoConfig, DemoPipeline
from ._common import DEVICE_HELP, console, err_console, task_progress


def demo_cmd(
    out: Annotated[Path, typer.Option("--out", help="Folder for everything the demo makes.")] = Path("patchlab-demo"),
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    seed: Annotated[int, typer.Option(help="One seed for the world, the models, the patches and the film.")] = 0,
    target: Annotated[str, typer.Option(help="Target class of the patches.")] = "stop",
    source: Annotated[str, typer.Option(help="Source model of the zoo (lenet, resnet, vit).")] = "resnet",
    steps: Annotated[int, typer.Option(help="Optimisation steps per patch.")] = 300,
    frames: Annotated[int, typer.Option(help="Frames of the simulated video.")] = 300,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick", help="A smoke test: small world, short training, runs and film (its figures are not the demo's)."
        ),
    ] = False,
) -> None:
    """Run the whole mission on the embedded sign world: optimise, print, film, score, report."""
    from ..utils import resolve_device

    resolve_device(device)
    if quick:
        cfg = DemoConfig.quick(seed=seed, device=device, target=target, source=source)
    else:
        cfg = DemoConfig(seed=seed, device=device, target=target, source=source, steps=steps, frames=frames)

    def announce(cmd: str) -> None:
        console.print(f"[dim]$ {cmd}[/]", highlight=False, soft_wrap=True)

    def on_stage(name: str, skipped: bool) -> None:
        console.rule(
            f"[bold]{name}[/]" + (": finished before, skipped" if skipped else ""),
            style="dim" if skipped else "rule.line",
        )

    t0 = time.perf_counter()
    try:
        with task_progress() as start:
            pipe = DemoPipeline(out, cfg, announce=announce, progress=start, on_stage=on_stage)
            for w in pipe.warnings:
                err_console.print(f"[yellow]{w}[/]")
            outcomes = pipe.run()
    except KeyboardInterrupt:
        err_console.print(
            f"[yellow]interrupted[/]: run `patchlab demo --out {out}` again to resume from the finished stages"
        )
        raise typer.Exit(130) from None
    table = Table("stage", "status", "seconds", "result", title=f"patchlab demo in {time.perf_counter() - t0:.0f} s")
    for o in outcomes:
        table.add_row(o.name, o.status, f"{o.seconds:.1f}" if o.seconds else "-", o.figure)
    console.print(table)
    for f in ("report.html", "report.pdf", "print/patch.pdf", "capture/video.mp4", "matrix/matrix.md"):
        console.print(f"open {out / f}")


def register(app: typer.Typer) -> None:
    """Attach the ``demo`` command to the top-level app."""
    app.command("demo")(demo_cmd)
