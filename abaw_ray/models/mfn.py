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


class _LSTMSystem(torch.autograd.Function):
    """M single-layer LSTMs of one hidden size, stepped together (one ``baddbmm`` per frame for
    all of them) outside autograd, with a hand-written backward through time.

    ``xproj``: [M, T, B, 4H], each LSTM's input projection x_t W_ih^T + b_ih + b_hh for every
    frame (one large matmul per modality, left to autograd); ``w_hh``: [M, 4H, H]. Gate order
    as PyTorch's: i, f, g, o. Returns every hidden and cell state, [M, T, B, H] each.
    """

    @staticmethod
    def forward(ctx, xproj: torch.Tensor, w_hh: torch.Tensor):
        m, steps, bsz, four_h = xproj.shape
        hid = four_h // 4
        w_t = w_hh.transpose(1, 2)
        act = torch.empty_like(xproj)  # gate activations
        hbuf = xproj.new_zeros(m, steps + 1, bsz, hid)  # h_{-1} = 0, then h_0 .. h_{T-1}
        cbuf = xproj.new_zeros(m, steps + 1, bsz, hid)
        tanh_c = xproj.new_empty(m, steps, bsz, hid)
        for t in range(steps):
            pre = torch.baddbmm(xproj[:, t], hbuf[:, t], w_t)
            a = act[:, t]
            torch.sigmoid(pre, out=a)
            i, f, g, o = a.split(hid, -1)
            torch.tanh(pre[..., 2 * hid : 3 * hid], out=g)
            c = cbuf[:, t + 1]
            torch.mul(f, cbuf[:, t], out=c)
            c.addcmul_(i, g)
            tc = tanh_c[:, t]
            torch.tanh(c, out=tc)
            torch.mul(o, tc, out=hbuf[:, t + 1])
        ctx.save_for_backward(act, hbuf, cbuf, tanh_c, w_hh)
        return hbuf[:, 1:], cbuf[:, 1:]

    @staticmethod
    def backward(ctx, grad_h: torch.Tensor | None, grad_c: torch.Tensor | None):
        act, hbuf, cbuf, tanh_c, w_hh = ctx.saved_tensors
        m, steps, bsz, four_h = act.shape
        hid = four_h // 4
        i, f, g, o = act.split(hid, -1)
        # d pre = [dc * k_i, dc * k_f, dc * k_g, dh * k_o] for each frame; the factors need
        # nothing from the backward pass, so they are computed for all frames at once.
        k = torch.empty_like(act)
        k_i, k_f, k_g, k_o = k.split(hid, -1)
        torch.mul(i * (1 - i), g, out=k_i)
        torch.mul(f * (1 - f), cbuf[:, :-1], out=k_f)
        torch.mul(1 - g * g, i, out=k_g)
        torch.mul(o * (1 - o), tanh_c, out=k_o)
        dc_dh = o * (1 - tanh_c * tanh_c)  # dh_t -> dc_t
        k4 = k.view(m, steps, bsz, 4, hid)
        dpre = torch.empty_like(act)
        dpre4 = dpre.view(m, steps, bsz, 4, hid)
        zeros = act.new_zeros(m, bsz, hid)
        dh = dc = zeros
        for t in range(steps - 1, -1, -1):
            if grad_h is not None:
                dh = dh + grad_h[:, t]
            dc = dc + grad_c[:, t] if grad_c is not None else dc
            dc = torch.addcmul(dc, dh, dc_dh[:, t])
            torch.mul(dc.unsqueeze(2), k4[:, t, :, :3], out=dpre4[:, t, :, :3])
            torch.mul(dh, k4[:, t, :, 3], out=dpre4[:, t, :, 3])
            if t > 0:
                dc = dc * f[:, t]
                dh = torch.bmm(dpre[:, t], w_hh)
        grad_w = torch.bmm(
            dpre.view(m, steps * bsz, four_h).transpose(1, 2),
            hbuf[:, :-1].reshape(m, steps * bsz, hid),
        )
        return dpre, grad_w


