"""The patch optimiser, one job per file.

* :mod:`.config` — :class:`OptimizeConfig`, every option, validated;
* :mod:`.loop` — :class:`PatchOptimizer`, the loop with hooks, and its state;
* :mod:`.attack` — :class:`PatchAttack` and :class:`PatchResult`: the library call;
* :mod:`.run` — run folders around it: split, record, checkpoints, resume.
"""

from .attack import PatchAttack, PatchResult, PreparedAttack, resolve_patch_target
from .config import PAPER_LAYERS, REGULARIZER_UNIT, OptimizeConfig
from .loop import LoopState, OptimizationDiverged, PatchOptimizer, StepInfo
from .run import PreparedRun, RunResult, prepare_run, prepare_stream_run, run_optimization

__all__ = [
    "LoopState",
    "OptimizationDiverged",
    "OptimizeConfig",
    "PAPER_LAYERS",
    "PatchAttack",
    "PatchOptimizer",
    "PatchResult",
    "PreparedAttack",
    "PreparedRun",
    "REGULARIZER_UNIT",
    "RunResult",
    "StepInfo",
    "prepare_run",
    "prepare_stream_run",
    "resolve_patch_target",
    "run_optimization",
]
