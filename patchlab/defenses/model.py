"""A defended model: a :class:`WrappedModel` whose input passes through a defence first."""

from __future__ import annotations

from dataclasses import replace

import torch

from ..models.wrapper import WrappedModel
from ..utils import check_images
from .filters import Defense, adaptive, get_defense


class DefendedModel(WrappedModel):
    """``model`` behind ``defense``: ``forward(x) = model(defense(x))``.

    It is a :class:`WrappedModel` like any other (labels, preprocessing, ``get_layer`` and
    ``layer_names`` for feature hooks, frozen, eval mode), sharing the network of ``model``
    (no copy). Its name is ``"{model.name}+{defense.spec}"`` so every result and label
    names the defence; ``base_name`` and ``defense`` say what it is made of.
    """

    def __init__(self, model: WrappedModel, defense: Defense):
        if isinstance(model, DefendedModel):  # stack defences: the inner ones run first
            inner = list(model.defenses)
            base = model.base_name
        else:
            inner, base = [], model.name
        super().__init__(
            model.net,
            labels=model.labels,
            preprocess=model.preprocess,
            info=replace(model.info, name=f"{model.name}+{defense.spec}"),
            owns_net=model.owns_net,
        )
        dev = model.mean.device
        # an nn.ModuleList, so .to(device) moves every defence's buffers with the model
        self._inner = torch.nn.ModuleList([d.to(dev) for d in inner])
        self.defense = defense.to(dev)
        self.base_name = base

    @property
    def inner_defense(self) -> Defense | None:
        """The defence just inside this one (``None``: this is the only one)."""
        return self._inner[-1] if len(self._inner) else None

    @property
    def defenses(self) -> list[Defense]:
        """Every defence in front of the network, in the order the input meets them."""
        return [*self._inner, self.defense]

    def base_model(self) -> WrappedModel:
        """The undefended model (the same network, not a copy), named as it was."""
        return WrappedModel(
            self.net,
            labels=self.labels,
            preprocess=self.preprocess,
            info=replace(self.info, name=self.base_name),
            owns_net=self.owns_net,
        ).to(self.mean.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x)
        for d in self._inner:
            x = d(x)
        return super().forward(self.defense(x))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, defense={'+'.join(d.spec for d in self.defenses)!r}"


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


def undefended(model: WrappedModel) -> WrappedModel:
    """``model`` without its defences (the same network); a plain model is returned as it is."""
    return model.base_model() if isinstance(model, DefendedModel) else model


def model_defenses(model: WrappedModel) -> list[Defense]:
    """The defences in front of ``model``'s network, input side first (``[]`` for a plain model)."""
    return list(model.defenses) if isinstance(model, DefendedModel) else []


def adaptive_model(model: WrappedModel, spec: "str | Defense | None" = None) -> WrappedModel:
    """The model an adaptive attacker differentiates: ``model`` behind ``spec`` (``none``: no new
    defence), with every defence in front of it (its own too, when ``model`` is already a
    :class:`DefendedModel`) given the BPDA straight-through gradient where it has no useful
    one (see :func:`adaptive`). The forward pass, and so every prediction, is unchanged.

    >>> adaptive_model(load_model("resnet20.json"), "jpeg").name   # doctest: +SKIP
    'cifar10-resnet20+jpeg:bpda'
    """
    chain = [*model_defenses(model), get_defense(spec)]
    if all(d.is_identity or not d.needs_bpda or d.bpda for d in chain):
        return defend(model, chain[-1])
    out = undefended(model)
    for d in chain:
        out = defend(out, adaptive(d))
    return out


def defended_names(models) -> dict[str, str]:
    """``{defended model name: base model name}`` for the :class:`DefendedModel` among ``models``."""
    return {m.name: m.base_name for m in models if isinstance(m, DefendedModel)}


def mark_defended_sources(result, models, source_names=None):
    """A ``TransferResult`` whose defended copies of source models count as sources (white-box under
    the defence); ``models`` are the judged models, ``source_names`` the names of the models the
    patch was optimised on (a run record's ``source_names``; default: the result's own sources,
    which a judge that defends every model never has)."""
    from dataclasses import replace as _replace

    names = defended_names(models)
    if not names:
        return result
    src = {m.name for m in result.models if m.is_source} | set(source_names or ())
    ms = [_replace(m, is_source=True) if names.get(m.name) in src or m.is_source else m for m in result.models]
    return _replace(result, models=ms)