class _ReferenceGatedMemory(torch.autograd.Function):
    """The memory of ``gates="reference"``, u_t = g1_t * u_{t-1} + g2_t * p_t, where
    g_k = sigmoid(W2_k drop(relu(z_k)) + b2_k) and z = pre_t + u_{t-1} W_mem^T holds both gates'
    first layers (retain, then update). Only what reads u_{t-1} is in the per-frame loop (three
    small matmuls and a few elementwise ops, no autograd graph); the backward through time is
    hand-written and its weight gradients are one matmul each over all frames.

    Time-major: ``pre``: [T, B, 2K], the attended part of both first layers (with their
    biases); ``proposal``: [T, B, N]; ``w_mem``: [2K, N]; ``w2``: [2, N, K]; ``b2``: [2, N];
    ``mask``: dropout mask [T, B, 2K] (already scaled) or None. Returns u, [T, B, N].
    """

    @staticmethod
    def forward(ctx, pre, proposal, w_mem, w2, b2, mask):
        steps, bsz, two_k = pre.shape
        k = two_k // 2
        n = proposal.shape[-1]
        w_mem_t, w2_t, b2_ = w_mem.t(), w2.transpose(1, 2), b2.unsqueeze(1)
        a_all = pre.new_empty(steps, bsz, two_k)
        g_all = pre.new_empty(steps, 2, bsz, n)
        u_all = pre.new_zeros(steps + 1, bsz, n)  # u_{-1} = 0, then u_0 .. u_{T-1}
        for t in range(steps):
            u = u_all[t]
            a = torch.addmm(pre[t], u, w_mem_t, out=a_all[t]).relu_()
            if mask is not None:
                a.mul_(mask[t])
            gates = torch.baddbmm(b2_, a.view(bsz, 2, k).transpose(0, 1), w2_t, out=g_all[t])
            gates.sigmoid_()
            torch.addcmul(gates[1] * proposal[t], gates[0], u, out=u_all[t + 1])
        ctx.save_for_backward(a_all, g_all, u_all, proposal, w_mem, w2, mask)
        return u_all[1:]

    @staticmethod
    def backward(ctx, grad_u):
        a_all, g_all, u_all, proposal, w_mem, w2, mask = ctx.saved_tensors
        steps, _, bsz, n = g_all.shape
        two_k = a_all.shape[-1]
        k = two_k // 2
        u_prev = u_all[:-1]
        # dz2_t = du_t * s_t: s = g(1-g) times what each gate multiplies (u_{t-1}, p_t).
        s = g_all * (1 - g_all)
        s[:, 0] *= u_prev
        s[:, 1] *= proposal
        r = (a_all > 0).to(a_all.dtype)  # relu', times the dropout mask
        if mask is not None:
            r *= mask
        r = r.view(steps, bsz, 2, k).transpose(1, 2)
        g_retain = g_all[:, 0]
        du_all = torch.empty_like(u_prev)
        dz2_all = torch.empty_like(g_all)
        dz1_all = torch.empty_like(a_all)
        dz1_view = dz1_all.view(steps, bsz, 2, k).transpose(1, 2)
        du = None
        for t in range(steps - 1, -1, -1):
            du = grad_u[t] if du is None else torch.add(du, grad_u[t])
            du_all[t] = du
            dz2 = torch.mul(du, s[t], out=dz2_all[t])
            torch.mul(torch.bmm(dz2, w2), r[t], out=dz1_view[t])
            if t > 0:
                du = torch.addmm(du * g_retain[t], dz1_all[t], w_mem)
        grad_w_mem = dz1_all.view(-1, two_k).t() @ u_prev.reshape(-1, n)
        a_view = a_all.view(steps * bsz, 2, k).transpose(0, 1)
        dz2_view = dz2_all.transpose(0, 1).reshape(2, steps * bsz, n)
        grad_w2 = torch.bmm(dz2_view.transpose(1, 2), a_view)
        grad_b2 = dz2_view.sum(1)
        grad_p = du_all * g_all[:, 1]
        return dz1_all, grad_p, grad_w_mem, grad_w2, grad_b2, None


@register_model("mfn")
class MemoryFusionNetwork(nn.Module):
    def __init__(
        self,
        input_dims: Sequence[int],
        output_dim: int,
        hidden: int = 64,
        dropout: float = 0.1,
        memory: int | None = None,
        gates: Gates = "paper",
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

    def lstm_states(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden and cell states of every LSTM for every frame, time-major and concatenated
        over modalities: [T, B, M * H] each."""
        xproj = torch.stack(
            [
                F.linear(x.transpose(0, 1), lstm.weight_ih_l0, lstm.bias_ih_l0 + lstm.bias_hh_l0)
                for lstm, x in zip(self.lstms, inputs)
            ]
        )  # [M, T, B, 4H]
        w_hh = torch.stack([lstm.weight_hh_l0 for lstm in self.lstms])
        h, c = _LSTMSystem.apply(xproj, w_hh)
        m, steps, bsz, hid = h.shape
        return tuple(s.permute(1, 2, 0, 3).reshape(steps, bsz, m * hid) for s in (h, c))

    def forward(self, inputs: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        h, c = self.lstm_states(inputs)  # time-major from here on
        c_prev = F.pad(c, (0, 0, 0, 0, 1, 0))[:-1]
        both = torch.cat([c_prev, c], -1)
        attended = both * self.attention(both).softmax(-1)
        proposal = torch.tanh(self.proposal(attended))
        if self.gates == "paper":
            retain_pre = self.retain(attended)
            update = torch.sigmoid(self.update(attended))
            u = linear_scan(
                F.logsigmoid(retain_pre).transpose(0, 1), (update * proposal).transpose(0, 1)
            ).transpose(0, 1)
        else:
            u = self._reference_memory(attended, proposal)
        return {"pred": self.head(torch.cat([h, u], -1)).transpose(0, 1)}

    def _reference_memory(self, attended: torch.Tensor, proposal: torch.Tensor) -> torch.Tensor:
        """Time-major in and out. The attended part of the gates' first layers is one batched
        matmul for all frames; the rest runs in ``_ReferenceGatedMemory``."""
        r1, u1 = self.retain[0], self.update[0]
        n = attended.shape[-1]
        pre = F.linear(
            attended,
            torch.cat([r1.weight[:, :n], u1.weight[:, :n]]),
            torch.cat([r1.bias, u1.bias]),
        )
        w_mem = torch.cat([r1.weight[:, n:], u1.weight[:, n:]])
        r2, u2 = self.retain[3], self.update[3]
        w2 = torch.stack([r2.weight, u2.weight])
        b2 = torch.stack([r2.bias, u2.bias])
        mask = None
        p = self.retain[2].p
        if self.training and p > 0:
            mask = F.dropout(torch.ones_like(pre), p)
        return _ReferenceGatedMemory.apply(pre, proposal, w_mem, w2, b2, mask)


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
