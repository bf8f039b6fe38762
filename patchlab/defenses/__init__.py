"""Defences: input filters and robust models (``patchlab.defenses``).

* :func:`get_defense` parses a spec (``none``, ``blur[:SIGMA]``, ``median[:K]``,
  ``jpeg[:Q]``, ``bitdepth[:BITS]``, ``lgs[:window=15,overlap=5,threshold=0.1,smoothing=2.3]``,
  any of them with ``,bpda`` where the defence is not differentiable) into a batched
  torch module on the input's device.
* :func:`adaptive_model` is the model an adaptive attacker differentiates (``patchlab
  optimize --defense``, ``patchlab attack --defense``): the same forward pass, BPDA where a
  defence has no gradient.
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
    adaptive,
    get_defense,
    list_defenses,
    register_defense,
)
from .model import DefendedModel, adaptive_model, defend, model_defenses, undefended

__all__ = [
    "DEFENSES",
    "BitDepth",
    "Defense",
    "DefendedModel",
    "GaussianBlur",
    "Jpeg",
    "LocalGradientsSmoothing",
    "MedianFilter",
    "adaptive",
    "adaptive_model",
    "defend",
    "get_defense",
    "list_defenses",
    "model_defenses",
    "register_defense",
    "undefended",
]
