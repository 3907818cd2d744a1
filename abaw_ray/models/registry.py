"""The fusion-model registry: ``create_model(name, input_dims, task, **settings)``.

One file per family registers its model class here (``@register_model("tcn")``), and
``abaw_ray.models`` imports every family (importing the package fills the registry; this module
imports no family). A search space names models as strings. A model's settings are its
constructor's keyword arguments after ``input_dims`` and ``output_dim``, typed and with their
defaults (``model_settings``): a new setting is a new argument, and a search space, ``--set``
and MLflow know it from there; ``modality_dropout`` is every model's (``FusionModel``).
Every model maps per-modality sequences ``[B, T, D_m]`` to per-frame outputs ``[B, T, 2]``
(VA, in [-1, 1]), ``[B, T, 8]`` (EXPR logits) or ``[B, T, 12]`` (AU logits) plus an auxiliary
loss (0 for most). A multi-task model (``other_tasks``) has one head more per other task: the
core's output is wider, and ``FusionModel`` splits it into the trial's own prediction and
each other task's.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from abaw_ray.tasks import KIND, OUTPUT_DIMS, Task

CONV_ALIGN_WIDTH = 64  # output width of the learned conv alignment when no hidden size is set
_MODELS: dict[str, type[nn.Module]] = {}
BUILT_IN = ("self", "input_dims", "output_dim")  # what create_model gives, not settings


@dataclass(frozen=True)
class Setting:
    """One setting of a model: its name, annotation (what it accepts) and default."""

    name: str
    annotation: Any
    default: Any


def register_model(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    def deco(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name} registered twice")
        _MODELS[name] = cls
        return cls

    return deco


def list_models() -> list[str]:
    return sorted(_MODELS)


def _settings_of(init: Callable[..., Any], skip: Sequence[str]) -> dict[str, Setting]:
    hints = typing.get_type_hints(init)
    return {
        p.name: Setting(p.name, hints.get(p.name, Any), p.default)
        for p in inspect.signature(init).parameters.values()
        if p.name not in skip and p.kind is p.POSITIONAL_OR_KEYWORD
    }


def model_settings(name: str) -> dict[str, Setting]:
    """Every setting model ``name`` takes, with its annotation and default: its constructor's
    keyword arguments and the settings every model has (``modality_dropout``)."""
    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(_MODELS))}")
    return {
        **_settings_of(_MODELS[name].__init__, BUILT_IN),
        **_settings_of(FusionModel.__init__, ("self", "core", "aligners", "task", "other_tasks")),
    }


class FusionModel(nn.Module):
    """Alignment front (learned conv for native-rate audio) + modality dropout + a fusion core
    + output squash.

    Modality dropout (``modality_dropout=p``, training only): after alignment, each sample's
    each modality is zeroed whole with probability p, but never all of one sample's modalities:
    when all would drop, one chosen uniformly at random is kept. A modality is thus dropped at
    rate p - p**M / M (M modalities; none with one), and the model learns to cope with a
    missing face or voice. Survivors are not rescaled by 1 / (1 - p) as in dropout: each
    modality feeds its own encoder rather than one shared sum whose expectation rescaling
    would preserve, so rescaling would only show the encoders amplitudes never seen in eval.
    In eval mode it is the identity.
    """

    def __init__(
        self,
        core: nn.Module,
        aligners: Sequence[nn.Module | None],
        task: Task,
        modality_dropout: float = 0.0,
        other_tasks: Sequence[Task] = (),
    ) -> None:
        super().__init__()
        if not 0.0 <= modality_dropout <= 1.0:
            raise ValueError(f"modality_dropout must be in [0, 1]; got {modality_dropout}")
        self.core = core
        self.aligners = nn.ModuleList([a if a is not None else nn.Identity() for a in aligners])
        self.conv_aligned = [a is not None for a in aligners]
        self.task = task
        self.modality_dropout = float(modality_dropout)
        self.other_tasks = tuple(other_tasks)
        # Each task's columns of the core's output: the trial's own first.
        ends = np.cumsum([OUTPUT_DIMS[t] for t in (task, *self.other_tasks)])
        self.heads = {
            t: slice(int(e - OUTPUT_DIMS[t]), int(e))
            for t, e in zip((task, *self.other_tasks), ends)
        }

    def drop_modalities(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Zero whole modalities per sample (see the class docstring); identity in eval."""
        inputs = list(inputs)
        if not self.training or self.modality_dropout == 0.0 or len(inputs) < 2:
            return inputs
        bsz, m, device = inputs[0].shape[0], len(inputs), inputs[0].device
        drop = torch.rand(bsz, m, device=device) < self.modality_dropout  # [B, M]
        every = drop.all(dim=1)
        keep = torch.randint(m, (bsz,), device=device)
        drop[every, keep[every]] = False
        return [x.masked_fill(drop[:, i].view(bsz, 1, 1), 0.0) for i, x in enumerate(inputs)]

    def forward(
        self, inputs: Sequence[torch.Tensor], positions: Sequence[torch.Tensor | None] | None = None
    ) -> dict[str, torch.Tensor]:
        aligned = []
        for i, (x, align) in enumerate(zip(inputs, self.aligners)):
            if self.conv_aligned[i]:
                if positions is None or positions[i] is None:
                    raise ValueError(f"modality {i} is conv-aligned: frame positions needed")
                x = align(x, positions[i])
            aligned.append(x)
        out = self.core(self.drop_modalities(aligned))
        preds = {}
        for t, cols in self.heads.items():
            pred = out["pred"][..., cols]
            preds[t] = torch.tanh(pred) if KIND[t] == "regression" else pred
        return {
            "pred": preds.pop(self.task),
            "aux_loss": out.get("aux_loss", out["pred"].new_zeros(())),
            "other_tasks": preds,
        }


