"""``patchlab eval transfer`` and ``patchlab eval matrix``: digital tSuc of patches across models."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ._common import DEVICE_HELP, command_line, console, err_console, rank_progress_bar

MODELS_HELP = (
    "Judged models (cards, timm:NAME, ...): --models A B C, or --models repeated; shell globs of card paths work."
)


def split_runs_and_models(args: list[str], models: list[str] | None, *, want_runs: bool) -> tuple[list[str], list[str]]:
    """Separate run folders from model references among positional words.

    Click binds only the first word after ``--models`` to it; the others arrive as
    positional words. A word naming a run folder (it holds ``run.json``) is a run;
    any other word is a model reference, and only allowed after ``--models``.
    """
    from ..errors import ConfigError
    from ..runs import RUN_JSON

    runs, extra = [], []
    for a in args:
        if want_runs and Path(a).is_dir():
            if not (Path(a) / RUN_JSON).is_file():
                raise ConfigError(f"{a} is not a run folder (no {RUN_JSON}); make one with `patchlab optimize`")
            runs.append(a)
        else:
            extra.append(a)
    if extra and not models:
        raise ConfigError(f"{extra[0]!r} is not a run folder (no run.json); judged models go after --models")
    all_models = list(models or []) + extra
    if not all_models:
        raise ConfigError("give the judged models with --models MODEL...")
    return runs, all_models


# --- defences (issue 14): the same defence in front of every judged model, for patched and
# clean images alike; named in the model names ("resnet20+lgs") and in the result's eot record.
DEFENSE_HELP = (
    "Input defence in front of every judged model, for patched and clean images alike: none, "
    "blur[:SIGMA], median[:K], jpeg[:Q], bitdepth[:BITS], lgs[:window=15,overlap=5,threshold=0.1,"
    "smoothing=2.3] (see `patchlab defend list`)."
)


def _defended(models: list, spec: str) -> list:
    from ..defenses import defend

    return [defend(m, spec) for m in models]


def _name_defense(res, judged: list, spec: str, source_names=None):
    """The result with the defence in its ``eot`` record and the defended copies of the run's
    sources (``source_names``) flagged as sources: white-box under the defence."""
    from dataclasses import replace

    from ..defenses import get_defense
    from ..defenses.model import mark_defended_sources

    d = get_defense(spec)
    if d.spec == "none":
        return res
    return replace(mark_defended_sources(res, judged, source_names), eot={**res.eot, "defense": d.full_spec})


def _name_defense_matrix(res, judged: list, spec: str):
    """Defended copies of a run's source models count as its (white-box) sources."""
    from dataclasses import replace

    import numpy as np

    from ..defenses import get_defense
    from ..defenses.model import defended_names

    d = get_defense(spec)
    if d.spec == "none":
        return res
    names = defended_names(judged)
    rows = []
    for r in res.rows:
        srcs = list(r.sources) + [n for n, b in names.items() if b in r.sources and n not in r.sources]
        wb = [v for n, v in r.tsuc.items() if n in srcs]
        others = [v for n, v in r.tsuc.items() if n not in srcs]
        rows.append(
            replace(
                r,
                sources=srcs,
                white_box=float(np.mean(wb)) if wb else None,
                mean_transfer=float(np.mean(others)) if others else None,
                min_transfer=float(np.min(others)) if others else None,
                max_transfer=float(np.max(others)) if others else None,
            )
        )
    return replace(res, rows=rows, eot={**res.eot, "defense": d.full_spec})


def _table(title: str, result) -> Table:
    t = Table("model", "tSuc", "95% CI", "clean acc", "untargeted err", "n", "", title=title)
    for m in result.models:
        t.add_row(
            m.name,
            f"{m.tsuc:.1%}",
            f"{m.ci95[0]:.1%}-{m.ci95[1]:.1%}",
            f"{m.clean_accuracy:.1%}",
            f"{m.untargeted_error:.1%}",
            str(m.n),
            "source" if m.is_source else "",
        )
    return t


