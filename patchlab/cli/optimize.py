"""``patchlab optimize``: universal targeted patches (optimal-transport feature losses, EOT)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..optimize.config import PAPER_LAYERS
from ._common import DEVICE_HELP, command_line, console, err_console, from_command_line

LOSS_HELP = (
    "sw (sliced Wasserstein, random projections), w2 (exact Wasserstein, POT), quantile (per-feature 1-D OT), "
    "ce (targeted cross-entropy: Brown et al.; LaVAN with --eot none), l2 (feature point, Inkawhich et al.)."
)


def optimize_cmd(
    ctx: typer.Context,
    out: Annotated[
        Path, typer.Option("--out", help="Run folder to create (patch.png, patch.npy, run.json, checkpoint.pt).")
    ],
    source: Annotated[
        Optional[list[str]],
        typer.Option("--source", help="Source model (card, timm:NAME, ...); repeat for an ensemble."),
    ] = None,
    data: Annotated[
        Optional[Path], typer.Option("--data", help="ImageFolder tree with the target class in it.")
    ] = None,
    target: Annotated[Optional[str], typer.Option("--target", help="Target class name.")] = None,
    loss: Annotated[str, typer.Option(help=LOSS_HELP)] = "sw",
    patch_frac: Annotated[float, typer.Option("--patch-frac", help="Patch area as a fraction of the image.")] = 0.1,
    steps: Annotated[int, typer.Option(help="Optimisation steps.")] = 500,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 64,
    lr: Annotated[float, typer.Option(help="Learning rate (pixel units; gradients are normalised per model).")] = 0.03,
    optimizer: Annotated[str, typer.Option(help="adam or sgd (momentum 0.9).")] = "adam",
    lr_schedule: Annotated[
        str, typer.Option(help="constant, or cosine decay to 1% of --lr at the last step.")
    ] = "constant",
    eot: Annotated[str, typer.Option(help="EOT preset (none, digital, physical) or a TOML file of ranges.")] = "none",
    placement: Annotated[str, typer.Option(help="side (avoids the centre), random, center or fixed.")] = "side",
    position: Annotated[Optional[str], typer.Option(help="FX,FY in [0, 1] for --placement fixed.")] = None,
    shape: Annotated[str, typer.Option(help="square or circle.")] = "square",
    patch_px: Annotated[
        Optional[int], typer.Option(help="Patch resolution in pixels (default: one per image pixel).")
    ] = None,
    layers: Annotated[
        str,
        typer.Option(
            help="Feature layers: auto (classifier input), depth:F (block at relative "
            "depth F), layer names; comma separated. Default: the paper's "
            "several depths plus the pre-logit features."
        ),
    ] = PAPER_LAYERS,
    projections: Annotated[int, typer.Option(help="Random projections per step for --loss sw.")] = 500,
    projection_bank: Annotated[
        int,
        typer.Option(
            help="--loss sw draws each step's directions from a bank of N x --projections uniform directions "
            "whose target projections are sorted once (redrawn every 10 x N steps); 0: fresh directions every step."
        ),
    ] = 8,
    tv: Annotated[
        float,
        typer.Option(
            "--tv", help="Total-variation weight: w adds w/10 of a (unit) attack step of smoothing, at any patch size."
        ),
    ] = 1.0,
    nps: Annotated[
        Optional[Path], typer.Option("--nps", help="Printable palette file (r g b lines, from `patchlab calib color`).")
    ] = None,
    nps_weight: Annotated[float, typer.Option(help="Non-printability weight (with --nps; same units as --tv).")] = 1.0,
    calib: Annotated[
        Optional[Path], typer.Option(help="color.json: render through the printer-to-camera colour transform.")
    ] = None,
    frame_markers: Annotated[
        bool, typer.Option("--frame-markers", help="Render the printed ArUco marker frame around the patch.")
    ] = False,
    seed: Annotated[int, typer.Option(help="The run's seed (split, batches, EOT, projections, init).")] = 0,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    holdout_frac: Annotated[float, typer.Option(help="Share of the data held out to judge the patch.")] = 0.2,
    target_images: Annotated[
        Optional[int], typer.Option(help="Use at most N target-class images for the target features.")
    ] = None,
    limit_per_class: Annotated[Optional[int], typer.Option(help="Load at most N images per class.")] = None,
    grad_norm: Annotated[
        bool, typer.Option("--grad-norm/--no-grad-norm", help="Normalise each source model's gradient.")
    ] = True,
    init: Annotated[str, typer.Option(help="random or gray.")] = "random",
    checkpoint_every: Annotated[int, typer.Option(help="Checkpoint every N steps.")] = 50,
    log_every: Annotated[int, typer.Option(help="History entry every N steps.")] = 10,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume", help="Continue the stopped run in --out (its options are reused; only --steps may grow)."
        ),
    ] = False,
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="Cache target-class features.")] = True,
    precision: Annotated[
        str,
        typer.Option(
            help="auto (bf16 autocast on CUDA devices that support it), fp32 or bf16; the patch itself stays float32."
        ),
    ] = "auto",
    channels_last: Annotated[
        Optional[bool],
        typer.Option("--channels-last/--no-channels-last", help="Channels-last batches and models (default: on CUDA)."),
    ] = None,
    compile_models: Annotated[
        bool, typer.Option("--compile", help="Run the source models through torch.compile.")
    ] = False,
    defense: Annotated[
        str,
        typer.Option(
            "--defense",
            help="Input defence in front of every source model (blur[:SIGMA], median[:K], jpeg[:Q], "
            "bitdepth[:BITS], lgs[:...]; `patchlab defend list`): an adaptive attack through the "
            "defence, BPDA where it has no gradient (jpeg, median, bitdepth).",
        ),
    ] = "none",
    workers: Annotated[
        Optional[int],
        typer.Option(
            help="Stream the images from disk, decoded in N DataLoader "
            "worker processes (pinned memory on CUDA, prefetch; 0: "
            "in this process) instead of loading the data set into "
            "memory."
        ),
    ] = None,
) -> None:
    """Optimise a universal targeted patch against one or more source models.

    Under ``torchrun --nproc_per_node N -m patchlab optimize ...`` the processes share
    each step's global batch (--batch-size, a multiple of N) and keep one patch; rank 0
    writes the run folder.
    """
    from ..data import limit_items, load_folder, scan_folder
    from ..eot import load_eot
    from ..errors import ConfigError
    from ..models import load_model
    from ..optimize import OptimizeConfig, prepare_run, prepare_stream_run, run_optimization
    from ..runs import load_run
    from ..utils import resolve_device
    from ._common import progress_bar

    given = {name for name in ctx.params if from_command_line(ctx, name)}
    opts: dict[str, Any] = dict(
        target=target,
        loss=loss,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer,
        lr_schedule=lr_schedule,
        frac=patch_frac,
        shape=shape,
        patch_px=patch_px,
        placement=placement,
        position=_parse_position(position),
        eot_name=eot,
        layers=layers,
        projections=projections,
        projection_bank=projection_bank,
        tv=tv,
        nps=nps_weight if nps else 0.0,
        palette=str(nps.resolve()) if nps else None,
        calib=str(calib.resolve()) if calib else None,
        frame_markers=frame_markers,
        seed=seed,
        holdout_frac=holdout_frac,
        target_images=target_images,
        grad_norm=grad_norm,
        init=init,
        checkpoint_every=checkpoint_every,
        log_every=log_every,
        precision=precision,
        channels_last=channels_last,
        compile=compile_models,
        defense=defense,
    )
    cli_to_cfg = {
        "patch_frac": "frac",
        "eot": "eot_name",
        "nps": "palette",
        "nps_weight": "nps",
        "compile_models": "compile",
    }
    sources, data_root, limit = list(source or []), data, limit_per_class
    if resume:
        rec = load_run(out)
        from ..optimize.run import with_missing_fields

        old = with_missing_fields(dict(rec.config))  # fields newer than the run: as they were then
        for k, v in old.items():
            if k != "eot" and not any(cli_to_cfg.get(g, g) == k for g in given):
                opts[k] = tuple(v) if k == "position" and v is not None else v
        if not sources:
            sources = [s["ref"] for s in rec.sources]
        if data_root is None:
            data_root = Path(rec.data_root or "")
        if limit is None:
            limit = rec.limit_per_class
    if not sources:
        raise ConfigError("give at least one --source model")
    if data_root is None:
        raise ConfigError("give --data DIR (an ImageFolder tree)")
    if not opts.get("target"):
        raise ConfigError("give --target CLASS")
    opts["eot"] = load_eot(opts["eot_name"])
    config = OptimizeConfig(**opts)
    from ..distributed import init_from_env, launched

    if launched():  # torchrun: join the group, one device per local rank
        dist, dev = init_from_env(device)
    else:
        from ..distributed import current

        dist, dev = current(), resolve_device(device)
    quiet = not dist.is_main
    color, palette = _load_calibration(config)
    models = [load_model(ref, device=dev) for ref in sources]
    if config.channels_last or (config.channels_last is None and dev.type == "cuda"):
        import torch

        for m in models:  # the CLI owns these models; the library only lays out the batches
            m.to(memory_format=torch.channels_last)
    import contextlib

    if workers is not None:  # streamed: only the target class's images are read up front
        if workers < 0:
            raise ConfigError(f"--workers must be >= 0, got {workers}")
        with contextlib.nullcontext() if quiet else console.status("target-class images and features"):
            prepared = prepare_stream_run(
                config,
                models,
                data_root,
                workers=workers,
                limit_per_class=limit,
                device=dev,
                cache=cache,
                color=color,
                palette=palette,
            )
    else:
        n_files = len(limit_items(scan_folder(data_root)[0], limit))
        bar = contextlib.nullcontext(lambda n=1: None) if quiet else progress_bar("loading images", n_files)
        with bar as adv:
            images = load_folder(data_root, limit_per_class=limit, progress=adv)
        with contextlib.nullcontext() if quiet else console.status("target-class features"):
            prepared = prepare_run(config, models, images, device=dev, cache=cache, color=color, palette=palette)
    prepared.record["limit_per_class"] = limit
    prepared.record["device"] = str(dev)
    names = ", ".join(m.name for m in models)
    if quiet:  # ranks other than 0 step silently; rank 0 reports and writes
        run_optimization(prepared, out, resume=resume, command=command_line(ctx))
        _leave_group(dist)
        return
    if dist.active:
        err_console.print(
            f"data-parallel over {dist.world} processes: {config.batch_size // dist.world} of the "
            f"{config.batch_size} images of each step per process"
        )
    through = "" if config.defense == "none" else f" through the defence {config.defense}"
    err_console.print(
        f"optimising a {config.loss} patch ({prepared.record['patch']['pixels'][0]} px, "
        f"{config.frac:.0%} of the image) towards {prepared.record['target_class']!r} on {names}{through}; "
        f"{prepared.record['data']['n_attack']} attack images, "
        f"{prepared.record['data']['n_target_images']} target images"
    )
    with _StepBar(config.steps) as step_bar:
        res = run_optimization(prepared, out, resume=resume, on_step=step_bar.update, command=command_line(ctx))
    console.print(f"finished {res.steps} steps in {res.seconds:.0f} s; running white-box tSuc {res.final_tsuc:.1%}")
    console.print(f"wrote {Path(out) / 'patch.png'} and {Path(out) / 'run.json'}")
    from ..defenses import get_defense

    plain = get_defense(config.defense).plain_spec
    judged_with = "" if plain == "none" else f" --defense {plain}"
    console.print(f"next: patchlab eval transfer {out} --models MODEL...{judged_with}")
    _leave_group(dist)


def _leave_group(dist) -> None:
    """Leave torchrun's process group cleanly once every rank is done."""
    if dist.active:
        import torch.distributed

        dist.barrier()
        torch.distributed.destroy_process_group()


