"""Transfer matrices: patches (rows) judged on models (columns), the OT patch paper's table shape.

Each row is one run's patch; each cell its tSuc on one model. Per row, the mean,
min and max over the models the patch was *not* optimised against are the transfer
figures; the source models' cells are the white-box figures.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from patchlab.data import ImageSet
from patchlab.distributed import DistContext
from patchlab.eot import PRESETS, EOTConfig
from patchlab.models.wrapper import WrappedModel
from patchlab.optimize.config import OptimizeConfig
from patchlab.runs import RunRecord, load_run
from patchlab.errors import ConfigError
from patchlab.utils import atomic_write_json, atomic_write_text, read_json_object

from .transfer import CleanCache, TransferResult, evaluate_run


@dataclass(frozen=True)
class MatrixRow:
    """One patch across the models."""

    run_id: str
    run_dir: str
    label: str
    loss: str
    sources: list[str]
    target_class: str
    frac: float
    tsuc: dict[str, float]
    ci95: dict[str, list[float]]
    white_box: float | None  # mean tSuc on the source models present among the columns
    mean_transfer: float | None
    min_transfer: float | None
    max_transfer: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MatrixRow":
        """Read a row back; the summary figures a row may lack (none measured) are None."""
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        for k in ("white_box", "mean_transfer", "min_transfer", "max_transfer"):
            kw.setdefault(k, None)
        kw.setdefault("label", str(kw.get("run_id", "")))
        kw.setdefault("ci95", {})
        try:
            return cls(**kw)
        except TypeError as exc:
            raise ConfigError(f"a transfer matrix row lacks a field: {exc}") from exc


@dataclass(frozen=True)
class MatrixResult:
    """The whole matrix, with what it was measured under."""

    models: list[str]
    rows: list[MatrixRow] = field(default_factory=list)
    placement: str | None = None
    eot: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "models": self.models,
            "placement": self.placement,
            "eot": self.eot,
            "seed": self.seed,
            "runs": [r.to_dict() for r in self.rows],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MatrixResult":
        return cls(
            models=list(d["models"]),
            rows=[MatrixRow.from_dict(r) for r in d.get("runs", [])],
            placement=d.get("placement"),
            eot=dict(d.get("eot", {})),
            seed=int(d.get("seed", 0)),
        )

    @property
    def defense(self) -> str | None:
        """The input defence the models were judged behind (``eval matrix --defense``), or None."""
        d = self.eot.get("defense")
        return None if d is None else str(d)

    @classmethod
    def read(cls, path: str | Path) -> "MatrixResult":
        """A ``matrix.json`` (or the folder holding one)."""
        p = Path(path)
        p = p / "matrix.json" if p.is_dir() else p
        d = read_json_object(p, "transfer matrix", missing="make one with `patchlab eval matrix`")
        if "runs" not in d or "models" not in d:
            raise ConfigError(
                f"{p} is not a transfer matrix (no 'runs'/'models'): make one with `patchlab eval matrix`"
            )
        return cls.from_dict(d)

    def to_markdown(self) -> str:
        """A markdown table: one row per patch, tSuc per model (source cells marked *), then mean/min/max."""
        head = ["patch", *self.models, "mean", "min", "max"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            cells = [r.label]
            for m in self.models:
                v = r.tsuc.get(m)
                cells.append("" if v is None else f"{v:.1%}" + ("*" if m in r.sources else ""))
            for v in (r.mean_transfer, r.min_transfer, r.max_transfer):
                cells.append("" if v is None else f"{v:.1%}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines.append(
            "tSuc on held-out non-target images; * = source model (white-box); mean/min/max over the "
            "other models (transfer)."
        )
        return "\n".join(lines) + "\n"

    def heatmap(self, path: str | Path) -> Path:
        """Save a heatmap PNG of the matrix (rows: patches, columns: models, source cells outlined)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle

        a = np.array([[r.tsuc.get(m, np.nan) for m in self.models] for r in self.rows], dtype=float)
        fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(self.models), 1.0 + 0.38 * max(1, len(self.rows))), dpi=120)
        im = ax.imshow(a * 100, vmin=0, vmax=100, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(self.models)), [_short(m) for m in self.models], rotation=35, ha="right")
        ax.set_yticks(range(len(self.rows)), [r.label for r in self.rows])
        for i, r in enumerate(self.rows):
            for j, m in enumerate(self.models):
                if np.isfinite(a[i, j]):
                    ax.text(
                        j,
                        i,
                        f"{a[i, j] * 100:.0f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if a[i, j] < 0.6 else "black",
                    )
                if m in r.sources:
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=1.5, ec="red"))
        fig.colorbar(im, ax=ax, label="tSuc (%)")
        ax.set_title("transfer matrix (red: source model)", fontsize=9)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
        plt.close(fig)
        return path

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``matrix.json``, ``matrix.md`` and ``matrix.png`` into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        return {
            "json": atomic_write_json(out / "matrix.json", self.to_dict()),
            "markdown": atomic_write_text(out / "matrix.md", self.to_markdown()),
            "heatmap": self.heatmap(out / "matrix.png"),
        }