def transfer_cmd(
    ctx: typer.Context,
    args: Annotated[
        Optional[list[str]], typer.Argument(help="RUN_DIR (an optimiser run folder).", show_default=False)
    ] = None,
    models: Annotated[Optional[list[str]], typer.Option("--models", help=MODELS_HELP)] = None,
    patch: Annotated[Optional[Path], typer.Option(help="Judge an outside patch image instead of a run.")] = None,
    data: Annotated[Optional[Path], typer.Option(help="With --patch: labelled ImageFolder tree.")] = None,
    target: Annotated[Optional[str], typer.Option(help="With --patch: the target class.")] = None,
    patch_frac: Annotated[float, typer.Option(help="With --patch: patch area fraction.")] = 0.1,
    shape: Annotated[str, typer.Option(help="With --patch: square or circle.")] = "square",
    limit_per_class: Annotated[Optional[int], typer.Option(help="With --patch: at most N images per class.")] = None,
    frame_markers: Annotated[
        bool, typer.Option("--frame-markers", help="With --patch: paste it with its printed marker frame.")
    ] = False,
    placement: Annotated[Optional[str], typer.Option(help="side, random or center (default: the run's).")] = None,
    eot: Annotated[
        str, typer.Option(help="EOT at judging time: none (digital paste), digital, physical or TOML.")
    ] = "none",
    defense: Annotated[str, typer.Option("--defense", help=DEFENSE_HELP)] = "none",
    seed: Annotated[int, typer.Option(help="Seed of the placements (the same for every model).")] = 0,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 256,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Also write the result here.")] = None,
) -> None:
    """Per-model tSuc (Wilson 95% CI), clean accuracy and untargeted error of a patch on held-out images.

    With a run folder the result is also written to RUN_DIR/transfer.json. Under torchrun the
    images are shared out between the processes; rank 0 writes the single-process result.
    """
    from ..data import load_folder
    from ..distributed import join, leave
    from ..eot import load_eot
    from ..errors import ConfigError
    from ..eval.transfer import TransferResult, evaluate_patch, evaluate_run
    from ..models import load_model
    from ..runs import TRANSFER_JSON
    from ..utils import atomic_write_json

    runs, refs = split_runs_and_models(list(args or []), models, want_runs=patch is None)
    group, dev = join(device)
    main = group.is_main
    eot_cfg = load_eot(eot)
    if patch is None:
        if len(runs) != 1:
            raise ConfigError("give one RUN_DIR (or --patch PNG --data DIR --target CLASS)")
    elif runs or data is None or target is None:
        raise ConfigError("--patch needs --data DIR and --target CLASS, and no RUN_DIR")
    judged = _defended([load_model(r, device=dev) for r in refs], defense)
    if patch is None:
        run = Path(runs[0])
        from ..runs import load_run

        rec = load_run(run)
        with rank_progress_bar(main, "patched images", len(rec.holdout)) as adv:
            res = evaluate_run(
                run,
                judged,
                placement=placement,
                eot=eot_cfg,
                eot_name=eot,
                seed=seed,
                batch_size=batch_size,
                device=dev,
                progress=adv,
                dist=group,
            )
        res = replace(_name_defense(res, judged, defense, rec.source_names), command=command_line(ctx))
        if main:
            atomic_write_json(run / TRANSFER_JSON, res.to_dict())
            console.print(_table(f"{res.run_id}: patch -> {res.target_class!r}", res))
            console.print(f"wrote {run / TRANSFER_JSON}")
    else:
        from ..data import read_image

        p = read_image(patch)
        images = load_folder(data, limit_per_class=limit_per_class)
        with rank_progress_bar(main, "patched images", len(images)) as adv:
            ms = evaluate_patch(
                p,
                images,
                target,
                judged,
                frac=patch_frac,
                shape=shape,
                placement=placement or "side",
                eot=eot_cfg,
                seed=seed,
                frame=frame_markers,
                batch_size=batch_size,
                device=dev,
                progress=adv,
                dist=group,
            )
        res = TransferResult(
            run_id=Path(patch).stem,
            target_class=target,
            placement=placement or "side",
            eot={"name": eot, **eot_cfg.to_dict()},
            seed=seed,
            n_images=len(images),
            models=ms,
        )
        res = replace(_name_defense(res, judged, defense), command=command_line(ctx))
        if main:
            console.print(_table(f"{patch}: patch -> {target!r}", res))
    if json_path is not None and main:
        atomic_write_json(json_path, res.to_dict())
        console.print(f"wrote {json_path}")
    leave(group)


