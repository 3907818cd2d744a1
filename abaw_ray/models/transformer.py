"""``transformer``: projected modalities summed with modality embeddings, sinusoidal
positions, a temporal transformer encoder, a per-frame head (beyond the paper)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from abaw_ray.models.layers import ModalityProjection, SinusoidalPosition
from abaw_ray.models.registry import register_model


@register_model("transformer")
class TemporalTransformerFusion(nn.Module):
    def __init__(
        self,
        input_dims: Sequence[int],
        output_dim: int,
        hidden: int = 64,
        dropout: float = 0.1,
        layers: int = 2,
        heads: int = 4,
    ) -> None:
        super().__init__()
        heads = heads if hidden % heads == 0 else 1
        self.encoders = nn.ModuleList(ModalityProjection(d, hidden, dropout) for d in input_dims)
        self.modality = nn.Parameter(torch.zeros(len(input_dims), hidden))
        self.position = SinusoidalPosition(hidden)
        layer = nn.TransformerEncoderLayer(
            hidden, heads, 2 * hidden, dropout, batch_first=True, norm_first=True, activation="gelu"
        )
        self.encoder = nn.TransformerEncoder(layer, int(layers), enable_nested_tensor=False)
        self.head = nn.Linear(hidden, output_dim)

    def forward(self, inputs: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        fused = sum(
            enc(x) + self.modality[i] for i, (enc, x) in enumerate(zip(self.encoders, inputs))
        )
        return {"pred": self.head(self.encoder(self.position(fused)))}
