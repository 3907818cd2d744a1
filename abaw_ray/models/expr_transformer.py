"""``expr_transformer``: the paper's expression model. Backbone features (MobileNetV3's 1024-d
pre-logits) -> projection -> an N-layer transformer encoder (multi-head attention as the
embedding layer, default 6 layers) with a residual connection from the projected backbone
features -> per-frame logits. Other modalities (audio) may be fused in by addition."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from abaw_ray.models.layers import ModalityProjection, SinusoidalPosition
from abaw_ray.models.registry import register_model


@register_model("expr_transformer")
class ExpressionTransformer(nn.Module):
    def __init__(
        self,
        input_dims: Sequence[int],
        output_dim: int,
        hidden: int = 256,
        dropout: float = 0.1,
        layers: int = 6,
        heads: int = 4,
    ) -> None:
        super().__init__()
        heads = heads if hidden % heads == 0 else 1
        self.backbone_proj = ModalityProjection(input_dims[0], hidden, dropout)
        self.extra = nn.ModuleList(ModalityProjection(d, hidden, dropout) for d in input_dims[1:])
        self.position = SinusoidalPosition(hidden)
        layer = nn.TransformerEncoderLayer(
            hidden, heads, 2 * hidden, dropout, batch_first=True, norm_first=True, activation="gelu"
        )
        self.encoder = nn.TransformerEncoder(layer, int(layers), enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, output_dim)

    def forward(self, inputs: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        base = self.backbone_proj(inputs[0])
        for proj, x in zip(self.extra, inputs[1:]):
            base = base + proj(x)
        encoded = self.encoder(self.position(base))
        return {"pred": self.head(self.norm(encoded + base))}  # residual from the features