_DEFAULTS = {f.name: f.default for f in fields(OptimizeConfig)}


def _short(name: str) -> str:
    return name.split("-", 1)[1] if name.startswith("cifar10-") else name


def row_label(record: RunRecord | dict[str, Any]) -> str:
    """``loss frac% source -> target`` (plus the knobs that differ from the defaults) for a run record."""
    rec = record if isinstance(record, RunRecord) else RunRecord.from_dict(record)
    cfg = rec.config
    src = "+".join(_short(n) for n in rec.source_names)
    label = f"{rec.loss or '?'} {rec.frac:.0%} {src}->{rec.target_class or 'untargeted'}"
    if rec.loss != "ce" and (rec.layer_spec or _DEFAULTS["layers"]) != _DEFAULTS["layers"]:
        label += f" [{rec.layer_spec}]"
    if cfg.get("eot_name", "none") != "none":
        label += f" eot={Path(str(cfg['eot_name'])).stem}"
    # the other knobs a study varies, only where they differ from the defaults
    knobs = [
        ("projections", "proj", rec.loss == "sw"),
        ("target_images", "timg", rec.loss != "ce"),
        ("tv", "tv", True),
        ("nps", "nps", True),
    ]
    for key, short, applies in knobs:
        if applies and key in cfg and cfg[key] != _DEFAULTS[key]:
            label += f" {short}={cfg[key]}"
    return label


def matrix_row(run_dir: str | Path, result: TransferResult, record: RunRecord) -> MatrixRow:
    by = result.by_name()
    sources = record.source_names
    others = [m.tsuc for m in result.models if not m.is_source]
    wb = [m.tsuc for m in result.models if m.is_source]
    return MatrixRow(
        run_id=result.run_id,
        run_dir=str(run_dir),
        label=row_label(record),
        loss=str(record.loss),
        sources=sources,
        target_class=result.target_class,
        frac=record.frac,
        tsuc={n: m.tsuc for n, m in by.items()},
        ci95={n: list(m.ci95) for n, m in by.items()},
        white_box=float(np.mean(wb)) if wb else None,
        mean_transfer=float(np.mean(others)) if others else None,
        min_transfer=float(np.min(others)) if others else None,
        max_transfer=float(np.max(others)) if others else None,
    )


def transfer_matrix(
    run_dirs: Sequence[str | Path],
    models: Sequence[WrappedModel],
    *,
    placement: str | None = None,
    eot: EOTConfig = PRESETS["none"],
    eot_name: str = "none",
    seed: int = 0,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    on_run: Callable[[int, str], None] | None = None,
    progress: Callable[[int], None] | None = None,
    dist: DistContext | None = None,
) -> MatrixResult:
    """Judge every run's patch on every model (held-out images of each run, shared clean predictions).

    ``dist`` shards each run's images over a torchrun group (every rank must call); every
    rank returns the single-process matrix.
    """
    clean: CleanCache = {}
    data: dict[str, ImageSet] = {}
    rows = []
    for i, rd in enumerate(run_dirs):
        if on_run is not None:
            on_run(i, str(rd))
        rec = load_run(rd)
        res = evaluate_run(
            rd,
            models,
            placement=placement,
            eot=eot,
            eot_name=eot_name,
            seed=seed,
            batch_size=batch_size,
            device=device,
            clean_cache=clean,
            data_cache=data,
            progress=progress,
            dist=dist,
        )
        rows.append(matrix_row(rd, res, rec))
    return MatrixResult(
        models=[m.name for m in models],
        rows=rows,
        placement=placement,
        eot={"name": eot_name, **eot.to_dict()},
        seed=seed,
    )
