"""Defences: input filters and robust models (``patchlab.defenses``).

* :func:`get_defense` parses a spec (``none``, ``blur[:SIGMA]``, ``median[:K]``,
  ``jpeg[:Q]``, ``bitdepth[:BITS]``, ``lgs[:window=15,overlap=5,threshold=0.1,smoothing=2.3]``,
  any of them with ``,bpda`` where the defence is not differentiable) into a batched
  torch module on the input's device.
* :func:`defend` puts a :class:`WrappedModel` behind a defence; the result is a model
  like any other, named ``"{model}+{spec}"``.
* :mod:`patchlab.defenses.train` fine-tunes a model adversarially
  (``patchlab defend train``).
"""

from .filters import (
    DEFENSES,
    BitDepth,
    Defense,
    GaussianBlur,
    Jpeg,
    LocalGradientsSmoothing,
    MedianFilter,
    get_defense,
    list_defenses,
    register_defense,
)
from .model import DefendedModel, defend

__all__ = [
    "DEFENSES",
    "BitDepth",
    "Defense",
    "DefendedModel",
    "GaussianBlur",
    "Jpeg",
    "LocalGradientsSmoothing",
    "MedianFilter",
    "defend",
    "get_defense",
    "list_defenses",
    "register_defense",
]