def matrix_cmd(
    args: Annotated[list[str], typer.Argument(help="RUN_DIR... (optimiser run folders).", show_default=False)],
    models: Annotated[Optional[list[str]], typer.Option("--models", help=MODELS_HELP)] = None,
    out: Annotated[Path, typer.Option(help="Folder for matrix.json, matrix.md and matrix.png.")] = Path("matrix"),
    placement: Annotated[Optional[str], typer.Option(help="side, random or center (default: each run's).")] = None,
    eot: Annotated[str, typer.Option(help="EOT at judging time (default none: digital paste).")] = "none",
    defense: Annotated[str, typer.Option("--defense", help=DEFENSE_HELP)] = "none",
    seed: Annotated[int, typer.Option(help="Seed of the placements.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 256,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
) -> None:
    """The patches x models tSuc matrix (JSON, markdown table, heatmap) with mean/min/max transfer per patch.

    Under torchrun each run's images are shared out between the processes; rank 0 writes the
    single-process matrix."""
    from ..distributed import join, leave
    from ..eot import load_eot
    from ..errors import ConfigError
    from ..eval.matrix import transfer_matrix
    from ..models import load_model
    from ..runs import load_run

    runs, refs = split_runs_and_models(list(args), models, want_runs=True)
    if not runs:
        raise ConfigError("give at least one RUN_DIR (a folder with run.json)")
    group, dev = join(device)
    judged = _defended([load_model(r, device=dev) for r in refs], defense)
    total = sum(len(load_run(r).holdout) for r in runs)
    with rank_progress_bar(group.is_main, f"{len(runs)} patches x {len(judged)} models", total) as adv:
        res = transfer_matrix(
            runs,
            judged,
            placement=placement,
            eot=load_eot(eot),
            eot_name=eot,
            seed=seed,
            batch_size=batch_size,
            device=dev,
            progress=adv,
            dist=group,
        )
    res = _name_defense_matrix(res, judged, defense)
    if not group.is_main:
        leave(group)
        return
    paths = res.write(out)
    console.print(res.to_markdown(), markup=False, highlight=False)
    for p in paths.values():
        console.print(f"wrote {p}")
    err_console.print(f"{len(res.rows)} patches judged on {len(res.models)} models")
    leave(group)


def compare_cmd(
    args: Annotated[
        list[str],
        typer.Argument(
            help="RUN_A RUN_B (two run folders made with the same --seed on the same data).", show_default=False
        ),
    ],
    models: Annotated[Optional[list[str]], typer.Option("--models", help=MODELS_HELP)] = None,
    also: Annotated[
        Optional[list[str]],
        typer.Option("--also", help="Another pair A2:B2 pooled in (e.g. the same two losses at another seed); repeat."),
    ] = None,
    placement: Annotated[Optional[str], typer.Option(help="side, random or center (default: the runs').")] = None,
    eot: Annotated[str, typer.Option(help="EOT at judging time (default none: digital paste).")] = "none",
    defense: Annotated[str, typer.Option("--defense", help=DEFENSE_HELP)] = "none",
    seed: Annotated[int, typer.Option(help="Seed of the placements and of the bootstrap.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 256,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Also write the comparison here.")] = None,
) -> None:
    """Does patch A beat patch B? tSuc of A minus B on the same held-out images, per model and on mean
    transfer, with a paired bootstrap 95% interval and McNemar's exact test.

    Under torchrun each run's images are shared out between the processes; rank 0 prints and
    writes the single-process comparison."""
    from ..distributed import join, leave
    from ..eot import load_eot
    from ..errors import ConfigError
    from ..eval.compare import compare_runs
    from ..models import load_model
    from ..runs import load_run
    from ..utils import atomic_write_json

    runs, refs = split_runs_and_models(list(args), models, want_runs=True)
    if len(runs) != 2:
        raise ConfigError(f"give two run folders, RUN_A RUN_B (got {len(runs)}); pool more pairs with --also A:B")
    pairs = [(runs[0], runs[1])]
    for item in also or []:
        a, sep, b = item.partition(":")
        if not sep or not a or not b:
            raise ConfigError(f"--also takes RUN_A:RUN_B, got {item!r}")
        pairs.append((a, b))
    group, dev = join(device)
    judged = _defended([load_model(r, device=dev) for r in refs], defense)
    total = sum(2 * len(load_run(a).holdout) for a, _ in pairs)
    with rank_progress_bar(group.is_main, f"{len(pairs)} pair(s) x {len(judged)} models", total) as adv:
        res = compare_runs(
            [a for a, _ in pairs],
            [b for _, b in pairs],
            judged,
            placement=placement,
            eot=load_eot(eot),
            seed=seed,
            batch_size=batch_size,
            device=dev,
            progress=adv,
            dist=group,
        )
    if not group.is_main:
        leave(group)
        return
    t = Table(
        "model",
        "A tSuc",
        "B tSuc",
        "A - B",
        "95% CI (paired bootstrap)",
        "only A",
        "only B",
        "McNemar p",
        "n",
        "",
        title=f"A = {', '.join(res.runs_a)}\nB = {', '.join(res.runs_b)}",
    )
    rows = list(res.models) + ([res.mean_transfer] if res.mean_transfer else [])
    for m in rows:
        t.add_row(
            m.name,
            f"{m.a:.1%}",
            f"{m.b:.1%}",
            f"{m.diff:+.1%}",
            f"{m.ci95[0]:+.1%} .. {m.ci95[1]:+.1%}",
            "" if m.a_only is None else str(m.a_only),
            "" if m.b_only is None else str(m.b_only),
            "" if m.p_mcnemar is None else f"{m.p_mcnemar:.3g}",
            str(m.n),
            "source" if m.is_source else ("*" if m.significant else ""),
        )
    console.print(t)
    if res.mean_transfer:
        mt = res.mean_transfer
        verdict = (
            "A transfers better"
            if mt.ci95[0] > 0
            else "B transfers better"
            if mt.ci95[1] < 0
            else "no difference shown"
        )
        console.print(f"mean transfer A - B: {mt.diff:+.1%} (95% CI {mt.ci95[0]:+.1%} .. {mt.ci95[1]:+.1%}): {verdict}")
    if json_path is not None:
        atomic_write_json(json_path, res.to_dict())
        console.print(f"wrote {json_path}")
    leave(group)


def register(app: typer.Typer) -> None:
    """Attach this module's commands to the ``eval`` sub-app."""
    app.command("transfer")(transfer_cmd)
    app.command("matrix")(matrix_cmd)
    app.command("compare")(compare_cmd)
