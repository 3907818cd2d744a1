"""The fusion-model registry: ``create_model(name, input_dims, task, **hparams)``.

One file per family registers its builder here, and ``abaw_ray.models`` imports every family
(importing the package fills the registry; this module imports no family). A search space
names models as strings.
Every model maps per-modality sequences ``[B, T, D_m]`` to per-frame outputs ``[B, T, 2]``
(VA, in [-1, 1]) or ``[B, T, 8]`` (EXPR logits) plus an auxiliary loss (0 for most).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from abaw_ray.tasks import NUM_EXPR_CLASSES, Task

OUTPUT_DIMS: dict[str, int] = {"va": 2, "expr": NUM_EXPR_CLASSES}
CONV_ALIGN_WIDTH = 64  # output width of the learned conv alignment when no hidden size is set
_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name} registered twice")
        _MODELS[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    return sorted(_MODELS)


class FusionModel(nn.Module):
    """Alignment front (learned conv for native-rate audio) + a fusion core + output squash."""

    def __init__(self, core: nn.Module, aligners: Sequence[nn.Module | None], task: Task) -> None:
        super().__init__()
        self.core = core
        self.aligners = nn.ModuleList([a if a is not None else nn.Identity() for a in aligners])
        self.conv_aligned = [a is not None for a in aligners]
        self.task = task

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
        out = self.core(aligned)
        pred = out["pred"]
        if self.task == "va":
            pred = torch.tanh(pred)
        return {"pred": pred, "aux_loss": out.get("aux_loss", pred.new_zeros(()))}


def create_model(
    name: str,
    input_dims: Sequence[int],
    task: Task = "va",
    align: Sequence[str | None] | None = None,
    **hparams: Any,
) -> FusionModel:
    """Build a registered fusion model. ``align[m] == "conv"`` puts a learned strided
    convolution in front of modality m, which then arrives at its native rate. ``None``
    settings are dropped, so the model's own defaults apply; a setting the model does not
    take raises ``TypeError``."""
    from abaw_ray.models.layers import ConvAlign

    hparams = {k: v for k, v in hparams.items() if v is not None}
    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(_MODELS))}")
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
    core = _MODELS[name](input_dims=dims, output_dim=OUTPUT_DIMS[task], **hparams)
    return FusionModel(core, aligners, task)
