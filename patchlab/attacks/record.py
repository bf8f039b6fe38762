"""The attack run folder: held-out image selection, transfer table, summary, grid, files.

``patchlab attack NAME ... --out DIR`` writes (one home for the format, read by
``patchlab report``)::

    attack.json      the record (below), written atomically, last
    adversarial/     the adversarial images, lossless 8-bit PNG, named after the sources
    grid.png         originals / amplified perturbations / adversarials (/ flow), with labels

``attack.json`` keys: ``kind`` (``"attack"``), ``attack`` (name), ``config`` (every
resolved hyperparameter of the attack), ``target`` (as given), ``seed``, ``command``,
``sources`` and ``transfer_models`` (model provenance), ``defense`` (the input defence in
front of all of them, as the attack differentiated it; ``none`` by default), ``data`` (root, classes, the
seeded selection: scanned, correctly classified, attacked), ``summary``
(:func:`summarize`), ``transfer`` (:class:`TransferRow` dicts), ``images`` (one dict per
image: path, label, target, prediction, success, success after 8-bit quantisation,
l0/l2/linf, scalar extras, transfer predictions), ``result``
(:meth:`AttackResult.to_dict`), ``versions``, ``seconds``.
"""

from __future__ import annotations

import colorsys
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..distributed import DistContext
from ..errors import ConfigError
from ..stats import wilson_interval
from ..utils import atomic_write_bytes, atomic_write_json, read_json_object
from .base import AttackResult
from .gradient import ensemble_logits, model_device, predict

ATTACK_JSON = "attack.json"
GRID_PNG = "grid.png"
ADV_DIR = "adversarial"
#: Columns of the picture grid.
GRID_COLUMNS = 8


# -- held-out images ---------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """A seeded selection of correctly classified images from a labelled folder."""

    indices: list[int]
    labels: torch.Tensor  # (n,) model output indices
    scanned: int
    correct: int
    seed: int
    excluded_class: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "indices": self.indices,
            "scanned": self.scanned,
            "correct": self.correct,
            "attacked": len(self.indices),
            "seed": self.seed,
            "excluded_class": self.excluded_class,
        }


