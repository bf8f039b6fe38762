"""Model references, loading and the frozen ``[0, 1]``-in wrapper."""

from .cifar_resnet import CifarResNet
from .load import find_cards, load_model, read_card, read_state_dict
from .registry import list_models, register_model
from . import small  # noqa: E402,F401  (registers lenet, small_resnet)
from .wrapper import ModelInfo, Preprocess, WrappedModel

__all__ = [
    "CifarResNet",
    "ModelInfo",
    "Preprocess",
    "WrappedModel",
    "find_cards",
    "list_models",
    "load_model",
    "read_card",
    "read_state_dict",
    "register_model",
]
