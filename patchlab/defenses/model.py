"""A defended model: a :class:`WrappedModel` whose input passes through a defence first."""

from __future__ import annotations

from dataclasses import replace

import torch

from ..models.wrapper import WrappedModel
from ..utils import check_images
from .filters import Defense, get_defense


class DefendedModel(WrappedModel):
    """``model`` behind ``defense``: ``forward(x) = model(defense(x))``.

    It is a :class:`WrappedModel` like any other (labels, preprocessing, ``get_layer`` and
    ``layer_names`` for feature hooks, frozen, eval mode), sharing the network of ``model``
    (no copy). Its name is ``"{model.name}+{defense.spec}"`` so every result and label
    names the defence; ``base_name`` and ``defense`` say what it is made of.
    """

    def __init__(self, model: WrappedModel, defense: Defense):
        if isinstance(model, DefendedModel):  # stack defences: the inner one runs first
            inner_defense = model.defense
            base = model.base_name
        else:
            inner_defense, base = None, model.name
        super().__init__(
            model.net,
            labels=model.labels,
            preprocess=model.preprocess,
            info=replace(model.info, name=f"{model.name}+{defense.spec}"),
            owns_net=model.owns_net,
        )
        self.inner_defense = inner_defense
        self.defense = defense.to(model.mean.device)
        self.base_name = base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x)
        if self.inner_defense is not None:
            x = self.inner_defense(x)
        return super().forward(self.defense(x))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, defense={self.defense.spec!r}"


def defend(model: WrappedModel, spec: "str | Defense | None") -> WrappedModel:
    """``model`` behind the defence ``spec`` (see :func:`get_defense`); ``none`` returns ``model``.

    >>> m = defend(load_model("resnet20.json"), "lgs")      # doctest: +SKIP
    >>> m.name                                              # doctest: +SKIP
    'resnet20+lgs:window=15,overlap=5,threshold=0.1,smoothing=2.3,ref=224'
    """
    if not isinstance(model, WrappedModel):
        raise TypeError(
            f"defend() takes a WrappedModel (patchlab.models.load_model / patchlab.wrap), got {type(model).__name__}"
        )
    d = get_defense(spec)
    if type(d) is Defense and not d.bpda:
        return model
    return DefendedModel(model, d)


def defended_names(models) -> dict[str, str]:
    """``{defended model name: base model name}`` for the :class:`DefendedModel` among ``models``."""
    return {m.name: m.base_name for m in models if isinstance(m, DefendedModel)}


def mark_defended_sources(result, models):
    """A ``TransferResult`` whose defended copies of source models count as sources (white-box under
    the defence) and whose ``eot`` metadata names the defence; ``models`` are the judged models."""
    from dataclasses import replace as _replace

    names = defended_names(models)
    if not names:
        return result
    src = {m.name for m in result.models if m.is_source}
    ms = [_replace(m, is_source=True) if names.get(m.name) in src or m.is_source else m for m in result.models]
    return _replace(result, models=ms)