def select_correct(
    images: torch.Tensor,
    labels: torch.Tensor,
    models: Sequence[nn.Module],
    *,
    n: int,
    seed: int = 0,
    batch_size: int = 256,
    exclude_class: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> Selection:
    """The first ``n`` images of a seeded permutation that the models (their mean logits) classify correctly.

    Attacking only correctly classified images makes a success rate mean "the attack
    changed the answer", not "the model was already wrong".

    Args:
        images: ``(N, 3, H, W)`` uint8 or float in [0, 1] (on the CPU).
        labels: ``(N,)`` true classes as the models' output indices.
        models: the source model(s).
        n: how many to keep (fewer if fewer are correct).
        seed: seed of the permutation.
        batch_size: images per forward pass.
        exclude_class: skip images of this class (a targeted attack's target: they are there already).
        progress: called with the number of images classified.
    """
    if n < 1:
        raise ConfigError(f"--n must be >= 1, got {n}")
    g = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(images.shape[0], generator=g)
    if exclude_class is not None:
        order = order[labels[order] != exclude_class]
    dev = model_device(models[0])
    keep: list[int] = []
    scanned = correct = 0
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        x = images[idx].to(dev)
        x = x.float().div(255.0) if x.dtype == torch.uint8 else x
        ok = (predict(models, x).cpu() == labels[idx]).tolist()
        for i, good in zip(idx.tolist(), ok):
            scanned += 1
            if good:
                correct += 1
                keep.append(i)
                if len(keep) == n:
                    break
        if progress is not None:
            progress(len(idx))
        if len(keep) == n:
            break
    return Selection(keep, labels[keep].clone(), scanned, correct, int(seed), exclude_class)


# -- the attack, batch by batch ----------------------------------------------------


def batch_seed(seed: int, batch: int) -> int:
    """The seed of attack batch ``batch``: ``seed`` itself for the first batch, a SHA-256 mix of both after.

    One generator per batch, instead of one carried from batch to batch, makes each
    batch's draws (random starts, random targets, random masks) independent of how many
    draws the batches before it took, so any process can run any batch and get the
    single-process draws (the first batch, hence any run of one batch, draws as before).
    """
    if batch == 0:
        return int(seed)
    import hashlib

    return int.from_bytes(hashlib.sha256(f"patchlab-attack:{int(seed)}:{batch}".encode()).digest()[:8], "little") >> 1


def _to_cpu(r: AttackResult) -> AttackResult:
    from dataclasses import replace

    return replace(
        r,
        adversarial=r.adversarial.cpu(),
        labels=r.labels.cpu(),
        target=None if r.target is None else r.target.cpu(),
        predictions=r.predictions.cpu(),
        success=r.success.cpu(),
        l0=r.l0.cpu(),
        l2=r.l2.cpu(),
        linf=r.linf.cpu(),
        extras={k: v.cpu() for k, v in r.extras.items()},
    )


def attack_in_batches(
    fn: Callable[..., AttackResult],
    models: Sequence[nn.Module],
    images: torch.Tensor,
    target: Any,
    *,
    labels: torch.Tensor,
    batch_size: int,
    seed: int = 0,
    hyperparameters: dict[str, Any] | None = None,
    stop_models: Sequence[nn.Module] | None = None,
    progress: Callable[[int], None] | None = None,
    dist: DistContext | None = None,
) -> AttackResult:
    """Run attack ``fn`` on ``images`` in batches and join the results (:func:`concat_results`).

    Args:
        fn: an attack of :data:`patchlab.attacks.ATTACKS` (``fn(models, images, target, *,
            labels, generator, **hyperparameters)``).
        models: the source model(s); one is passed alone, several as an ensemble.
        images: ``(N, 3, H, W)`` float in [0, 1] (moved to the models' device batch by batch).
        target: the attack's target (class, ``"random"`` or ``None``).
        labels: ``(N,)`` true classes as the models' output indices.
        batch_size: images per attack call.
        seed: batch ``b`` draws from ``torch.Generator().manual_seed(batch_seed(seed, b))``.
        hyperparameters: the attack's keyword hyperparameters.
        stop_models: passed to attacks that take them (stAdv's ``released`` mode).
        progress: passed to attacks that report their steps (under torchrun: rank 0 counts
            the steps of every rank's batch of the round).
        dist: a torchrun group: batch ``b`` runs on rank ``b % world`` and the results are
            gathered on every rank, equal to one process's. Every rank of the group must call.

    Returns the joined result.
    """
    import inspect

    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    ctx = dist or DistContext()
    params = inspect.signature(fn).parameters
    dev = model_device(models[0])
    starts = range(0, images.shape[0], batch_size)
    mine: dict[int, AttackResult] = {}
    for b, s in enumerate(starts):
        if not ctx.owns(b):
            continue
        extra: dict[str, Any] = {}
        if "progress" in params and progress is not None and ctx.is_main:
            k = ctx.round_batches(b, len(starts))
            extra["progress"] = progress if k == 1 else (lambda n=1, k=k: progress(n * k))
        if stop_models is not None and "stop_models" in params:
            extra["stop_models"] = stop_models
        r = fn(
            models if len(models) > 1 else models[0],
            images[s : s + batch_size].to(dev),
            target,
            labels=labels[s : s + batch_size].to(dev),
            generator=torch.Generator().manual_seed(batch_seed(seed, b)),
            **(hyperparameters or {}),
            **extra,
        )
        mine[b] = _to_cpu(r) if ctx.active else r
    parts = ctx.gather_batches(mine, len(starts))
    return concat_results(parts)


# -- transfer ----------------------------------------------------------------------


@dataclass(frozen=True)
class TransferRow:
    """One target model of the transfer table (Ozbulak et al.'s source x target rates).

    ``untargeted``: of the images the attack fooled the source on *and* the target model
    classified correctly when clean, the share the target model now gets wrong;
    ``targeted``: of the images that reached the target on the source, the share that reach
    it on the target model (targeted attacks only); ``error``: the target model's error on
    all adversarial images.
    """

    model: str
    clean_accuracy: float
    untargeted: float
    untargeted_n: int
    targeted: float | None
    targeted_n: int
    error: float
    n: int
    predictions: list[int] = field(default_factory=list, repr=False)

    @property
    def untargeted_ci95(self) -> tuple[float, float]:
        return (
            wilson_interval(round(self.untargeted * self.untargeted_n), self.untargeted_n)
            if self.untargeted_n
            else (0.0, 1.0)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "clean_accuracy": self.clean_accuracy,
            "untargeted": self.untargeted,
            "untargeted_n": self.untargeted_n,
            "untargeted_ci95": list(self.untargeted_ci95),
            "targeted": self.targeted,
            "targeted_n": self.targeted_n,
            "error": self.error,
            "n": self.n,
            "predictions": list(self.predictions),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TransferRow":
        return cls(
            model=d["model"],
            clean_accuracy=d["clean_accuracy"],
            untargeted=d["untargeted"],
            untargeted_n=d["untargeted_n"],
            targeted=d.get("targeted"),
            targeted_n=d.get("targeted_n", 0),
            error=d["error"],
            n=d["n"],
            predictions=list(d.get("predictions", [])),
        )


@torch.no_grad()
def predict_sharded(
    models: Sequence[nn.Module], x: torch.Tensor, *, batch_size: int = 256, dist: DistContext | None = None
) -> torch.Tensor:
    """:func:`~patchlab.attacks.gradient.predict` on the CPU, chunk ``c`` of ``batch_size`` rows on rank
    ``c % world`` of ``dist``, gathered on every rank: the same chunks, hence the same classes, as one process."""
    ctx = dist or DistContext()
    if not ctx.active:
        return predict(models, x.to(model_device(models[0])), batch_size=batch_size).cpu()
    dev = model_device(models[0])
    starts = range(0, x.shape[0], batch_size)
    mine = {
        c: ensemble_logits(models, x[s : s + batch_size].to(dev)).argmax(1).cpu()
        for c, s in enumerate(starts)
        if ctx.owns(c)
    }
    parts = ctx.gather_batches(mine, len(starts))
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def _rate(hits: torch.Tensor, where: torch.Tensor) -> tuple[float, int]:
    k = int(where.sum())
    return (float(hits[where].float().mean()) if k else float("nan")), k


def transfer_table(
    result: AttackResult,
    originals: torch.Tensor,
    models: Sequence[nn.Module],
    *,
    names: Sequence[str] | None = None,
    batch_size: int = 256,
    dist: DistContext | None = None,
) -> list[TransferRow]:
    """How the adversarial images of ``result`` fare on other models (:class:`TransferRow` each).

    Args:
        result: the attack's result (its labels and targets are the first source model's indices).
        originals: the clean images ``(N, 3, H, W)`` in [0, 1].
        models: the target models; their labels must match the source's.
        names: row names (default: each model's ``name``).
        batch_size: images per forward pass.
        dist: a torchrun group: the forward passes are shared out (:func:`predict_sharded`);
            every rank gets the single-process table. Every rank must call.
    """
    rows = []
    for k, m in enumerate(models):
        ml = list(getattr(m, "labels", []))
        if result.class_names and ml and [s.lower() for s in ml] != [s.lower() for s in result.class_names]:
            raise ConfigError(
                f"transfer model {getattr(m, 'name', k)!r} has other classes than the source "
                f"({len(ml)} vs {len(result.class_names)} labels)"
            )
        clean = predict_sharded([m], originals, batch_size=batch_size, dist=dist)
        adv = predict_sharded([m], result.adversarial, batch_size=batch_size, dist=dist)
        wrong = adv != result.labels
        unt, unt_n = _rate(wrong, result.success & (clean == result.labels))
        tgt, tgt_n = (None, 0)
        if result.target is not None:
            tgt, tgt_n = _rate(adv == result.target, result.success)
        rows.append(
            TransferRow(
                model=names[k] if names else getattr(m, "name", f"model{k}"),
                clean_accuracy=float((clean == result.labels).float().mean()) if result.n else float("nan"),
                untargeted=unt,
                untargeted_n=unt_n,
                targeted=tgt,
                targeted_n=tgt_n,
                error=float(wrong.float().mean()) if result.n else float("nan"),
                n=result.n,
                predictions=adv.tolist(),
            )
        )
    return rows


def quantized_success(
    result: AttackResult, models: Sequence[nn.Module], *, batch_size: int = 256, dist: DistContext | None = None
) -> torch.Tensor:
    """Success per image after rounding the adversarial images to 8 bits, as the PNGs store them
    (``dist``: the forward passes shared out over a torchrun group, as in :func:`transfer_table`)."""
    q = (result.adversarial * 255.0).round() / 255.0
    pred = predict_sharded(models, q, batch_size=batch_size, dist=dist)
    return pred == result.target if result.target is not None else pred != result.labels


def concat_results(parts: Sequence[AttackResult]) -> AttackResult:
    """One result from the results of consecutive batches (same attack and config)."""
    if not parts:
        raise ConfigError("no attack result to join")
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    cat = lambda name: torch.cat([getattr(p, name) for p in parts])  # noqa: E731
    extras = {
        k: torch.cat([p.extras[k] for p in parts])
        for k in first.extras
        if all(k in p.extras and p.extras[k].shape[:1] == (p.n,) for p in parts)
    }
    return AttackResult(
        attack=first.attack,
        config=dict(first.config),
        adversarial=cat("adversarial"),
        labels=cat("labels"),
        target=None if first.target is None else cat("target"),
        predictions=cat("predictions"),
        success=cat("success"),
        l0=cat("l0"),
        l2=cat("l2"),
        linf=cat("linf"),
        class_names=list(first.class_names),
        extras=extras,
    )


# -- summary -------------------------------------------------------------------------


def scalar_extras(result: AttackResult) -> dict[str, torch.Tensor]:
    """The per-image scalar extras of a result (``(N,)`` tensors), e.g. stAdv's ``flow_loss``."""
    return {k: v for k, v in result.extras.items() if v.ndim == 1 and v.shape[0] == result.n}


def _mean_std(t: torch.Tensor) -> dict[str, float]:
    t = t.double()
    if t.numel() == 0:
        return {"mean": float("nan"), "std": float("nan")}
    return {"mean": float(t.mean()), "std": float(t.std(unbiased=False))}


def summarize(result: AttackResult) -> dict[str, Any]:
    """Success rate with its Wilson 95% interval, mean and std of L0/L2/Linf (all images and the
    successful ones) and the mean of every per-image scalar extra."""
    ok = result.success
    out: dict[str, Any] = {
        "n": result.n,
        "successes": int(ok.sum()),
        "success_rate": result.success_rate,
        "success_ci95": list(result.success_ci95),
    }
    for k in ("l0", "l2", "linf"):
        v = getattr(result, k)
        out[k] = _mean_std(v)
        out[f"{k}_successful"] = _mean_std(v[ok])
    out["extras"] = {
        k: float(v.double().mean()) if v.numel() else float("nan") for k, v in scalar_extras(result).items()
    }
    return out


# -- pictures --------------------------------------------------------------------------


def flow_to_rgb(flow: torch.Tensor) -> torch.Tensor:
    """A flow field ``(N, 2, H, W)`` (dx, dy) as colour-wheel images ``(N, 3, H, W)`` in [0, 1]:
    hue = direction, value = magnitude (scaled by the largest over the batch), full saturation."""
    f = flow.detach().double().cpu()
    mag = f.pow(2).sum(1).sqrt()
    ang = torch.atan2(f[:, 1], f[:, 0])
    hue = ((ang / (2 * math.pi)) % 1.0).numpy()
    val = (mag / mag.max().clamp_min(1e-12)).numpy()
    rgb = np.vectorize(colorsys.hsv_to_rgb)(hue, np.ones_like(hue), val)
    return torch.from_numpy(np.stack(rgb, axis=1)).float()


def amplify(delta: torch.Tensor) -> torch.Tensor:
    """Perturbations ``(N, 3, H, W)`` shown in [0, 1]: 0.5 + delta / (2 * max |delta|) per image."""
    scale = delta.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
    return (0.5 + delta / (2 * scale)).clamp(0, 1)


def _tile(img: torch.Tensor, scale: int) -> np.ndarray:
    a = (img.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return np.kron(a, np.ones((scale, scale, 1), dtype=np.uint8))


def render_grid(
    originals: torch.Tensor, result: AttackResult, *, columns: int = GRID_COLUMNS, min_tile: int = 96
) -> bytes:
    """The picture grid as PNG bytes: rows of originals (true label), amplified perturbations,
    adversarials (prediction, green when the attack succeeded) and, when ``extras`` holds a
    ``flow`` ``(N, 2, H, W)``, the flow as a colour wheel."""
    from PIL import Image, ImageDraw, ImageFont

    k = min(columns, result.n)
    if k == 0:
        raise ConfigError("no image to draw: the attack result is empty")
    x, adv = originals[:k].float().cpu(), result.adversarial[:k].float()
    rows: list[tuple[str, torch.Tensor, list[str], list[bool | None]]] = []
    names = result.class_names or [str(i) for i in range(int(max(result.labels.max(), result.predictions.max())) + 1)]
    lab = [names[int(i)] for i in result.labels[:k]]
    rows.append(("original", x, lab, [None] * k))
    rows.append(
        ("perturbation (amplified)", amplify(adv - x), [f"Linf {float(v):.3f}" for v in result.linf[:k]], [None] * k)
    )
    rows.append(
        ("adversarial", adv, [names[int(i)] for i in result.predictions[:k]], [bool(s) for s in result.success[:k]])
    )
    flow = result.extras.get("flow")
    if flow is not None and flow.ndim == 4 and flow.shape[1] == 2:
        rows.append(
            (
                "flow (hue = direction, value = magnitude)",
                flow_to_rgb(flow[:k]),
                [f"max {float(v):.2f}px" for v in flow[:k].pow(2).sum(1).sqrt().flatten(1).amax(1)],
                [None] * k,
            )
        )
    h, w = x.shape[-2:]
    scale = max(1, math.ceil(min_tile / max(h, w)))
    th, tw = h * scale, w * scale
    pad, text_h, title_h = 6, 14, 16
    W = k * (tw + pad) + pad
    H = len(rows) * (title_h + th + text_h + pad) + pad
    canvas = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    y = pad
    for title, imgs, captions, ok in rows:
        draw.text((pad, y), title, fill=(0, 0, 0), font=font)
        y += title_h
        for j in range(k):
            xo = pad + j * (tw + pad)
            canvas.paste(Image.fromarray(_tile(imgs[j], scale)), (xo, y))
            colour = (0, 0, 0) if ok[j] is None else ((0, 130, 0) if ok[j] else (200, 0, 0))
            draw.text((xo, y + th + 1), captions[j][: max(4, tw // 6)], fill=colour, font=font)
        y += th + text_h + pad
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def png_bytes(img: torch.Tensor) -> bytes:
    """One ``(3, H, W)`` image in [0, 1] as lossless 8-bit PNG bytes."""
    from PIL import Image

    a = (img.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


# -- the run folder --------------------------------------------------------------------


def image_records(
    result: AttackResult,
    paths: Sequence[str],
    saved: Sequence[str],
    success_png: torch.Tensor,
    transfer: Sequence[TransferRow],
) -> list[dict[str, Any]]:
    """One dict per attacked image for ``attack.json``."""
    names = result.class_names
    extras = scalar_extras(result)
    out = []
    for i in range(result.n):
        d: dict[str, Any] = {
            "source": paths[i],
            "adversarial": saved[i],
            "label": names[int(result.labels[i])] if names else int(result.labels[i]),
            "target": None
            if result.target is None
            else (names[int(result.target[i])] if names else int(result.target[i])),
            "prediction": names[int(result.predictions[i])] if names else int(result.predictions[i]),
            "success": bool(result.success[i]),
            "success_png": bool(success_png[i]),
            "l0": float(result.l0[i]),
            "l2": float(result.l2[i]),
            "linf": float(result.linf[i]),
        }
        d.update({k: float(v[i]) for k, v in extras.items()})
        if transfer:
            d["transfer"] = {t.model: (names[t.predictions[i]] if names else t.predictions[i]) for t in transfer}
        out.append(d)
    return out


def write_attack_run(
    out: str | Path,
    result: AttackResult,
    originals: torch.Tensor,
    *,
    paths: Sequence[str],
    record: dict[str, Any],
    transfer: Sequence[TransferRow] = (),
    success_png: torch.Tensor | None = None,
) -> dict[str, Path]:
    """Write a run folder: the adversarial PNGs, ``grid.png`` and, last, ``attack.json``.

    Args:
        out: the folder (created; files in it are replaced).
        result: the attack's result.
        originals: the clean images, ``(N, 3, H, W)`` in [0, 1].
        paths: the source file of each image (names the PNGs).
        record: the run's context (config, command, sources, data, seed, versions, ...),
            merged into ``attack.json``.
        transfer: the transfer table.
        success_png: success after 8-bit quantisation (default: recorded as ``success``).

    Returns:
        ``{"json": ..., "grid": ..., "images": folder}``.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    adv_dir = out / ADV_DIR
    adv_dir.mkdir(parents=True, exist_ok=True)
    saved = []
    for i in range(result.n):
        name = f"{i:05d}_{Path(paths[i]).stem}.png" if i < len(paths) else f"{i:05d}.png"
        atomic_write_bytes(adv_dir / name, png_bytes(result.adversarial[i]))
        saved.append(f"{ADV_DIR}/{name}")
    grid = atomic_write_bytes(out / GRID_PNG, render_grid(originals, result)) if result.n else None
    sp = result.success if success_png is None else success_png
    doc = {
        "kind": "attack",
        **record,
        "attack": result.attack,
        "config": dict(result.config),
        "summary": summarize(result),
        "success_png_rate": float(sp.float().mean()) if result.n else float("nan"),
        "transfer": [t.to_dict() for t in transfer],
        "images": image_records(result, paths, saved, sp, transfer),
        "grid": GRID_PNG if grid else None,
        "result": result.to_dict(),
    }
    path = atomic_write_json(out / ATTACK_JSON, doc)
    return {"json": path, "grid": grid, "images": adv_dir}


def read_attack_run(run_dir: str | Path) -> dict[str, Any]:
    """The ``attack.json`` of an attack run folder, with a clear error if it is not one."""
    p = Path(run_dir)
    if not (p / ATTACK_JSON).is_file():
        raise ConfigError(f"{p} is not an attack run folder (no {ATTACK_JSON}); make one with `patchlab attack`")
    return read_json_object(p / ATTACK_JSON, "attack record")


def is_attack_run(run_dir: str | Path) -> bool:
    return (Path(run_dir) / ATTACK_JSON).is_file()


__all__ = [
    "ADV_DIR",
    "ATTACK_JSON",
    "GRID_PNG",
    "Selection",
    "TransferRow",
    "amplify",
    "attack_in_batches",
    "batch_seed",
    "concat_results",
    "flow_to_rgb",
    "is_attack_run",
    "predict_sharded",
    "quantized_success",
    "read_attack_run",
    "render_grid",
    "scalar_extras",
    "select_correct",
    "summarize",
    "transfer_table",
    "write_attack_run",
]
