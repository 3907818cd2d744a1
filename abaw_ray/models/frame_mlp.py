"""``frame_mlp``: every frame on its own, no temporal context. Modalities concatenated, then
``layers`` hidden layers (0: a linear model, the per-frame floor a temporal model must beat;
the ensemble's smoothing is its only view of time)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from abaw_ray.models.registry import register_model


@register_model("frame_mlp")
class FrameMLP(nn.Module):
    def __init__(
        self,
        input_dims: Sequence[int],
        output_dim: int,
        hidden: int = 128,  # width of each hidden layer
        layers: int = 1,  # hidden layers; 0 is logistic / linear regression
        dropout: float = 0.1,  # on the input and after each hidden layer
    ) -> None:
        super().__init__()
        width = sum(input_dims)
        blocks: list[nn.Module] = [nn.Dropout(dropout)]
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.LayerNorm(hidden), nn.GELU()]
            blocks.append(nn.Dropout(dropout))
            width = hidden
        blocks.append(nn.Linear(width, output_dim))
        self.net = nn.Sequential(*blocks)

    def forward(self, inputs: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"pred": self.net(torch.cat(list(inputs), dim=-1))}