def create_model(
    name: str,
    input_dims: Sequence[int],
    task: Task = "va",
    align: Sequence[str | None] | None = None,
    other_tasks: Sequence[Task] = (),
    **hparams: Any,
) -> FusionModel:
    """Build a registered fusion model. ``align[m] == "conv"`` puts a learned strided
    convolution in front of modality m, which then arrives at its native rate. ``None``
    settings are dropped, so the model's own defaults apply; a setting the model does not
    take raises ``TypeError`` naming those it takes. ``modality_dropout`` (default 0) is
    every model's setting, taken by ``FusionModel`` and never passed to the family's class.
    ``other_tasks``: the other tasks the model also predicts (multi-task trials)."""
    from abaw_ray.models.layers import ConvAlign

    known = model_settings(name)
    unknown = sorted(set(hparams) - set(known))
    if unknown:
        raise TypeError(f"model {name} takes no {unknown}; its settings: {', '.join(known)}")
    hparams = {k: v for k, v in hparams.items() if v is not None}
    modality_dropout = float(hparams.pop("modality_dropout", 0.0))
    if not input_dims:
        raise ValueError("a model needs at least one modality")
    align = list(align) if align is not None else [None] * len(input_dims)
    width = int(hparams.get("hidden") or CONV_ALIGN_WIDTH)
    aligners: list[nn.Module | None] = []
    dims = []
    for d, a in zip(input_dims, align):
        if a == "conv":
            aligners.append(ConvAlign(d, width))
            dims.append(width)
        else:
            aligners.append(None)
            dims.append(int(d))
    if task in other_tasks:
        raise ValueError(f"other_tasks {tuple(other_tasks)} includes the trial's own task {task}")
    width = sum(OUTPUT_DIMS[t] for t in (task, *other_tasks))
    core = _MODELS[name](input_dims=dims, output_dim=width, **hparams)
    return FusionModel(core, aligners, task, modality_dropout, other_tasks)
