"""``patchlab attack NAME``: run any attack of :data:`patchlab.attacks.ATTACKS` on held-out images.

The command only parses: it maps its options onto the attack function's keyword
hyperparameters (checked against its signature), loads models and data, and calls
the library (:mod:`patchlab.attacks.record` selects the images, judges transfer and
writes the run folder).
"""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.table import Table

from ._common import DEVICE_HELP, command_line, console, err_console, rank_progress_bar

#: Parameters of an attack function the command fills itself (never from --set).
RESERVED = ("models", "images", "target", "labels", "generator", "progress", "stop_models")
#: Named options -> the attack's keyword of the same meaning.
NAMED = {"eps": "--eps", "alpha": "--alpha", "steps": "--steps", "norm": "--norm", "mask": "--mask"}
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def hyperparameters(fn: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    """The keyword-only hyperparameters of an attack function (its signature, less the reserved ones)."""
    return {
        n: p
        for n, p in inspect.signature(fn).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and n not in RESERVED
    }


def parse_value(name: str, text: str, param: inspect.Parameter) -> Any:
    """``--set name=text`` as the parameter's type (from its default and annotation)."""
    from ..errors import ConfigError

    t = text.strip()
    ann = str(param.annotation)
    d = param.default
    if t.lower() in ("none", "null") and (d is None or "None" in ann):
        return None
    if isinstance(d, bool) or ann.startswith("bool"):
        if t.lower() in _TRUE | _FALSE:
            return t.lower() in _TRUE
        raise ConfigError(f"--set {name}={text}: {name} takes true or false")
    if (isinstance(d, int) and not isinstance(d, bool)) or ann.startswith("int"):
        try:
            return int(t)
        except ValueError:
            raise ConfigError(f"--set {name}={text}: {name} takes a whole number") from None
    if isinstance(d, float) or ann.startswith("float"):
        try:
            return float(t)
        except ValueError:
            raise ConfigError(f"--set {name}={text}: {name} takes a number") from None
    for conv in (int, float):
        try:
            return conv(t)
        except ValueError:
            pass
    return t


def attack_kwargs(name: str, fn: Callable[..., Any], named: dict[str, Any], sets: list[str] | None) -> dict[str, Any]:
    """The keyword arguments of ``fn`` from the named options (``None`` = not given) and ``--set`` items.

    Raises:
        ConfigError: an option or key the attack does not take, a key given twice, a bad value.
    """
    from ..errors import ConfigError
    from ..utils import parse_kv

    params = hyperparameters(fn)
    takes = ", ".join(params) or "none"
    kw: dict[str, Any] = {}
    for key, value in named.items():
        if value is None:
            continue
        if key not in params:
            raise ConfigError(
                f"attack {name!r} takes no {NAMED[key]} (its hyperparameters: {takes}; set them with --set KEY=VALUE)"
            )
        kw[key] = value
    for key, text in parse_kv(sets).items():
        if key not in params:
            raise ConfigError(f"attack {name!r} has no hyperparameter {key!r} (its hyperparameters: {takes})")
        if key in kw:
            raise ConfigError(f"{key} given twice: as {NAMED.get(key, '--set')} and as --set {key}=...")
        kw[key] = parse_value(key, text, params[key])
    return kw


def check_target(target: str, models: list, names: list[str]) -> None:
    """A target class name or index must be a class of every model (source and transfer)."""
    from ..data import class_index
    from ..errors import ConfigError, DataError

    t = target.strip()
    if t.lower() in ("none", "random"):
        return
    for m, n in zip(models, names):
        labels = list(getattr(m, "labels", []))
        try:
            if t.lstrip("-").isdigit():
                if not 0 <= int(t) < len(labels):
                    raise DataError("")
            else:
                class_index(t, labels)
        except DataError:
            shown = ", ".join(labels[:12]) + (" ..." if len(labels) > 12 else "")
            raise ConfigError(f"target {target!r} is not a class of model {n!r} (its classes: {shown})") from None


def _split(values: Optional[list[str]]) -> list[str]:
    return [v for item in values or [] for v in item.split(",") if v.strip()]


def attack_cmd(
    ctx: typer.Context,
    name: Annotated[
        str,
        typer.Argument(
            help="The attack: a name of patchlab.attacks.ATTACKS (fgsm, bim, pgd, "
            "regional, fgvm, ...; an unknown name lists them).",
            show_default=False,
        ),
    ],
    model: Annotated[
        list[str],
        typer.Option(
            "--model", help="Source model (card, timm:NAME, ...); repeat for an ensemble (its losses are averaged)."
        ),
    ],
    data: Annotated[Path, typer.Option(help="Labelled ImageFolder tree of held-out images (e.g. the test split).")],
    out: Annotated[Path, typer.Option(help="Run folder: attack.json, adversarial/*.png, grid.png.")],
    target: Annotated[
        str,
        typer.Option(
            help="Target class (name or index), 'random' (a random other class per image) or 'none' (untargeted)."
        ),
    ] = "none",
    eps: Annotated[
        Optional[float],
        typer.Option(help="Budget (default: the attack's, e.g. 8/255 Linf, 1.0 L2).", show_default=False),
    ] = None,
    alpha: Annotated[
        Optional[float], typer.Option(help="Step size (default: the attack's, e.g. 2/255 Linf).", show_default=False)
    ] = None,
    steps: Annotated[
        Optional[int], typer.Option(help="Iterations (default: the attack's).", show_default=False)
    ] = None,
    norm: Annotated[Optional[str], typer.Option(help="linf or l2 (default: the attack's).", show_default=False)] = None,
    mask: Annotated[
        Optional[str],
        typer.Option(
            help="Region: center:F, frame:F, random:F (F a fraction or N%), "
            "center:Npx, frame:Npx, KIND:s|m|l (paper sizes), file:PATH.",
            show_default=False,
        ),
    ] = None,
    transfer: Annotated[
        Optional[list[str]],
        typer.Option("--transfer", help="Models the adversarials are judged on (repeat, or comma-separated)."),
    ] = None,
    set_: Annotated[
        Optional[list[str]],
        typer.Option(
            "--set", help="Any other hyperparameter of the attack, KEY=VALUE (repeat), e.g. --set random_start=false."
        ),
    ] = None,
    n: Annotated[
        int,
        typer.Option("--n", help="Images to attack: a seeded selection of the ones the source classifies correctly."),
    ] = 100,
    defense: Annotated[
        str,
        typer.Option(
            "--defense",
            help="Input defence in front of the source and the transfer models alike, on clean and "
            "adversarial images (blur[:SIGMA], median[:K], jpeg[:Q], bitdepth[:BITS], lgs[:...]; "
            "`patchlab defend list`): the attack is adaptive, through the defence, BPDA where it "
            "has no gradient.",
        ),
    ] = "none",
    seed: Annotated[int, typer.Option(help="Seed of the selection, random starts, random targets and masks.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Images per attack batch.")] = 128,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    json_path: Annotated[
        Optional[Path], typer.Option("--json", help="Also write the summary and transfer table here.")
    ] = None,
) -> None:
    """Attack held-out images: success rate (Wilson 95% CI), L0/L2/Linf, transfer table, run folder with PNGs and a
    picture grid."""
    import torch

    from ..attacks import ATTACKS
    from ..attacks.record import (
        attack_in_batches,
        quantized_success,
        select_correct,
        summarize,
        transfer_table,
        write_attack_run,
    )
    from ..data import class_index, load_folder, match_labels
    from ..distributed import join, leave
    from ..errors import ConfigError
    from ..models import load_model
    from ..utils import atomic_write_json, versions

    key = name.strip().lower()
    if key not in ATTACKS:
        raise ConfigError(f"unknown attack {name!r}: choose one of {', '.join(sorted(ATTACKS))}")
    fn = ATTACKS[key]
    kw = attack_kwargs(key, fn, {"eps": eps, "alpha": alpha, "steps": steps, "norm": norm, "mask": mask}, set_)
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    if n < 1:
        raise ConfigError(f"--n must be >= 1, got {n}")
    if mask is not None:
        from ..attacks.regional import parse_mask_spec

        parse_mask_spec(mask)  # a bad spec fails before any model loads
    from ..defenses import adaptive, adaptive_model, defend, get_defense

    defense_d = get_defense(defense)  # a bad spec fails before any model loads
    group, dev = join(device)
    main = group.is_main
    # the same defence in front of every model (as eval transfer): the sources are attacked
    # through it (adaptive, BPDA where it has no gradient), the transfer models judged behind it
    sources = [adaptive_model(load_model(r, device=dev), defense_d) for r in model]
    targets_ref = _split(transfer)
    judged = [defend(load_model(r, device=dev), defense_d) for r in targets_ref]
    check_target(target, sources + judged, [*model, *targets_ref])
    params = hyperparameters(fn)
    wants_stop = "stop_models" in inspect.signature(fn).parameters and bool(kw.get("released"))
    if wants_stop and not judged:
        raise ConfigError(f"{key} with released=true stops on the transfer models: give --transfer MODEL")

    images = load_folder(data)
    if not images.classes:
        raise ConfigError(f"{data} has no class sub-folders: --data needs a labelled ImageFolder tree")
    labels = match_labels(images.classes, sources[0].labels, model_name=sources[0].name)[images.labels]
    t = target.strip()
    fixed = None if t.lower() in ("none", "random") else (int(t) if t.isdigit() else class_index(t, sources[0].labels))
    with rank_progress_bar(main, "selecting correctly classified images", len(images)) as adv:
        sel = select_correct(images.images, labels, sources, n=n, seed=seed, exclude_class=fixed, progress=adv)
    if not sel.indices:
        raise ConfigError(f"the source model classifies none of the {sel.scanned} images of {data} correctly")
    if main:
        err_console.print(
            f"attacking {len(sel.indices)} images that the source classifies correctly "
            f"({sel.correct} correct of {sel.scanned} scanned in a seeded order, seed {seed})"
            + ("" if fixed is None else f", leaving out the target class {sources[0].labels[fixed]!r}")
            + ("" if len(sel.indices) == n else f"; fewer than --n {n}"),
            highlight=False,
        )

    x_all = images.float(torch.tensor(sel.indices))
    target_arg: Any = (
        None if target.strip().lower() == "none" else (int(target) if target.strip().isdigit() else target.strip())
    )
    n_steps = int(kw.get("steps", params["steps"].default if "steps" in params else 1) or 1)
    n_batches = len(range(0, x_all.shape[0], batch_size))
    if group.active and main and n_batches < group.world:
        err_console.print(
            f"{n_batches} batch(es) of --batch-size {batch_size} for {group.world} processes: "
            f"lower --batch-size to keep every process busy",
            highlight=False,
        )
    t0 = time.perf_counter()
    with rank_progress_bar(main, f"{key} on {x_all.shape[0]} images", n_steps * n_batches) as step:
        res = attack_in_batches(
            fn,
            sources,
            x_all,
            target_arg,
            labels=sel.labels,
            batch_size=batch_size,
            seed=seed,
            hyperparameters=kw,
            stop_models=judged if wants_stop else None,
            progress=step,
            dist=group,
        )
    seconds = time.perf_counter() - t0
    rows = transfer_table(res, x_all, judged, dist=group) if judged else []
    sp = quantized_success(res, sources, dist=group)
    if not main:  # another rank of a torchrun group: rank 0 writes
        leave(group)
        return
    record = {
        "target": target,
        "seed": seed,
        "command": command_line(ctx),
        "sources": [m.info.to_dict() for m in sources],
        "transfer_models": [m.info.to_dict() for m in judged],
        "defense": adaptive(defense_d).to_dict(),
        "data": {
            "root": str(data),
            "classes": images.classes,
            "n_images": len(images),
            "image_size": list(x_all.shape[-2:]),
            "selection": sel.to_dict(),
        },
        "given": kw,
        "batch_size": batch_size,
        "device": str(dev),
        "versions": versions(),
        "seconds": seconds,
    }
    paths = write_attack_run(
        out, res, x_all, paths=[images.paths[i] for i in sel.indices], record=record, transfer=rows, success_png=sp
    )
    summary = summarize(res)
    _print(key, [m.name for m in sources], res, summary, rows, float(sp.float().mean()))
    if json_path is not None:
        atomic_write_json(
            json_path,
            {
                "attack": key,
                "config": res.config,
                "defense": adaptive(defense_d).to_dict(),
                "summary": summary,
                "success_png_rate": float(sp.float().mean()),
                "transfer": [r.to_dict() for r in rows],
                "run": str(out),
            },
        )
        console.print(f"wrote {json_path}")
    console.print(f"wrote {paths['json']}, {paths['grid']} and {res.n} PNGs in {paths['images']}")
    leave(group)


def _pm(d: dict[str, float], digits: int = 3) -> str:
    return f"{d['mean']:.{digits}f} ± {d['std']:.{digits}f}"


def _print(key: str, model: list[str], res, summary: dict[str, Any], rows, png_rate: float) -> None:
    src = "+".join(model)
    lo, hi = summary["success_ci95"]
    t = Table(
        "attack",
        "source",
        "n",
        "success",
        "95% CI",
        "L0",
        "L2",
        "Linf",
        title=f"{key} {'targeted' if res.target is not None else 'untargeted'}: "
        + ", ".join(f"{k}={v}" for k, v in res.config.items()),
    )
    t.add_row(
        key,
        src,
        str(res.n),
        f"{summary['success_rate']:.1%}",
        f"{lo:.1%}-{hi:.1%}",
        _pm(summary["l0"]),
        _pm(summary["l2"]),
        _pm(summary["linf"], 4),
    )
    console.print(t)
    console.print(f"success after saving as 8-bit PNG: {png_rate:.1%}", highlight=False)
    for k, v in summary["extras"].items():
        console.print(f"mean {k}: {v:.4g}", highlight=False)
    if rows:
        tt = Table(
            "source",
            "target model",
            "clean acc",
            "untargeted transfer",
            "n",
            "targeted transfer",
            "n",
            "error (all)",
            title="transfer (Ozbulak et al.: of the images fooling the source)",
        )
        tt.add_row(
            src,
            src + " (white box)",
            "100.0%",
            f"{summary['success_rate']:.1%}",
            str(res.n),
            "" if res.target is None else f"{summary['success_rate']:.1%}",
            "",
            "",
        )
        for r in rows:
            tt.add_row(
                src,
                r.model,
                f"{r.clean_accuracy:.1%}",
                f"{r.untargeted:.1%}",
                str(r.untargeted_n),
                "-" if r.targeted is None else f"{r.targeted:.1%}",
                str(r.targeted_n) if r.targeted is not None else "",
                f"{r.error:.1%}",
            )
        console.print(tt)


def register(app: typer.Typer) -> None:
    """Attach the ``attack`` command to the top-level app."""
    app.command("attack")(attack_cmd)
