"""``patchlab defend``: robust models (adversarial fine-tuning) and defences judged under attack."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ._common import DEVICE_HELP, console, err_console, progress_bar

app = typer.Typer(
    help="Defences: adversarially fine-tune a model; judge input defences under (adaptive) attack.",
    no_args_is_help=True,
)

DEFENSE_HELP = (
    "Input defence: none, blur[:SIGMA], median[:K], jpeg[:Q], bitdepth[:BITS], "
    "lgs[:window=15,overlap=5,threshold=0.1,smoothing=2.3]; add ',bpda' to jpeg/median/bitdepth for a "
    "straight-through gradient."
)


def _load_split(model, data: Path, split: float, seed: int, limit_per_class: Optional[int]):
    import torch

    from ..data import load_folder, match_labels, split_indices

    with progress_bar("loading images", None) as adv:
        images = load_folder(data, limit_per_class=limit_per_class, progress=adv)
    if not images.classes:
        from ..errors import DataError

        raise DataError(f"{data} is not a labelled ImageFolder tree (one sub-folder per class)")
    y = match_labels(images.classes, model.labels, model_name=model.name)[images.labels]
    sp = split_indices(images.labels, holdout_frac=split, seed=seed)
    tr, ho = torch.tensor(sp.train), torch.tensor(sp.holdout)
    return images, y, sp, tr, ho


def _acc_table(title: str, rows: list[tuple[str, object]]) -> Table:
    t = Table("model", "clean", "FGSM", "PGD", "n", title=title)
    for name, r in rows:
        t.add_row(name, f"{r.clean:.1%}", f"{r.fgsm:.1%}", f"{r.pgd:.1%}", str(r.n))
    return t


@app.command("train")
def train_cmd(
    model: Annotated[str, typer.Option("--model", help="Model card (or timm:NAME ...) to fine-tune.")],
    data: Annotated[Path, typer.Option(help="Labelled ImageFolder tree (training + held-out split).")],
    out: Annotated[Path, typer.Option(help="Card to write (JSON); the weights go beside it as .safetensors.")],
    attack: Annotated[
        str, typer.Option(help="fgsm (Goodfellow mix), fgsm-rs (Wong et al. 2020), pgd (Madry) or patch.")
    ] = "fgsm-rs",
    eps: Annotated[float, typer.Option(help="L-inf radius in 1/255 units (8 = 8/255).")] = 8.0,
    alpha: Annotated[
        Optional[float],
        typer.Option(
            help="Training step in 1/255 units (default: 8 for fgsm, 10 for fgsm-rs at eps 8, eps/4 for pgd)."
        ),
    ] = None,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 10,
    lr: Annotated[float, typer.Option(help="Peak learning rate of the one-cycle SGD schedule.")] = 0.05,
    batch_size: Annotated[int, typer.Option(help="Training batch size.")] = 128,
    split: Annotated[float, typer.Option(help="Held-out fraction (stratified, seeded); trained on the rest.")] = 0.5,
    limit_per_class: Annotated[Optional[int], typer.Option(help="Use at most N images per class.")] = None,
    eval_n: Annotated[
        Optional[int],
        typer.Option(help="Judge before/after on N held-out images drawn at random with --seed (default: all)."),
    ] = None,
    eval_steps: Annotated[int, typer.Option(help="PGD steps of the held-out robust accuracy.")] = 10,
    check_n: Annotated[int, typer.Option(help="Fixed training batch checked with PGD each epoch.")] = 256,
    seed: Annotated[int, typer.Option(help="Seed of the split, shuffling, augmentation and attack starts.")] = 0,
    restart: Annotated[bool, typer.Option("--restart", help="Ignore a saved training state and start over.")] = False,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
) -> None:
    """Fine-tune a model adversarially and write a new card + safetensors, loadable like any card.

    Resumable: the state after each epoch is kept in OUT.train.pt (deleted at the end). Each
    epoch checks PGD accuracy on a fixed training batch; catastrophic overfitting stops the
    run, and the best checkpoint by that accuracy is written. The card records clean, FGSM and
    PGD accuracy on the held-out split before and after.
    """
    import torch

    from ..defenses.train import TrainConfig, adversarial_finetune, robust_accuracy, save_weights, trained_card
    from ..errors import ConfigError
    from ..models import load_model, read_card
    from ..utils import atomic_torch_save, atomic_write_json, resolve_device

    if out.suffix != ".json":
        raise ConfigError(f"--out must be a card path ending in .json, got {out}")
    dev = resolve_device(device)
    base = load_model(model, device=dev)
    card = (
        read_card(model)
        if Path(model).is_file()
        else {
            "framework": base.info.framework,
            "arch": base.info.arch,
            "kwargs": {},
            "labels": base.labels,
            **base.preprocess.to_dict(),
        }
    )
    cfg = TrainConfig(
        attack=attack,
        eps=eps / 255,
        alpha=None if alpha is None else alpha / 255,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        check_n=check_n,
        seed=seed,
    )
    images, y, sp, tr, ho = _load_split(base, data, split, seed, limit_per_class)
    if len(tr) == 0 or len(ho) == 0:
        raise ConfigError(f"--split {split} leaves no training or no held-out images")
    if eval_n:  # a seeded random subset: the held-out indices are sorted by class
        ho_eval = ho[torch.randperm(len(ho), generator=torch.Generator().manual_seed(seed))[:eval_n]]
    else:
        ho_eval = ho
    x_ho, y_ho = images.images[ho_eval], y[ho_eval]
    state_path = out.with_suffix(".train.pt")
    state = None
    if state_path.exists() and not restart:
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        err_console.print(
            f"resuming from {state_path} (epoch {len(state['history']) - 1} of {epochs}); --restart to start over"
        )
    if state is not None and "heldout_before" in state:
        from ..defenses.train import RobustAccuracy

        before = RobustAccuracy.from_dict(state["heldout_before"])
    else:
        with progress_bar("held-out accuracy before", len(x_ho)) as adv:
            before = robust_accuracy(
                base, x_ho.to(dev), y_ho.to(dev), eps=cfg.eps, pgd_steps=eval_steps, seed=seed, progress=adv
            )

    def save_state(s: dict) -> None:
        atomic_torch_save({**s, "heldout_before": before.to_dict()}, state_path)

    with progress_bar(f"{attack} training, {len(tr)} images", len(tr) * epochs) as adv:
        if state is not None:
            adv(len(tr) * (len(state["history"]) - 1))
        res = adversarial_finetune(
            base, images.images[tr], y[tr], config=cfg, state=state, save_state=save_state, progress=adv
        )
    weights = out.with_suffix(".safetensors")
    save_weights(res.state_dict, weights)
    # a provisional card, so the trained weights load through the ordinary loader
    new_card = trained_card(
        card,
        name=out.stem,
        weights=weights.name,
        result=res,
        before=before,
        after=before,
        split=sp.to_dict() | {"train": None, "holdout": None, "data": str(data)},
        base_card_path=str(model),
    )
    atomic_write_json(out, new_card)
    trained = load_model(str(out), device=dev)
    with progress_bar("held-out accuracy after", len(x_ho)) as adv:
        after = robust_accuracy(
            trained, x_ho.to(dev), y_ho.to(dev), eps=cfg.eps, pgd_steps=eval_steps, seed=seed, progress=adv
        )
    new_card = trained_card(
        card,
        name=out.stem,
        weights=weights.name,
        result=res,
        before=before,
        after=after,
        split=sp.to_dict() | {"train": None, "holdout": None, "data": str(data)},
        base_card_path=str(model),
    )
    atomic_write_json(out, new_card)
    state_path.unlink(missing_ok=True)

    h = Table(
        "epoch",
        "loss",
        "train acc",
        "check clean",
        "check FGSM",
        "check PGD",
        "lr",
        "s",
        "",
        title=f"{attack} fine-tuning (check batch of {cfg.check_n} training images, PGD-{cfg.check_pgd_steps})",
    )
    for r in res.history:
        h.add_row(
            str(r.epoch),
            "" if r.epoch == 0 else f"{r.loss:.3f}",
            "" if r.epoch == 0 else f"{r.train_acc:.1%}",
            f"{r.check_clean:.1%}",
            f"{r.check_fgsm:.1%}",
            f"{r.check_pgd:.1%}",
            f"{r.lr:.4f}",
            f"{r.seconds:.0f}",
            "best" if r.epoch == res.best_epoch else ("OVERFIT" if r.overfit else ""),
        )
    console.print(h)
    console.print(
        _acc_table(
            f"held-out split (eps {eps:g}/255, PGD-{eval_steps})",
            [(f"{base.name} (before)", before), (f"{out.stem} (after)", after)],
        )
    )
    if res.overfit_epoch is not None:
        err_console.print(
            f"[bold red]catastrophic overfitting[/] at epoch {res.overfit_epoch}: {res.overfit_reason}. "
            f"Stopped; kept the best checkpoint (epoch {res.best_epoch}).",
            highlight=False,
        )
    console.print(
        f"clean accuracy {after.clean - before.clean:+.1%}, PGD accuracy {after.pgd - before.pgd:+.1%}, "
        f"FGSM accuracy {after.fgsm - before.fgsm:+.1%}; training {res.wall_s:.0f} s"
    )
    console.print(f"wrote {out} and {weights}")


@app.command("eval")
def eval_cmd(
    model: Annotated[str, typer.Option("--model", help="Model card (or timm:NAME ...).")],
    data: Annotated[Path, typer.Option(help="Labelled ImageFolder tree.")],
    defense: Annotated[str, typer.Option("--defense", help=DEFENSE_HELP)] = "jpeg",
    eps: Annotated[float, typer.Option(help="L-inf radius in 1/255 units.")] = 8.0,
    steps: Annotated[int, typer.Option(help="PGD steps.")] = 10,
    limit_per_class: Annotated[Optional[int], typer.Option(help="At most N images per class.")] = 20,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the PGD random starts.")] = 0,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Also write the table here.")] = None,
) -> None:
    """Accuracy under FGSM and PGD of a model with and without a defence, with the attack
    non-adaptive (gradients of the bare model) and adaptive (through the defence, BPDA where
    the defence has no gradient): how much of the attack's success the defence removes, and
    how much an adaptive attacker wins back."""
    from ..defenses import get_defense
    from ..defenses.eval import defense_table
    from ..models import load_model
    from ..utils import atomic_write_json, resolve_device

    dev = resolve_device(device)
    base = load_model(model, device=dev)
    d = get_defense(defense)
    images, y, _, _, _ = _load_split(base, data, 0.0, seed, limit_per_class)
    with progress_bar(f"{len(images)} images x 3 settings", 3 * len(images)) as adv:
        res = defense_table(
            base,
            d,
            images.images.to(dev),
            y.to(dev),
            eps=eps / 255,
            pgd_steps=steps,
            batch_size=batch_size,
            seed=seed,
            progress=adv,
        )
    t = Table(
        "judged model",
        "attack gradients from",
        "clean",
        "FGSM",
        "PGD",
        "n",
        title=f"{base.name}, defence {d.spec}, eps {eps:g}/255, PGD-{steps}",
    )
    for r in res.rows:
        t.add_row(r.judged, r.attacked, f"{r.acc.clean:.1%}", f"{r.acc.fgsm:.1%}", f"{r.acc.pgd:.1%}", str(r.acc.n))
    console.print(t)
    console.print(res.summary(), highlight=False)
    if json_path is not None:
        atomic_write_json(json_path, res.to_dict())
        console.print(f"wrote {json_path}")


@app.command("list")
def list_cmd() -> None:
    """The defences and their parameters."""
    import inspect

    from ..defenses import DEFENSES

    t = Table("name", "parameters (defaults)", "bpda", "what")
    for name, cls in DEFENSES.items():
        sig = inspect.signature(cls.__init__)
        ps = ", ".join(f"{k}={p.default}" for k, p in sig.parameters.items() if k not in ("self", "bpda"))
        t.add_row(name, ps, "yes" if cls.needs_bpda else "", (cls.__doc__ or "").strip().splitlines()[0])
    console.print(t)
