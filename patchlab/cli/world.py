"""``patchlab world``: the embedded procedural traffic-sign world and its small models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ._common import DEVICE_HELP, console, task_progress

app = typer.Typer(
    help="The embedded default: a procedural traffic-sign data set and three small models.", no_args_is_help=True
)


@app.command("make")
def make_cmd(
    out: Annotated[
        Path, typer.Option("--out", help="World folder to write (new, empty, or a world with --overwrite).")
    ],
    n_per_class: Annotated[int, typer.Option(help="Pictures per class, train + val.")] = 500,
    size: Annotated[int, typer.Option(help="Side of the classification pictures, pixels.")] = 64,
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives the same bytes.")] = 0,
    val_frac: Annotated[float, typer.Option(help="Fraction of each class held out in val/.")] = 0.2,
    scenes_per_class: Annotated[int, typer.Option(help="640x480 road-side frames per class (scenes/).")] = 4,
    workers: Annotated[
        Optional[int], typer.Option(help="Drawing processes (default: one per core, at most 8).")
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--overwrite", "--force", help="Replace a world already at --out (--force is the older spelling)."
        ),
    ] = False,
) -> None:
    """Draw a procedural traffic-sign data set: ImageFolder train/ and val/ trees plus road scenes."""
    from ..world import make_world

    with task_progress() as start:
        info = make_world(
            out,
            n_per_class,
            size,
            seed,
            val_frac=val_frac,
            scenes_per_class=scenes_per_class,
            force=force,
            workers=workers,
            progress=start,
        )
    n = sum(info.counts.values())
    console.print(
        f"world {info.root}: {len(info.classes)} classes, {info.counts['train']} train + "
        f"{info.counts['val']} val pictures ({size}x{size}), {info.counts['scenes']} scenes; "
        f"{n} images in {info.seconds:.1f} s ({info.images_per_second:.0f} images/s)",
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"classes: {', '.join(info.classes)}", highlight=False, soft_wrap=True)
    console.print(f"next: patchlab world train --data {info.root} --out ZOO_DIR", highlight=False, soft_wrap=True)


@app.command("train")
def train_cmd(
    data: Annotated[Path, typer.Option("--data", help="A world folder from `patchlab world make`.")],
    out: Annotated[Path, typer.Option("--out", help="Zoo folder: one card + safetensors per model, zoo.json.")],
    seed: Annotated[int, typer.Option(help="Training seed: the same seed gives the same weights on a CPU.")] = 0,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    resume: Annotated[
        bool, typer.Option("--resume/--no-resume", help="Keep models already trained in --out with the same settings.")
    ] = True,
) -> None:
    """Train a LeNet, a small ResNet and a tiny ViT on a world; write a model card for each."""
    from ..utils import resolve_device
    from ..world import train_zoo

    dev = resolve_device(device)
    with task_progress() as start:
        zoo = train_zoo(data, out, seed=seed, device=dev, progress=start, resume=resume)
    table = Table("model", "card", "val accuracy", "n", "train s")
    for m in zoo.models:
        table.add_row(
            m.name,
            str(m.card),
            f"{m.val_accuracy:.2%}",
            str(m.val_n),
            f"{m.train_seconds:.1f}" + (" (kept)" if m.cached else ""),
        )
    console.print(table)
    console.print(f"zoo {zoo.root} in {zoo.seconds:.1f} s on {dev}", highlight=False, soft_wrap=True)
    console.print(
        f"check: patchlab models check {zoo.root}/*.json --data {Path(data)}/val", highlight=False, soft_wrap=True
    )
