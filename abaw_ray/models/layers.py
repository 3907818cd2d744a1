"""Building blocks shared by the fusion families (never copied into each model file)."""

from __future__ import annotations

import math

import torch
from torch import nn


class ModalityProjection(nn.Module):
    """Per-frame encoder of one modality: Linear -> LayerNorm -> GELU -> Dropout."""

    def __init__(self, input_dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(input_dim, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvAlign(nn.Module):
    """Learned alignment of native-rate audio features to video frames: a strided 1-D
    convolution over the audio, then linear interpolation at each frame's (fractional)
    position in the audio sequence."""

    def __init__(self, input_dim: int, hidden: int, kernel: int = 5, stride: int = 2) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv1d(input_dim, hidden, kernel, stride=stride, padding=kernel // 2)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x: [B, N, D] at the audio rate; positions: [B, T] frame centres in units of x's
        index. Returns [B, T, hidden]."""
        h = self.act(self.conv(x.transpose(1, 2))).transpose(1, 2)  # [B, N', H]
        # Output j of the conv is centred on input j * stride.
        p = (positions / self.stride).clamp(0, h.shape[1] - 1)
        lo = p.floor().long().clamp(max=h.shape[1] - 1)
        hi = (lo + 1).clamp(max=h.shape[1] - 1)
        w = (p - lo.to(p.dtype)).unsqueeze(-1)
        idx = lambda i: i.unsqueeze(-1).expand(-1, -1, h.shape[2])  # noqa: E731
        return (1 - w) * h.gather(1, idx(lo)) + w * h.gather(1, idx(hi))


class SinusoidalPosition(nn.Module):
    def __init__(self, dim: int, max_len: int = 8192) -> None:
        super().__init__()
        pos = torch.arange(max_len).unsqueeze(1)
        div = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
        pe = torch.zeros(max_len, dim)
        pe[:, 0::2] = torch.sin(pos * div)
        pe[:, 1::2] = torch.cos(pos * div)[:, : dim // 2]
        self.register_buffer("pe", pe, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] > self.pe.shape[0]:
            raise ValueError(f"sequence of {x.shape[1]} frames exceeds {self.pe.shape[0]}")
        return x + self.pe[: x.shape[1]].unsqueeze(0)


def linear_scan(
    log_a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None, chunk: int = 16
) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + b_t for all t, with a_t = exp(log_a_t) in (0, 1].

    Chunked: inside a chunk of K steps, h = M @ b + P * h_prev where P_t = prod_{j<=t} a_j and
    M[t, j] = P_t / P_j (j <= t), computed as exp of differences of cumulative log sums, so it
    never divides by a vanishing product. Python steps over T/K chunks instead of T frames.
    ``log_a``, ``b``: [B, T, H]; returns [B, T, H].
    """
    bsz, steps, hid = b.shape
    h_prev = h0 if h0 is not None else b.new_zeros(bsz, hid)
    outs = []
    tri = None
    for s in range(0, steps, chunk):
        la = log_a[:, s : s + chunk]
        bb = b[:, s : s + chunk]
        k = la.shape[1]
        if tri is None or tri.shape[0] != k:
            tri = torch.ones(k, k, dtype=torch.bool, device=b.device).tril()
        cum = la.cumsum(1)  # [B, K, H]
        diff = cum.unsqueeze(2) - cum.unsqueeze(1)  # [B, K(t), K(j), H]
        m = torch.exp(diff.masked_fill(~tri.view(1, k, k, 1), float("-inf")))
        h = torch.einsum("btjh,bjh->bth", m, bb) + torch.exp(cum) * h_prev.unsqueeze(1)
        outs.append(h)
        h_prev = h[:, -1]
    return torch.cat(outs, 1)
