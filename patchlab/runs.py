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
