"""MCTN: hierarchical translation levels, where the cycle is, and the logged training losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from abaw_ray.models import create_model

DIMS = [6, 5, 4]


def _inputs(seed, b=2, t=10, dims=DIMS):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, t, d, generator=g) for d in dims]


def _model(cycle="first", seed=0, loss_weight=0.3, dims=DIMS):
    torch.manual_seed(seed)
    model = create_model(
        "mctn", dims, "va", hidden=8, dropout=0.0, loss_weight=loss_weight, cycle=cycle
    )
    model.core.teacher_forcing = 1.0  # deterministic: every batch teacher-forced
    return model.train()


@torch.no_grad()
def _by_hand(core, inputs):
    """Each level's losses, recomputed from the translators' own encode/decode steps."""
    xs = [norm(x) for norm, x in zip(core.norms, inputs)]
    source, losses = xs[0], {}
    for level, fwd in enumerate(core.forward_translators, start=1):
        joint = fwd.encode(source)
        translated = fwd.decode(joint, xs[level], teacher_forced=True)
        losses[f"translation_l{level}"] = float(F.mse_loss(translated, xs[level]))
        if level <= len(core.backward_translators):
            bwd = core.backward_translators[level - 1]
            back = bwd.decode(bwd.encode(translated), source, teacher_forced=True)
            losses[f"cycle_l{level}"] = float(F.mse_loss(back, source))
        source = joint
    return losses


@pytest.mark.parametrize("teacher_forcing", [1.0, 0.0])
@pytest.mark.parametrize("cycle", ["first", "every"])
def test_both_levels_train_and_the_level2_cycle_exists_only_with_every(cycle, teacher_forcing):
    model = _model(cycle)
    core = model.core
    core.teacher_forcing = teacher_forcing  # 0.0: free-running decoders, frame by frame
    out = model(_inputs(0))
    pred_loss = out["pred"].pow(2).mean()
    # End to end: the prediction alone reaches level 1's encoder through level 2's joint.
    encoder_1 = list(core.forward_translators[0].encoder.parameters())
    grads = torch.autograd.grad(pred_loss, encoder_1, retain_graph=True)
    assert all(g.abs().sum() > 0 for g in grads)
    (pred_loss + out["aux_loss"]).backward()
    assert len(core.forward_translators) == 2
    for level, fwd in enumerate(core.forward_translators, start=1):
        for name, p in fwd.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"level {level}: {name}"
    # "first" (published): the level-2 backward translator is not built at all.
    assert len(core.backward_translators) == (1 if cycle == "first" else 2)
    names = [n for n, _ in model.named_parameters()]
    assert any(n.startswith("core.backward_translators.0.") for n in names)
    assert any(n.startswith("core.backward_translators.1.") for n in names) == (cycle == "every")
    for bwd in core.backward_translators:
        for name, p in bwd.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert set(core.pop_losses()) == {
        "translation",
        "cycle",
        "translation_l1",
        "translation_l2",
        "cycle_l1",
        *(["cycle_l2"] if cycle == "every" else []),
    }


def test_pop_losses_are_the_training_means_and_eval_leaves_them_alone():
    model = _model("first", loss_weight=0.3)
    core = model.core
    by_hand = []
    for seed in (1, 2):  # two training batches
        xs = _inputs(seed)
        out = model(xs)
        (out["pred"].pow(2).mean() + out["aux_loss"]).backward()  # no optimizer step
        hand = _by_hand(core, xs)
        by_hand.append(hand)
        assert float(out["aux_loss"].detach()) == pytest.approx(0.3 * sum(hand.values()), abs=1e-6)
    assert set(by_hand[0]) == {"translation_l1", "translation_l2", "cycle_l1"}
    model.eval()
    with torch.no_grad():
        assert float(model(_inputs(3))["aux_loss"]) == 0.0  # an eval pass after training
    # last_losses: the most recent training batch, untouched by the eval pass.
    assert core.last_losses["translation_l1"] == pytest.approx(by_hand[1]["translation_l1"])
    popped = core.pop_losses()
    mean = {k: (by_hand[0][k] + by_hand[1][k]) / 2 for k in by_hand[0]}
    assert set(popped) == {"translation", "cycle", *mean}
    for k, v in mean.items():
        assert popped[k] == pytest.approx(v, abs=1e-6), k
    assert popped["translation"] > 0
    assert popped["translation"] == pytest.approx(
        mean["translation_l1"] + mean["translation_l2"], abs=1e-6
    )
    assert popped["cycle"] == pytest.approx(mean["cycle_l1"], abs=1e-6)
    # Chosen behaviour: with no training batch since the last pop, pop returns {}.
    assert core.pop_losses() == {}
    with torch.no_grad():
        model(_inputs(4))  # still in eval mode: accumulates nothing
    assert core.pop_losses() == {}
    model.train()
    model(_inputs(5))
    assert core.pop_losses()["translation_l1"] == pytest.approx(
        _by_hand(core, _inputs(5))["translation_l1"], abs=1e-6
    )


def test_cycle_every_adds_exactly_the_weighted_level2_cycle():
    first, every = _model("first"), _model("every")
    # Same seed; copy the shared weights so only the extra level-2 cycle differs.
    missing, unexpected = every.load_state_dict(first.state_dict(), strict=False)
    assert unexpected == []
    assert missing and all(k.startswith("core.backward_translators.1.") for k in missing)
    xs = _inputs(6)
    out_first, out_every = first(xs), every(xs)
    torch.testing.assert_close(out_first["pred"], out_every["pred"])
    cycle_l2 = every.core.last_losses["cycle_l2"]
    assert cycle_l2 > 0
    diff = float(out_every["aux_loss"].detach() - out_first["aux_loss"].detach())
    assert diff == pytest.approx(0.3 * cycle_l2, abs=1e-6)
    assert cycle_l2 == pytest.approx(_by_hand(every.core, xs)["cycle_l2"], abs=1e-6)
    pf, pe = first.core.pop_losses(), every.core.pop_losses()
    assert "cycle_l2" not in pf
    assert pe["cycle"] == pytest.approx(pf["cycle"] + cycle_l2, abs=1e-6)
    assert pe["translation"] == pytest.approx(pf["translation"], abs=1e-6)


def test_single_modality_has_no_levels_and_logs_no_translation_losses():
    model = _model(dims=[6])
    out = model(_inputs(7, dims=[6]))
    assert float(out["aux_loss"].detach()) == 0.0
    assert model.core.pop_losses() == {}  # nothing translated: no zeros that look measured


def test_misspelt_setting_raises_type_error():
    with pytest.raises(TypeError, match="hiden"):
        create_model("mctn", [6, 5], "va", hiden=8)


def test_unknown_cycle_mode_raises_value_error():
    with pytest.raises(ValueError, match="first, every"):
        create_model("mctn", [6, 5], "va", cycle="bogus")
