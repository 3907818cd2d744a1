"""``attention``: per-frame modality encoders, attention weights over modalities, a temporal
head (a bidirectional GRU) and a per-frame regressor/classifier."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from abaw_ray.models.layers import ModalityProjection
from abaw_ray.models.registry import register_model


@register_model("attention")
class ModalityAttentionFusion(nn.Module):
    def __init__(
        self,
        input_dims: Sequence[int],
        output_dim: int,
        hidden: int = 64,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.encoders = nn.ModuleList(ModalityProjection(d, hidden, dropout) for d in input_dims)
        self.score = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.temporal = nn.GRU(hidden, hidden // 2, batch_first=True, bidirectional=True)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, output_dim))

    def forward(self, inputs: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        h = torch.stack([enc(x) for enc, x in zip(self.encoders, inputs)], dim=2)  # [B,T,M,H]
        weights = self.score(h).softmax(dim=2)  # attention over modalities, per frame
        fused = (weights * h).sum(2)
        temporal, _ = self.temporal(fused)
        return {"pred": self.head(temporal), "modality_weights": weights.squeeze(-1)}
