"""``mfn``: Memory Fusion Network (Zadeh et al., 2018) with per-frame outputs, computed fast.

A system of LSTMs (one per modality), a delta-memory attention over the concatenated cell
states at t-1 and t, and a multi-view gated memory u_t = g1_t * u_{t-1} + g2_t * tanh(D_u(c^_t)).

Nothing but the memory depends on the memory, so it is computed for all frames at once: the
LSTMs with the fused ``nn.LSTM``; their cell states from one batched matmul of the gates over
[x_t, h_{t-1}] and the linear recurrence c_t = f_t c_{t-1} + i_t g_t (a chunked scan); the
attention and the proposed update for every frame. With ``gates="paper"`` the retain/update
gates read only the attended cell states (the paper's equations), so the memory is a linear
recurrence too; ``gates="reference"`` feeds u_{t-1} into the gates as the public reference code
does, which leaves only those two small gate layers in a per-frame loop.

``mfn_reference_forward`` is the plain per-frame implementation with the same weights: the
oracle of the tests and the baseline of ``bench/models.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from abaw_ray.models.layers import linear_scan
from abaw_ray.models.registry import register_model

Gates = Literal["paper", "reference"]


class MemoryFusionNetwork(nn.Module):
    def __init__(
        self,
        input_dims: Sequence[int],
        output_dim: int,
        hidden: int = 64,
        dropout: float = 0.1,
        memory: int | None = None,
        gates: Gates = "paper",
        **_: object,
    ) -> None:
        super().__init__()
        if gates not in ("paper", "reference"):
            raise ValueError(f"gates must be 'paper' or 'reference', got {gates!r}")
        self.gates = gates
        self.hidden = hidden
        self.memory = memory or hidden
        self.lstms = nn.ModuleList(nn.LSTM(d, hidden, batch_first=True) for d in input_dims)
        cells = hidden * len(input_dims)
        att_in = 2 * cells
        self.attention = nn.Sequential(
            nn.Linear(att_in, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, att_in)
        )
        self.proposal = nn.Sequential(
            nn.Linear(att_in, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, self.memory),
        )
        gate_in = att_in + (self.memory if gates == "reference" else 0)
        self.retain = nn.Sequential(
            nn.Linear(gate_in, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, self.memory),
        )
        self.update = nn.Sequential(
            nn.Linear(gate_in, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, self.memory),
        )
        self.head = nn.Sequential(
            nn.Linear(cells + self.memory, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, output_dim),
        )

    def cell_states(self, lstm: nn.LSTM, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """All cell states of a fused LSTM run, from its inputs and its outputs. Only the
        input, forget and cell gates are needed (PyTorch's gate order: i, f, g, o)."""
        n = 3 * lstm.hidden_size
        h_prev = F.pad(h, (0, 0, 1, 0))[:, :-1]
        pre = F.linear(x, lstm.weight_ih_l0[:n], lstm.bias_ih_l0[:n]) + F.linear(
            h_prev, lstm.weight_hh_l0[:n], lstm.bias_hh_l0[:n]
        )
        i, f, g = pre.chunk(3, dim=-1)
        return linear_scan(F.logsigmoid(f), torch.sigmoid(i) * torch.tanh(g))

    def forward(self, inputs: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        hs, cs = [], []
        for lstm, x in zip(self.lstms, inputs):
            h, _ = lstm(x)
            hs.append(h)
            cs.append(self.cell_states(lstm, x, h))
        c = torch.cat(cs, -1)  # [B, T, C]
        c_prev = F.pad(c, (0, 0, 1, 0))[:, :-1]
        both = torch.cat([c_prev, c], -1)
        attended = both * self.attention(both).softmax(-1)
        proposal = torch.tanh(self.proposal(attended))
        if self.gates == "paper":
            retain_pre = self.retain(attended)
            update = torch.sigmoid(self.update(attended))
            u = linear_scan(F.logsigmoid(retain_pre), update * proposal)
        else:
            u = self._reference_memory(attended, proposal)
        return {"pred": self.head(torch.cat([*hs, u], -1))}

    def _reference_memory(self, attended: torch.Tensor, proposal: torch.Tensor) -> torch.Tensor:
        # Only the u_{t-1} part of the gates' first layer is in the loop; the attended part is
        # one batched matmul for all frames.
        r1, u1 = self.retain[0], self.update[0]
        n = attended.shape[-1]
        r_pre = F.linear(attended, r1.weight[:, :n], r1.bias)
        u_pre = F.linear(attended, u1.weight[:, :n], u1.bias)
        r_mem, u_mem = r1.weight[:, n:], u1.weight[:, n:]
        r_rest, u_rest = self.retain[1:], self.update[1:]
        u = attended.new_zeros(attended.shape[0], self.memory)
        out = []
        for t in range(attended.shape[1]):
            g1 = torch.sigmoid(r_rest(r_pre[:, t] + u @ r_mem.T))
            g2 = torch.sigmoid(u_rest(u_pre[:, t] + u @ u_mem.T))
            u = g1 * u + g2 * proposal[:, t]
            out.append(u)
        return torch.stack(out, 1)


def mfn_reference_forward(
    model: MemoryFusionNetwork, inputs: Sequence[torch.Tensor]
) -> torch.Tensor:
    """The plain per-frame MFN: LSTM cells, attention, gates and memory stepped frame by frame
    with ``model``'s weights. Same outputs as ``model(inputs)["pred"]`` (the oracle)."""
    bsz, steps = inputs[0].shape[:2]
    hid = model.hidden
    state = [(inputs[0].new_zeros(bsz, hid), inputs[0].new_zeros(bsz, hid)) for _ in inputs]
    c_prev = inputs[0].new_zeros(bsz, hid * len(inputs))
    u = inputs[0].new_zeros(bsz, model.memory)
    preds = []
    for t in range(steps):
        new_state = []
        for lstm, x, (h, c) in zip(model.lstms, inputs, state):
            pre = F.linear(x[:, t], lstm.weight_ih_l0, lstm.bias_ih_l0) + F.linear(
                h, lstm.weight_hh_l0, lstm.bias_hh_l0
            )
            i, f, g, o = pre.chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            new_state.append((h, c))
        state = new_state
        c_now = torch.cat([c for _, c in state], -1)
        both = torch.cat([c_prev, c_now], -1)
        attended = both * model.attention(both).softmax(-1)
        proposal = torch.tanh(model.proposal(attended))
        gate_in = attended if model.gates == "paper" else torch.cat([attended, u], -1)
        u = (
            torch.sigmoid(model.retain(gate_in)) * u
            + torch.sigmoid(model.update(gate_in)) * proposal
        )
        preds.append(model.head(torch.cat([*(h for h, _ in state), u], -1)))
        c_prev = c_now
    return torch.stack(preds, 1)


@register_model("mfn")
def build(input_dims: Sequence[int], output_dim: int, **hp: object) -> nn.Module:
    return MemoryFusionNetwork(input_dims, output_dim, **hp)
