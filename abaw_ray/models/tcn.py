"""``tcn``: a temporal convolutional network (Bai et al., 2018), the temporal model of many top
ABAW entries. Each modality is projected to ``hidden`` per frame; the projections are
concatenated, not summed, so the first temporal convolution sees every modality in channels
of its own and learns how to weigh and mix them (a zeroed, dropped-out modality stays in its
own channels instead of being blended into the others). Then ``layers`` residual blocks, block
i holding two weight-normalised dilated 1-D convolutions with dilation 2**i (GELU and dropout
after each, a 1x1 convolution on the residual path where the width changes), and a per-frame
head.

Receptive field: each block stacks two convolutions of reach (kernel_size - 1) * 2**i, so an
output frame sees ``1 + 2 * (kernel_size - 1) * (2**layers - 1)`` input frames (61 with the
defaults: about 2 s at 30 fps). ``causal=True`` pads each convolution on the left only: frame
t sees frames t - receptive_field + 1 .. t. The default, non-causal, splits each padding in
two ("same"; left takes the smaller half when (kernel_size - 1) * dilation is odd): offline
recognition may look ahead, and annotations lag the face, so looking both ways helps. With an
odd kernel frame t sees t - (receptive_field - 1) // 2 .. t + (receptive_field - 1) // 2.
``TemporalConvNet.context`` gives the exact (past, future) reach for any setting.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from abaw_ray.models.layers import ModalityProjection
from abaw_ray.models.registry import register_model


class _DilatedConv(nn.Module):
    """A weight-normalised 1-D convolution over [B, C, T] that keeps T: zero padding of
    (kernel_size - 1) * dilation frames, all on the left (causal) or split in two."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel_size: int, dilation: int, causal: bool
    ) -> None:
        super().__init__()
        total = (kernel_size - 1) * dilation
        self.left = total if causal else total // 2
        self.right = total - self.left
        self.conv = weight_norm(nn.Conv1d(in_ch, out_ch, kernel_size, dilation=dilation))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (self.left, self.right)))


class _TemporalBlock(nn.Module):
    def __init__(
        self, in_ch: int, out_ch: int, kernel_size: int, dilation: int, causal: bool, dropout: float
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            [
                _DilatedConv(in_ch, out_ch, kernel_size, dilation, causal),
                _DilatedConv(out_ch, out_ch, kernel_size, dilation, causal),
            ]
        )
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)
        self.residual = nn.Conv1d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for conv in self.convs:
            h = self.drop(self.act(conv(h)))
        return self.act(h + self.residual(x))


@register_model("tcn")
class TemporalConvNet(nn.Module):
    def __init__(
        self,
        input_dims: Sequence[int],
        output_dim: int,
        hidden: int = 64,  # width of each modality's projection and of every temporal block
        layers: int = 4,  # residual blocks; block i has dilation 2**i
        kernel_size: int = 3,  # taps of each dilated convolution
        dropout: float = 0.1,  # after each projection and each convolution's activation
        causal: bool = False,  # True: frame t sees only frames <= t (online); False: both ways
    ) -> None:
        super().__init__()
        hidden, layers, kernel_size = int(hidden), int(layers), int(kernel_size)
        if layers < 1 or kernel_size < 1 or hidden < 1:
            raise ValueError(
                f"tcn needs hidden, layers, kernel_size >= 1; got {hidden}, {layers}, {kernel_size}"
            )
        self.encoders = nn.ModuleList(ModalityProjection(d, hidden, dropout) for d in input_dims)
        widths = [hidden * len(input_dims)] + [hidden] * layers
        self.blocks = nn.ModuleList(
            _TemporalBlock(widths[i], widths[i + 1], kernel_size, 2**i, bool(causal), dropout)
            for i in range(layers)
        )
        self.head = nn.Linear(hidden, output_dim)

    @property
    def context(self) -> tuple[int, int]:
        """(past, future): output frame t depends on input frames t - past .. t + future."""
        convs = [conv for block in self.blocks for conv in block.convs]
        return sum(c.left for c in convs), sum(c.right for c in convs)

    @property
    def receptive_field(self) -> int:
        """Input frames one output frame sees: 1 + 2 * (kernel_size - 1) * (2**layers - 1)."""
        past, future = self.context
        return 1 + past + future

    def forward(self, inputs: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        h = torch.cat([enc(x) for enc, x in zip(self.encoders, inputs)], dim=-1)  # [B, T, M*H]
        h = h.transpose(1, 2)  # [B, C, T] for the convolutions
        for block in self.blocks:
            h = block(h)
        return {"pred": self.head(h.transpose(1, 2))}
