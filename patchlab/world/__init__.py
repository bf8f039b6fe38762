"""The embedded default world: procedural traffic signs and three small models.

A user with no camera, printer, GPU or internet still has a data set and a model
zoo to run the whole mission on::

    from patchlab.world import ensure_world, ensure_zoo

    world = ensure_world(n_per_class=500, size=64, seed=0)   # cached under $PATCHLAB_CACHE
    zoo = ensure_zoo(world, seed=0, device="cpu")             # cached too
    zoo.card("lenet")                                         # a model card for --source

* :mod:`patchlab.world.signs` draws the signs, backgrounds, poses and road scenes;
* :mod:`patchlab.world.make` writes a world folder (:func:`make_world`);
* :mod:`patchlab.world.train` trains the zoo (:func:`train_zoo`).
"""

from __future__ import annotations

import importlib
from typing import Any

# Names resolve lazily (PEP 562), so the drawing workers, which import only
# ``patchlab.world._draw``, start without importing torch.
_EXPORTS = {
    "make": (
        "WORLD_VERSION",
        "WorldConfig",
        "WorldInfo",
        "ensure_world",
        "make_world",
        "read_world",
        "world_cache_dir",
    ),
    "signs": ("sign_classes",),
    "train": (
        "DEFAULT_MODELS",
        "ZOO_VERSION",
        "ModelSpec",
        "TrainConfig",
        "ZooInfo",
        "ZooModel",
        "ensure_zoo",
        "read_zoo",
        "train_model",
        "train_zoo",
        "zoo_cache_dir",
    ),
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
