"""``mctn``: Multimodal Cyclic Translation Network (Pham et al., 2019), per frame.

The source modality is translated into each other modality in turn (hierarchically: the joint
representation of one step is the source of the next) by a batch-first seq2seq; a backward
translator maps the translation back to the source (cycle consistency). The encoder states
of the last step are the joint representation that the per-frame regressor reads; at test
time only the source modality's path runs. Auxiliary loss:
``loss_weight * (translation MSE + cycle MSE)``.

Two defects of the public reference code are fixed: its LSTMs ran over the batch axis
(``batch_first`` missing), and its teacher forcing never switched off. Here the training loop
sets ``teacher_forcing`` each epoch (a decaying schedule); a batch whose coin says "free
running" feeds the decoder its own previous prediction, frame by frame.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from abaw_ray.models.registry import register_model


class Translator(nn.Module):
    def __init__(self, source_dim: int, target_dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.encoder = nn.LSTM(source_dim, hidden, batch_first=True, bidirectional=True)
        self.joint = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.Tanh(), nn.Dropout(dropout))
        self.decoder = nn.LSTM(hidden + target_dim, hidden, batch_first=True)
        self.out = nn.Linear(hidden, target_dim)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        e, _ = self.encoder(x)
        return self.joint(e)

    def decode(self, e: torch.Tensor, target: torch.Tensor, teacher_forced: bool) -> torch.Tensor:
        if teacher_forced:  # previous ground-truth frame as input: one fused LSTM call
            prev = F.pad(target, (0, 0, 1, 0))[:, :-1]
            h, _ = self.decoder(torch.cat([e, prev], -1))
            return self.out(h)
        y_prev = target.new_zeros(target.shape[0], target.shape[2])
        state = None
        outs = []
        for t in range(e.shape[1]):
            h, state = self.decoder(torch.cat([e[:, t], y_prev], -1).unsqueeze(1), state)
            y_prev = self.out(h[:, 0])
            outs.append(y_prev)
        return torch.stack(outs, 1)


class CyclicTranslationNetwork(nn.Module):
    def __init__(
        self,
        input_dims: Sequence[int],
        output_dim: int,
        hidden: int = 64,
        dropout: float = 0.1,
        loss_weight: float = 0.1,
        **_: object,
    ) -> None:
        super().__init__()
        self.loss_weight = float(loss_weight)
        self.teacher_forcing = 1.0  # set by the training loop every epoch
        self.norms = nn.ModuleList(nn.LayerNorm(d, elementwise_affine=False) for d in input_dims)
        self.forward_translators = nn.ModuleList()
        self.backward_translators = nn.ModuleList()
        source = input_dims[0]
        for target in input_dims[1:]:
            self.forward_translators.append(Translator(source, target, hidden, dropout))
            self.backward_translators.append(Translator(target, source, hidden, dropout))
            source = hidden
        self.unimodal = nn.Linear(input_dims[0], hidden) if len(input_dims) == 1 else None
        self.regressor = nn.LSTM(hidden, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * hidden, output_dim))
        self.last_losses: dict[str, float] = {}

    def forward(self, inputs: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        xs = [norm(x) for norm, x in zip(self.norms, inputs)]
        source = xs[0]
        aux = source.new_zeros(())
        trans_total = cycle_total = 0.0
        if self.unimodal is not None:
            source = torch.tanh(self.unimodal(source))
        for fwd, bwd, target in zip(self.forward_translators, self.backward_translators, xs[1:]):
            joint = fwd.encode(source)
            if self.training:
                forced = bool(torch.rand(()) < self.teacher_forcing)
                translated = fwd.decode(joint, target, forced)
                back = bwd.decode(bwd.encode(translated), source.detach(), forced)
                trans = F.mse_loss(translated, target)
                cycle = F.mse_loss(back, source.detach())
                aux = aux + trans + cycle
                trans_total += float(trans.detach())
                cycle_total += float(cycle.detach())
            source = joint
        self.last_losses = {"translation": trans_total, "cycle": cycle_total}
        h, _ = self.regressor(source)
        return {"pred": self.head(h), "aux_loss": self.loss_weight * aux}


@register_model("mctn")
def build(input_dims: Sequence[int], output_dim: int, **hp: object) -> nn.Module:
    return CyclicTranslationNetwork(input_dims, output_dim, **hp)
