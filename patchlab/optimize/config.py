"""The patch optimiser's settings: one frozen, validated record of every option.

:class:`OptimizeConfig` is what :class:`~patchlab.optimize.PatchAttack` holds, what a
run folder stores as ``run.json["config"]`` and what ``--resume`` compares.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from .. import losses as L
from ..eot import PRESETS, EOTConfig
from ..errors import ConfigError

OPTIMIZERS = ("adam", "sgd")
INITS = ("random", "gray")
LR_SCHEDULES = ("constant", "cosine")
#: ``auto``: bfloat16 autocast on a CUDA device that supports it, float32 elsewhere.
PRECISIONS = ("auto", "fp32", "bf16")
#: the cosine schedule ends at this fraction of the initial learning rate
COSINE_FLOOR = 0.01
#: Config fields that may change when a run is resumed (they do not change the patch's path).
RESUMABLE_FIELDS = ("steps", "checkpoint_every", "log_every", "precision", "channels_last", "compile")
#: The OT patch paper's layers (eq. 3 sums the OT distance over several encoder depths
#: and the pre-logit features): half-way, three quarters of the way, and the classifier's input.
PAPER_LAYERS = "depth:0.5,depth:0.75,auto"
#: How long a regulariser step of weight 1 is, as a fraction of the (unit-norm) attack step.
#: The OT patch authors' code normalises its smoothness gradient and adds 0.1 of it; a
#: weight ``w`` adds ``w * REGULARIZER_UNIT`` of a unit step, whatever the patch size.
REGULARIZER_UNIT = 0.1

#: A projection bank is redrawn when each of its directions has been used this many times
#: on average (every ``BANK_REUSE * projection_bank`` steps).
BANK_REUSE = 10


@dataclass(frozen=True)
class OptimizeConfig:
    """Every option of a patch optimisation; stored in ``run.json`` as ``config``.

    Attributes:
        target: target class name (``None``: untargeted, ``ce`` only).
        loss: one of :data:`patchlab.losses.LOSS_NAMES`.
        steps, batch_size, lr, optimizer: the descent (Adam or SGD with momentum 0.9).
        lr_schedule: ``constant``, or ``cosine`` from ``lr`` down to ``COSINE_FLOOR * lr``
            at ``steps`` (then ``steps`` is part of the path and cannot change on resume).
        frac, shape, patch_px: patch area fraction of the image, square/circle, and
            its resolution in patch pixels (``None``: one patch pixel per image pixel).
        placement, position, eot, eot_name: where and how the patch is rendered.
        layers: feature layer spec (``auto``, ``depth:F``, names; see :mod:`patchlab.features`);
            the default is the paper's several depths plus the pre-logit features.
        projections: random directions per step for ``sw``.
        projection_bank: ``sw`` draws each step's directions from a bank of
            ``projection_bank * projections`` uniform directions whose target projections
            are sorted once (:class:`patchlab.losses.ProjectionBank`), redrawn every
            ``BANK_REUSE * projection_bank`` steps; ``0``: fresh directions every step.
        tv, nps: weights of total variation and non-printability. With ``grad_norm`` each
            regulariser's gradient is normalised like a model's and a weight ``w`` adds
            ``w * REGULARIZER_UNIT`` of a unit step (the same meaning at every patch size);
            without it the weighted terms join the loss before one gradient.
        palette: the NPS colours' file; calib: printer-to-camera colour transform
            (``color.json``) applied in rendering, and NPS is then measured on the
            rendered colours (the palette's colour space).
        frame_markers: render the printed marker frame around the patch.
        seed: the run's one seed (batches, EOT draws, projections, init).
        holdout_frac: share of the data a run folder holds out to judge the patch.
        target_images: at most this many target-class images for the target features.
        grad_norm: normalise each source model's gradient to unit norm before averaging.
        init: ``random`` (uniform) or ``gray`` (0.5) initial patch.
        checkpoint_every, log_every: checkpoint / history period in steps. The loop reads
            nothing back from the device between these points (no per-step sync): the
            loss, success and NaN checks are device tensors read every ``log_every`` steps.
        precision: ``fp32``, ``bf16`` (the models run under bfloat16 autocast; the patch,
            the rendering and the losses stay float32) or ``auto`` (bf16 on CUDA devices
            that support it).
        channels_last: feed the models channels-last batches (``None``: on CUDA).
        compile: run the source models through ``torch.compile``.
        defense: an input defence in front of every source model (:func:`patchlab.defenses.get_defense`
            spec): the attack is adaptive, through the defence, with BPDA where the defence has
            no gradient (jpeg, median, bitdepth); stored as that canonical spec (``jpeg:bpda``).
    """

    target: str | None = None
    loss: str = "sw"
    steps: int = 500
    batch_size: int = 64
    lr: float = 0.03
    optimizer: str = "adam"
    lr_schedule: str = "constant"
    frac: float = 0.1
    shape: str = "square"
    patch_px: int | None = None
    placement: str = "side"
    position: tuple[float, float] | None = None
    eot: EOTConfig = PRESETS["none"]
    eot_name: str = "none"
    layers: str = PAPER_LAYERS
    projections: int = L.DEFAULT_PROJECTIONS
    projection_bank: int = 8
    tv: float = 1.0
    nps: float = 0.0
    palette: str | None = None
    calib: str | None = None
    frame_markers: bool = False
    seed: int = 0
    holdout_frac: float = 0.2
    target_images: int | None = None
    grad_norm: bool = True
    init: str = "random"
    checkpoint_every: int = 50
    log_every: int = 10
    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool = False
    defense: str = "none"

    def __post_init__(self) -> None:
        from ..defenses import adaptive

        # canonical and adaptive: "jpeg", "jpeg:75" and "jpeg:bpda" are one setting (a bad spec
        # raises ConfigError with one line)
        object.__setattr__(self, "defense", adaptive(self.defense).spec)
        if self.loss not in L.LOSS_NAMES:
            raise ConfigError(f"unknown loss {self.loss!r}; choose one of {', '.join(L.LOSS_NAMES)}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose {' or '.join(OPTIMIZERS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"unknown lr schedule {self.lr_schedule!r}; choose {' or '.join(LR_SCHEDULES)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.init not in INITS:
            raise ConfigError(f"unknown init {self.init!r}; choose {' or '.join(INITS)}")
        for name in ("steps", "batch_size", "projections", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr}")
        for name in ("tv", "nps"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"the {name} weight must be a finite number >= 0, got {v}")
        if not (math.isfinite(self.frac) and 0.0 < self.frac < 1.0):
            raise ConfigError(f"patch-frac must be in (0, 1), got {self.frac}")
        if not (math.isfinite(self.holdout_frac) and 0.0 <= self.holdout_frac < 1.0):
            raise ConfigError(f"holdout-frac must be in [0, 1), got {self.holdout_frac}")
        if self.patch_px is not None and self.patch_px < 1:
            raise ConfigError(f"patch-px must be >= 1, got {self.patch_px}")
        if self.projection_bank < 0:
            raise ConfigError(
                f"projection-bank must be >= 0 (0: fresh directions every step), got {self.projection_bank}"
            )
        if self.target_images is not None and self.target_images < 1:
            raise ConfigError(f"target-images must be >= 1, got {self.target_images}")
        if self.target is None and self.loss != "ce":
            raise ConfigError(
                f"an untargeted patch (no target) needs loss 'ce'; the {self.loss} loss pulls the "
                "features towards a target class"
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["eot"] = self.eot.to_dict()
        d["position"] = list(self.position) if self.position is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "OptimizeConfig":
        kw = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        kw.setdefault("projection_bank", 0)  # records from before the bank drew fresh directions
        kw["eot"] = EOTConfig.from_dict(dict(d.get("eot", {})), source="run config")
        if kw.get("position") is not None:
            kw["position"] = tuple(kw["position"])
        return cls(**kw)


__all__ = [
    "BANK_REUSE",
    "COSINE_FLOOR",
    "INITS",
    "LR_SCHEDULES",
    "OPTIMIZERS",
    "OptimizeConfig",
    "PAPER_LAYERS",
    "PRECISIONS",
    "REGULARIZER_UNIT",
    "RESUMABLE_FIELDS",
]
