"""patchlab: physical-world adversarial patches, from optimisation to a scored camera.

Core package. The stage packages (``patchlab.calib``, ``patchlab.print``,
``patchlab.capture``, ``patchlab.eval``) live in the repository's top-level stage
folders and depend on this core; the core never imports a stage.

From Python::

    m = patchlab.wrap(net, mean=..., std=..., input_size=(3, 32, 32), labels=classes)
    res = patchlab.PatchAttack(loss="sw", steps=300)(m, images, target="frog")
    patchlab.evaluate(res, [m], images, labels, target="frog")
"""

__version__ = "0.1.0"

from .errors import ConfigError, DataError, ModelLoadError, PatchlabError  # noqa: E402
from .api import apply_patch, evaluate, wrap  # noqa: E402
from .data import ImageSet, load_folder  # noqa: E402
from .defenses import defend  # noqa: E402
from .models import load_model  # noqa: E402
from .optimize import PatchAttack, PatchResult  # noqa: E402
from .transfer import ModelTransfer, TransferResult  # noqa: E402

__all__ = [
    "__version__",
    "PatchlabError",
    "ModelLoadError",
    "DataError",
    "ConfigError",
    "ImageSet",
    "ModelTransfer",
    "PatchAttack",
    "PatchResult",
    "TransferResult",
    "apply_patch",
    "defend",
    "evaluate",
    "load_folder",
    "load_model",
    "wrap",
]
