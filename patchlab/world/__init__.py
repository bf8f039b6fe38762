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

from .make import (WORLD_VERSION, WorldConfig, WorldInfo, ensure_world, make_world, read_world,
                   world_cache_dir)
from .signs import sign_classes
from .train import (DEFAULT_MODELS, ZOO_VERSION, ModelSpec, TrainConfig, ZooInfo, ZooModel, ensure_zoo,
                    read_zoo, train_model, train_zoo, zoo_cache_dir)

__all__ = ["DEFAULT_MODELS", "WORLD_VERSION", "ZOO_VERSION", "ModelSpec", "TrainConfig", "WorldConfig",
           "WorldInfo", "ZooInfo", "ZooModel", "ensure_world", "ensure_zoo", "make_world", "read_world",
           "read_zoo", "sign_classes", "train_model", "train_zoo", "world_cache_dir", "zoo_cache_dir"]
