"""Does patch A beat patch B? A paired comparison on the same held-out images.

Two runs made with the same seed on the same data hold out the same images; judged
with the same placement seed, every model sees each image patched by A and by B at
the same spot. The difference in tSuc is then a paired difference: its interval comes
from a bootstrap over images (within each pair of runs, so several seeds pool as
strata), and McNemar's exact test looks at the images only one patch turned.
The mean transfer (over the models neither run was optimised on) is compared the
same way, image by image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from patchlab.data import ImageSet
from patchlab.distributed import DistContext
from patchlab.eot import PRESETS, EOTConfig
from patchlab.errors import ConfigError
from patchlab.models.wrapper import WrappedModel
from patchlab.stats import mcnemar_exact, paired_bootstrap
from patchlab.transfer import CleanCache

from .transfer import judge_run

#: bootstrap draws for the paired intervals
N_BOOT = 2000


@dataclass(frozen=True)
class PairedDifference:
    """A minus B on one statistic (one model's tSuc, or the mean transfer)."""

    name: str
    a: float
    b: float
    diff: float
    ci95: tuple[float, float]
    n: int  # paired images (non-target), pooled over run pairs
    a_only: int | None = None  # images only A turned into the target (one model)
    b_only: int | None = None
    p_mcnemar: float | None = None
    is_source: bool = False

    @property
    def significant(self) -> bool:
        """The 95 % interval excludes 0."""
        return self.ci95[0] > 0 or self.ci95[1] < 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci95"] = list(self.ci95)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PairedDifference":
        return cls(**{**d, "ci95": (float(d["ci95"][0]), float(d["ci95"][1]))})


@dataclass(frozen=True)
class RunPair:
    """One pair of runs compared: its target, the non-target held-out images judged, and
    each model's tSuc under patch A and patch B on those images."""

    run_a: str
    run_b: str
    target: str | None
    n: int
    sources: list[str]
    tsuc_a: dict[str, float]
    tsuc_b: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunPair":
        return cls(
            run_a=str(d["run_a"]),
            run_b=str(d["run_b"]),
            target=None if d.get("target") is None else str(d["target"]),
            n=int(d["n"]),
            sources=[str(s) for s in d.get("sources", [])],
            tsuc_a={str(k): float(v) for k, v in d.get("tsuc_a", {}).items()},
            tsuc_b={str(k): float(v) for k, v in d.get("tsuc_b", {}).items()},
        )


@dataclass(frozen=True)
class Comparison:
    """Runs A against runs B (paired index for index), per model and on mean transfer."""

    runs_a: list[str]
    runs_b: list[str]
    placement: str
    seed: int
    models: list[PairedDifference] = field(default_factory=list)
    mean_transfer: PairedDifference | None = None
    pairs: list[RunPair] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "runs_a": self.runs_a,
            "runs_b": self.runs_b,
            "placement": self.placement,
            "seed": self.seed,
            "models": [m.to_dict() for m in self.models],
            "mean_transfer": self.mean_transfer.to_dict() if self.mean_transfer else None,
            "pairs": [p.to_dict() for p in self.pairs],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Comparison":
        mt = d.get("mean_transfer")
        return cls(
            runs_a=list(d["runs_a"]),
            runs_b=list(d["runs_b"]),
            placement=str(d["placement"]),
            seed=int(d["seed"]),
            models=[PairedDifference.from_dict(m) for m in d.get("models", [])],
            mean_transfer=PairedDifference.from_dict(mt) if mt else None,
            pairs=[RunPair.from_dict(p) for p in d.get("pairs", [])],
        )


def compare_runs(
    runs_a: Sequence[str | Path],
    runs_b: Sequence[str | Path],
    models: Sequence[WrappedModel],
    *,
    placement: str | None = None,
    eot: EOTConfig = PRESETS["none"],
    seed: int = 0,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    n_boot: int = N_BOOT,
    progress: Callable[[int], None] | None = None,
    dist: DistContext | None = None,
) -> Comparison:
    """Compare patches A and B (``runs_a[i]`` paired with ``runs_b[i]``) on the same images.

    ``dist``: share each run's images out over a torchrun group (:func:`judge_run`); every
    rank gets one process's outcomes, so the comparison is one process's, bit for bit.

    Raises:
        ConfigError: the lists differ in length, or a pair does not share its held-out images.
    """
    if len(runs_a) != len(runs_b) or not runs_a:
        raise ConfigError(f"give as many A runs as B runs to pair them (got {len(runs_a)} and {len(runs_b)})")
    clean: CleanCache = {}
    data: dict[str, ImageSet] = {}
    hits_a, hits_b, strata, sources = [], [], [], set()
    per_pair: list[RunPair] = []
    placements = set()
    for j, (ra, rb) in enumerate(zip(runs_a, runs_b)):
        rec_a, imgs_a, pl_a, oa = judge_run(
            ra,
            models,
            placement=placement,
            eot=eot,
            seed=seed,
            batch_size=batch_size,
            device=device,
            clean_cache=clean,
            data_cache=data,
            progress=progress,
            dist=dist,
        )
        rec_b, imgs_b, pl_b, ob = judge_run(
            rb,
            models,
            placement=placement or pl_a,
            eot=eot,
            seed=seed,
            batch_size=batch_size,
            device=device,
            clean_cache=clean,
            data_cache=data,
            progress=progress,
            dist=dist,
        )
        if imgs_a.paths != imgs_b.paths:
            raise ConfigError(
                f"{ra} and {rb} were not judged on the same held-out images (split seeds "
                f"{rec_a.seed} and {rec_b.seed}, data {rec_a.data_root} / "
                f"{rec_b.data_root}): pair runs made with the same --seed on the same data"
            )
        if rec_a.target_class != rec_b.target_class:
            raise ConfigError(f"{ra} aims at {rec_a.target_class!r} but {rb} at {rec_b.target_class!r}")
        keep = oa.non_target
        hits_a.append(oa.hit[:, keep].numpy())
        hits_b.append(ob.hit[:, keep].numpy())
        per_pair.append(
            RunPair(
                run_a=str(ra),
                run_b=str(rb),
                target=rec_a.target_class,
                n=int(keep.sum()),
                sources=sorted(set(rec_a.source_names) | set(rec_b.source_names)),
                tsuc_a=dict(zip(oa.models, hits_a[-1].mean(1).tolist())),
                tsuc_b=dict(zip(ob.models, hits_b[-1].mean(1).tolist())),
            )
        )
        strata.append(np.full(int(keep.sum()), j))
        sources |= set(rec_a.source_names) | set(rec_b.source_names)
        placements.add(pl_a)
    # a source judged behind a defence (eval compare --defense) is still the patches' white box
    from patchlab.defenses.model import defended_names

    sources |= {n for n, base in defended_names(models).items() if base in sources}
    A, B, S = np.concatenate(hits_a, 1), np.concatenate(hits_b, 1), np.concatenate(strata)
    names = [m.name for m in models]
    mean, (lo, hi) = paired_bootstrap(A.astype(float) - B, S, n_boot=n_boot, seed=seed)
    rows = []
    for i, name in enumerate(names):
        a_only, b_only, p = mcnemar_exact(A[i], B[i])
        rows.append(
            PairedDifference(
                name=name,
                a=float(A[i].mean()),
                b=float(B[i].mean()),
                diff=float(mean[i]),
                ci95=(float(lo[i]), float(hi[i])),
                n=int(A.shape[1]),
                a_only=a_only,
                b_only=b_only,
                p_mcnemar=p,
                is_source=name in sources,
            )
        )
    others = [i for i, n in enumerate(names) if n not in sources]
    mt = None
    if others:
        ta, tb = A[others].mean(0), B[others].mean(0)  # per image: share of the other models fooled
        d, ci = paired_bootstrap(ta - tb, S, n_boot=n_boot, seed=seed)
        mt = PairedDifference(
            name="mean transfer", a=float(ta.mean()), b=float(tb.mean()), diff=d, ci95=ci, n=int(A.shape[1])
        )
    return Comparison(
        runs_a=[str(r) for r in runs_a],
        runs_b=[str(r) for r in runs_b],
        placement="/".join(sorted(placements)),
        seed=seed,
        models=rows,
        mean_transfer=mt,
        pairs=per_pair,
    )


__all__ = ["Comparison", "N_BOOT", "PairedDifference", "RunPair", "compare_runs"]
