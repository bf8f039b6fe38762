"""The optimiser's run folder: the contract between ``optimize`` and every later stage.

A run folder (``patchlab optimize --out RUN_DIR``) holds::

    patch.png        the patch, lossless 8-bit RGB, (h, w) pixels: what gets printed
    patch.npy        the float patch, (3, h, w) float32 in [0, 1]
    run.json         the run record (below), rewritten atomically as the run goes
    checkpoint.pt    optimiser state for ``--resume`` (written atomically)
    transfer.json    written by ``patchlab eval transfer RUN_DIR`` (same shape as its --json)

``run.json`` keys (all present once a run has started):

* ``run_id`` (the folder name), ``status`` (``running`` | ``finished`` |
  ``interrupted`` | ``diverged``), ``message`` (why it stopped, for the latter two);
* ``target_class`` (name), ``target_index`` (index in the first source's labels),
  ``seed``;
* ``config``: every resolved option of the command (loss, steps, patch size,
  placement, EOT ranges, layers, ...); ``command``: the argv that produced it;
* ``sources``: model provenance dicts (:meth:`patchlab.models.ModelInfo.to_dict`,
  card included) and ``layers``: the feature layers used per source;
* ``patch``: ``{"pixels": [w, h], "shape": "square"|"circle", "frac": area fraction,
  "side_px": side in image pixels}``;
* ``data``: ``{"root", "n_images", "image_size", "classes"}`` and ``split``:
  :meth:`patchlab.data.Split.to_dict` (the held-out indices judge the patch);
* ``history``: one dict per logged step, ``{"step", "loss", "terms": {name: value},
  "tsuc": running white-box tSuc on the training batches}``;
* ``versions`` (:func:`patchlab.utils.versions`), ``started``/``finished`` (ISO times),
  ``seconds``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import ConfigError
from .utils import atomic_write_bytes, read_json_object

PATCH_PNG = "patch.png"
PATCH_FLOAT = "patch.npy"
RUN_JSON = "run.json"
CHECKPOINT = "checkpoint.pt"
TRANSFER_JSON = "transfer.json"


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """The ``run.json`` of a run folder, with a clear error if it is not one."""
    p = Path(run_dir)
    if not p.is_dir():
        raise ConfigError(f"run folder not found: {p}")
    if not (p / RUN_JSON).is_file():
        raise ConfigError(f"{p} is not a patchlab run folder (no {RUN_JSON}); make one with `patchlab optimize`")
    return read_json_object(p / RUN_JSON, "run record")


#: run statuses after which nothing more will be written
FINAL_STATUSES = ("finished", "interrupted", "diverged", "error")


@dataclass(frozen=True)
class RunRecord:
    """A run folder's ``run.json`` as an object (see the module docstring for the keys).

    Built by :meth:`from_dict` from what :func:`patchlab.optimize.run_optimization`
    writes; keys it does not know are kept in ``extra``, so :meth:`to_dict` gives back
    what was read.
    """

    run_id: str
    status: str
    target_class: str | None
    seed: int
    config: dict[str, Any]
    sources: list[dict[str, Any]]
    patch: dict[str, Any]
    data: dict[str, Any]
    split: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""
    target_index: int | None = None
    layers: dict[str, Any] = field(default_factory=dict)
    step: int = 0
    seconds: float = 0.0
    started: str | None = None
    finished: str | None = None
    versions: dict[str, Any] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)
    attack: str = ""
    limit_per_class: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def source_names(self) -> list[str]:
        return [str(s.get("name")) for s in self.sources]

    @property
    def holdout(self) -> list[int]:
        return [int(i) for i in self.split.get("holdout", [])]

    @property
    def frac(self) -> float:
        return float(self.config.get("frac", self.patch.get("frac", 0.0)))

    @property
    def final_tsuc(self) -> float | None:
        return float(self.history[-1]["tsuc"]) if self.history else None

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        if d["limit_per_class"] is None:  # written only by runs that limited their data
            del d["limit_per_class"]
        return {**d, **self.extra}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunRecord":
        known = {f.name for f in fields(cls)} - {"extra"}
        missing = [k for k in ("target_class", "config") if k not in d]
        if missing:
            raise ConfigError(f"run record lacks {', '.join(missing)}: not a patchlab run.json")
        kw: dict[str, Any] = {k: d[k] for k in known if k in d and d[k] is not None or k in ("target_class",)}
        kw.setdefault("run_id", str(d.get("run_id", "")))
        kw.setdefault("status", str(d.get("status", "unknown")))
        kw.setdefault("seed", int(d.get("config", {}).get("seed", 0)))
        for k in ("sources", "data", "split", "patch"):
            kw.setdefault(k, [] if k == "sources" else {})
        return cls(**kw, extra={k: v for k, v in d.items() if k not in known})


def load_run(run_dir: str | Path) -> RunRecord:
    """The run record of a run folder as a :class:`RunRecord` (clear errors as :func:`read_run`)."""
    return RunRecord.from_dict(read_run(run_dir))


def read_patch(run_dir: str | Path) -> np.ndarray:
    """The run's patch as ``(3, h, w)`` float32 in [0, 1]: the float file when present, else the PNG."""
    p = Path(run_dir)
    f = p / PATCH_FLOAT
    if f.is_file():
        a = np.load(f, allow_pickle=False)
        if a.ndim != 3 or a.shape[0] != 3:
            raise ConfigError(f"{f} holds shape {a.shape}, expected (3, h, w)")
        return np.clip(a.astype(np.float32), 0.0, 1.0)
    png = p / PATCH_PNG
    if not png.is_file():
        raise ConfigError(f"{p} has neither {PATCH_FLOAT} nor {PATCH_PNG}")
    from .data import read_image

    return read_image(png).numpy()


def patch_to_png(patch: np.ndarray) -> bytes:
    """``(3, h, w)`` float in [0, 1] -> lossless 8-bit PNG bytes."""
    from PIL import Image

    arr = np.clip(np.round(np.transpose(patch, (1, 2, 0)) * 255.0), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def write_patch(run_dir: str | Path, patch: torch.Tensor | np.ndarray) -> None:
    """Write ``patch.png`` and ``patch.npy`` (``(3, h, w)`` in [0, 1]) atomically: :func:`read_patch`'s twin."""
    t = torch.as_tensor(patch)
    arr = t.detach().cpu().float().clamp(0, 1).numpy()
    atomic_write_bytes(Path(run_dir) / PATCH_PNG, patch_to_png(arr))
    buf = io.BytesIO()
    np.save(buf, arr.astype(np.float32), allow_pickle=False)
    atomic_write_bytes(Path(run_dir) / PATCH_FLOAT, buf.getvalue())
