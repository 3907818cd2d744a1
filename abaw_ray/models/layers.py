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


class _LinearRecurrence(torch.autograd.Function):
    """h_t = a_t * h_{t-1} + b_t over time, forward and backward as plain loops of in-place
    elementwise ops outside autograd: one graph node for the whole sequence instead of T."""

    @staticmethod
    def forward(ctx, log_a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
        a = log_a.exp()
        out = torch.empty_like(b)
        h = h0
        for t in range(b.shape[1]):
            h = torch.addcmul(b[:, t], a[:, t], h)
            out[:, t] = h
        ctx.save_for_backward(a, out, h0)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        a, out, h0 = ctx.saved_tensors
        steps = out.shape[1]
        grad_b = torch.empty_like(out)
        g = torch.zeros_like(h0)
        for t in range(steps - 1, -1, -1):
            # dL/dh_t = direct gradient + what h_{t+1} = a_{t+1} h_t + ... passes back.
            g = grad_out[:, t] + g
            grad_b[:, t] = g
            if t > 0:
                g = g * a[:, t]
        grad_h0 = g * a[:, 0]
        h_prev = torch.cat([h0.unsqueeze(1), out[:, :-1]], 1)
        grad_log_a = grad_b * h_prev * a
        return grad_log_a, grad_b, grad_h0


def linear_scan(
    log_a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None
) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + b_t for all t, with a_t = exp(log_a_t).

    The recurrence is linear, so it needs no autograd graph per step: a custom autograd
    function runs it (and its transposed recurrence in backward) as a tight loop of in-place
    elementwise ops, in the same order as a per-frame loop would. ``log_a``, ``b``: [B, T, H];
    ``h0``: [B, H] (zeros if omitted); returns [B, T, H].
    """
    if h0 is None:
        h0 = b.new_zeros(b.shape[0], b.shape[2])
    return _LinearRecurrence.apply(log_a, b, h0)