def _parse_position(s: str | None) -> tuple[float, float] | None:
    from ..errors import ConfigError

    if s is None:
        return None
    try:
        fx, fy = (float(v) for v in s.split(","))
    except ValueError:
        raise ConfigError(f"--position takes FX,FY (fractions in [0, 1]), got {s!r}") from None
    return fx, fy


def _load_calibration(config):
    """The colour transform and palette the config names (the CLI may import stages; the core may not)."""
    color = palette = None
    if config.calib:
        from ..calib import ColorTransform

        color = ColorTransform.from_json(config.calib)
    if config.palette:
        from ..calib import load_palette

        palette = load_palette(config.palette)
    return color, palette


class _StepBar:
    """A rich progress bar that shows the loss terms and the running white-box tSuc."""

    def __init__(self, total: int):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]optimise"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=err_console,
        )
        self.total = total

    def __enter__(self) -> "_StepBar":
        self.progress.__enter__()
        self.task = self.progress.add_task("optimise", total=self.total, info="")
        return self

    def update(self, info) -> None:
        # the figures are read only when the loop logged them (every --log-every steps): reading
        # them at every step would make the host wait for the device at every step
        if info.logged is None:
            self.progress.update(self.task, completed=info.step)
            return
        e = info.logged
        terms = " ".join(f"{k.split('[')[0]}={v:.3g}" for k, v in list(e["terms"].items())[:4])
        self.progress.update(
            self.task, completed=info.step, info=f"loss {e['loss']:.4g} ({terms}) tSuc~{e['tsuc']:.0%}"
        )

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)


def register(app: typer.Typer) -> None:
    """Attach the ``optimize`` command to the top-level app."""
    app.command("optimize")(optimize_cmd)
