"""``mctn``: Multimodal Cyclic Translation Network (Pham et al., AAAI 2019), per frame.

Modality 0 is the source; with M modalities the model has M - 1 translation levels. Level 1
encodes the source X_S (a bidirectional LSTM, then a Linear + tanh "joint" layer) and a
seq2seq decoder translates it into modality 1; level l >= 2 encodes the joint representation
of level l - 1 (its encoder states) and translates it into modality l. Each level adds a
forward translation loss, MSE(translation, X_Tl). A cycle (a backward translator that maps
the level's translation back to its source, with loss MSE(back-translation, source)) exists
only at level 1 by default (``cycle="first"``, as published: level 2 of the hierarchical model
has no cycle); ``cycle="every"`` adds one at each level, translating back to that level's
source (the previous joint representation, detached). Backward translators are built only for
the levels that have a cycle. The encoder states of the last level are the joint
representation that the per-frame regressor (a bidirectional LSTM + linear head) reads; at
test time (eval mode) only this source path runs and the other modalities are not needed.
With a single modality a linear + tanh layer replaces the translators. Auxiliary loss in
training: ``loss_weight * (sum of translation losses + sum of cycle losses)``; 0 in eval.

Logged losses: every training-mode forward adds its per-level losses to accumulators (eval
forwards leave them alone). ``pop_losses()`` returns their means over the training batches
since the last pop and resets them: keys ``translation`` (sum over levels), ``cycle`` (sum
over the levels with a cycle), and per level ``translation_l1``, ``translation_l2``, ...,
``cycle_l1``, ...; an empty dict when no training batch ran since the last pop. The training
loop pops once per epoch and logs ``train_<key>_loss``. ``last_losses`` holds the same keys
for the most recent training batch alone.

Two defects of the public reference code are fixed: its LSTMs ran over the batch axis
(``batch_first`` missing), and its teacher forcing never switched off. Here the training loop
sets ``teacher_forcing`` (a float in [0, 1]) each epoch (a decaying schedule); a batch whose
coin says "free running" feeds the decoders their own previous prediction, frame by frame.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from abaw_ray.models.registry import register_model

Cycle = Literal["first", "every"]  # a backward translator at level 1 only, or at every level
CYCLE_MODES = typing.get_args(Cycle)


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


@register_model("mctn")
class CyclicTranslationNetwork(nn.Module):
    def __init__(
        self,
        input_dims: Sequence[int],
        output_dim: int,
        hidden: int = 64,
        dropout: float = 0.1,
        loss_weight: float = 0.1,
        cycle: Cycle = "first",
    ) -> None:
        if cycle not in CYCLE_MODES:
            raise ValueError(f"cycle must be one of {', '.join(CYCLE_MODES)}; got {cycle!r}")
        super().__init__()
        self.loss_weight = float(loss_weight)
        self.cycle = cycle
        self.teacher_forcing = 1.0  # set by the training loop every epoch
        self.norms = nn.ModuleList(nn.LayerNorm(d, elementwise_affine=False) for d in input_dims)
        self.forward_translators = nn.ModuleList()
        # backward_translators[i] is level i + 1's cycle; levels past its length have none.
        self.backward_translators = nn.ModuleList()
        source = input_dims[0]
        for level, target in enumerate(input_dims[1:]):
            self.forward_translators.append(Translator(source, target, hidden, dropout))
            if level == 0 or cycle == "every":
                self.backward_translators.append(Translator(target, source, hidden, dropout))
            source = hidden
        self.unimodal = nn.Linear(input_dims[0], hidden) if len(input_dims) == 1 else None
        self.regressor = nn.LSTM(hidden, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * hidden, output_dim))
        # Detached per-level losses: the last training batch, and sums since the last pop.
        self._last: dict[str, torch.Tensor] = {}
        self._sums: dict[str, torch.Tensor] = {}
        self._batches = 0

    def forward(self, inputs: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        xs = [norm(x) for norm, x in zip(self.norms, inputs)]
        source = xs[0]
        aux = source.new_zeros(())
        losses: dict[str, torch.Tensor] = {}
        if self.unimodal is not None:
            source = torch.tanh(self.unimodal(source))
        for level, fwd in enumerate(self.forward_translators):
            joint = fwd.encode(source)
            if self.training:
                target = xs[level + 1]
                forced = bool(torch.rand(()) < self.teacher_forcing)
                translated = fwd.decode(joint, target, forced)
                trans = F.mse_loss(translated, target)
                aux = aux + trans
                losses[f"translation_l{level + 1}"] = trans.detach()
                if level < len(self.backward_translators):
                    bwd = self.backward_translators[level]
                    back = bwd.decode(bwd.encode(translated), source.detach(), forced)
                    cyc = F.mse_loss(back, source.detach())
                    aux = aux + cyc
                    losses[f"cycle_l{level + 1}"] = cyc.detach()
            source = joint
        if self.training:
            self._record(losses, aux.new_zeros(()))
        h, _ = self.regressor(source)
        return {"pred": self.head(h), "aux_loss": self.loss_weight * aux}

    def _record(self, losses: dict[str, torch.Tensor], zero: torch.Tensor) -> None:
        trans = [v for k, v in losses.items() if k.startswith("translation_")]
        cycles = [v for k, v in losses.items() if k.startswith("cycle_")]
        batch = dict(losses)  # a single modality translates nothing: no losses to log
        if trans:
            batch["translation"] = sum(trans, zero)
        if cycles:
            batch["cycle"] = sum(cycles, zero)
        self._last = batch
        for k, v in batch.items():
            self._sums[k] = self._sums[k] + v if k in self._sums else v
        self._batches += 1

    @property
    def last_losses(self) -> dict[str, float]:
        """The most recent training batch's losses (eval forwards do not change them)."""
        return {k: float(v) for k, v in self._last.items()}

    def pop_losses(self) -> dict[str, float]:
        """Mean per-batch losses of the training forwards since the last pop; resets them.
        Keys: translation, cycle, translation_l<i>, cycle_l<i>; {} if no training batch."""
        n, sums = self._batches, self._sums
        self._sums, self._batches = {}, 0
        return {k: float(v) / n for k, v in sums.items()} if n else {}
