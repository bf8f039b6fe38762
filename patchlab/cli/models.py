"""``patchlab models``: list known architectures, check accuracy of model references."""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..utils import atomic_write_json, resolve_device
from ._common import DEVICE_HELP, console, err_console, progress_bar

app = typer.Typer(help="List and check classifiers (model cards, timm:NAME, torchvision:NAME).", no_args_is_help=True)


@app.command("list")
def list_cmd(
    pattern: Annotated[str, typer.Argument(help="Glob on the architecture name, e.g. '*resnet*'.")] = "*",
    cards: Annotated[
        Optional[list[Path]], typer.Option("--cards", help="Also list model cards in this folder.")
    ] = None,
    source: Annotated[str, typer.Option(help="Which factories: all, patchlab, timm, torchvision.")] = "all",
) -> None:
    """List model references that `patchlab models check` and `--source` accept, one per line."""
    from ..models import find_cards, list_models, read_card

    rows: list[tuple[str, str, str]] = []
    for folder in cards or []:
        for p in find_cards(folder):
            card = read_card(p)
            if fnmatch.fnmatch(card["arch"], pattern) or fnmatch.fnmatch(p.stem, pattern):
                acc = card.get("test_accuracy_jpeg")
                rows.append(
                    (
                        str(p),
                        f"card {card['framework']}:{card['arch']}",
                        f"{len(card['labels'])} classes" + (f", acc {acc:.2%}" if acc else ""),
                    )
                )
    if source in ("all", "patchlab"):
        for name in list_models(pattern):
            rows.append((f"patchlab:{name}", "built-in", "needs --weights or a card"))
    if source in ("all", "timm"):
        import timm

        for name in timm.list_models(pattern):
            rows.append((f"timm:{name}", "timm", ""))
    if source in ("all", "torchvision"):
        import torchvision

        for name in torchvision.models.list_models():
            if fnmatch.fnmatch(name, pattern):
                rows.append((f"torchvision:{name}", "torchvision", ""))
    width = max((len(r[0]) for r in rows), default=0)
    for ref, kind, notes in rows:
        console.print(f"{ref:<{width}}  {kind}" + (f"  ({notes})" if notes else ""), soft_wrap=True, highlight=False)
    err_console.print(f"{len(rows)} model reference(s) match {pattern!r}")


@app.command("check")
def check_cmd(
    models: Annotated[list[str], typer.Argument(help="Model references: card paths, timm:NAME, torchvision:NAME.")],
    data: Annotated[Path, typer.Option("--data", help="ImageFolder tree whose class names match the labels.")],
    limit_per_class: Annotated[Optional[int], typer.Option(help="Use at most N images per class.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 256,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    weights: Annotated[
        Optional[Path], typer.Option(help="Local weights for a single timm:/torchvision:/patchlab: model.")
    ] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write results as JSON here.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a --json file that already exists.")] = False,
) -> None:
    """Measure top-1 accuracy of each model on a labelled image folder."""
    from ..data import limit_items, load_folder, scan_folder
    from ..errors import ConfigError
    from ..models import load_model
    from ..models.check import check_accuracy

    if weights is not None and len(models) != 1:
        raise ConfigError("--weights applies to a single model; write a card per model instead")
    if json_path is not None:  # checked before the work, not after it
        from ..checks import check_output_file, check_overwrite

        check_output_file(json_path, option="--json", suffixes=(".json",))
        check_overwrite(json_path, overwrite)
    dev = resolve_device(device)
    n_files = len(limit_items(scan_folder(data)[0], limit_per_class))
    with progress_bar("loading images", n_files) as adv:
        images = load_folder(data, limit_per_class=limit_per_class, progress=adv)
    results = []
    for ref in models:
        model = load_model(ref, weights=weights, device=dev)
        with progress_bar(f"{model.name}", len(images)) as adv:
            results.append(check_accuracy(model, images, batch_size=batch_size, device=dev, progress=adv))
    table = Table("model", "accuracy", "n", "seconds")
    for r in results:
        table.add_row(r.name, f"{r.accuracy:.2%}", str(r.n), f"{r.seconds:.1f}")
    console.print(table)
    if json_path is not None:
        atomic_write_json(json_path, {"data": str(data), "device": str(dev), "models": [r.to_dict() for r in results]})
        console.print(f"wrote {json_path}")


@app.command("layers")
def layers_cmd(
    model: Annotated[str, typer.Argument(help="Model reference (card path, timm:NAME, torchvision:NAME).")],
    weights: Annotated[
        Optional[Path], typer.Option(help="Local weights for a timm:/torchvision:/patchlab: model.")
    ] = None,
    all_layers: Annotated[bool, typer.Option("--all", help="List every module, not only the feature blocks.")] = False,
) -> None:
    """Layers usable as optimiser features (--layers): names, output shapes, depth and the auto layer."""
    import torch

    from ..features import _trace_outputs, feature_blocks
    from ..models import load_model

    m = load_model(model, weights=weights)
    blocks = feature_blocks(m)
    auto, _ = m.classifier()
    modules = {n: mod for n, mod in m.net.named_modules() if n}
    shapes = dict(_trace_outputs(m, modules))
    pre: dict[str, tuple[int, ...]] = {}

    def grab(_m, inp):  # a pre-hook that returns something would replace the input
        pre["x"] = tuple(inp[0].shape)

    h = modules[auto].register_forward_pre_hook(grab)
    c, hh, ww = m.preprocess.input_size
    with torch.no_grad():
        m(torch.zeros(1, c, hh, ww))
    h.remove()
    table = Table("layer", "output", "depth", "note", title=f"{m.name}: {len(blocks)} feature blocks")
    names = list(modules) if all_layers else blocks
    for n in names:
        depth = f"depth:{blocks.index(n) / max(1, len(blocks) - 1):.2f}" if n in blocks else ""
        table.add_row(n, str(list(shapes.get(n, ()))), depth, "")
    table.add_row(auto, str(list(pre.get("x", ()))) + " (input)", "", "auto: the classifier's input")
    console.print(table)
