"""The ``tcn`` family (shapes, exact receptive field, a temporal task a per-frame model cannot
fit) and ``FusionModel``'s modality dropout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from abaw_ray.models import create_model

DIMS = [12, 7, 5]


def _inputs(b=3, t=37, dims=DIMS, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, t, d, generator=g, dtype=dtype) for d in dims]


@pytest.mark.parametrize("task,out_dim", [("va", 2), ("expr", 8)])
@pytest.mark.parametrize("n_mod", [1, 2, 3])
@pytest.mark.parametrize("causal", [False, True])
def test_shapes(task, out_dim, n_mod, causal):
    torch.manual_seed(0)
    model = create_model("tcn", DIMS[:n_mod], task, hidden=16, layers=3, causal=causal)
    for t in (1, 37):  # also shorter than the receptive field
        out = model(_inputs(t=t, dims=DIMS[:n_mod]))
        assert out["pred"].shape == (3, t, out_dim)
        assert out["aux_loss"].shape == ()
        if task == "va":
            assert out["pred"].abs().max() <= 1.0


# (settings, receptive field, past, future), worked out by hand: block i holds two convs of
# reach (k - 1) * 2**i; causal pads all of it on the left, non-causal floor(reach / 2) left.
RECEPTIVE_FIELDS = [
    ({}, 61, 30, 30),  # defaults k=3, 4 levels: 1 + 2*2*(1+2+4+8)
    ({"layers": 3, "causal": True}, 29, 28, 0),  # 1 + 2*2*(1+2+4)
    ({"layers": 3}, 29, 14, 14),
    ({"layers": 2, "kernel_size": 2, "causal": True}, 7, 6, 0),  # 1 + 2*1*(1+2)
    # even kernel, non-causal: reaches 1, 2, 4 split as (0,1), (1,1), (2,2) per conv, x2
    ({"layers": 3, "kernel_size": 2}, 15, 6, 8),
    ({"layers": 2, "kernel_size": 5}, 25, 12, 12),  # 1 + 2*4*(1+2)
]


@pytest.mark.parametrize("settings,field,past,future", RECEPTIVE_FIELDS)
def test_an_impulse_changes_exactly_the_receptive_field(settings, field, past, future):
    torch.manual_seed(0)
    model = create_model("tcn", DIMS, "expr", hidden=16, **settings).double().eval()
    assert model.core.receptive_field == field
    assert model.core.context == (past, future)
    if settings.get("causal"):
        assert past == field - 1
    elif settings.get("kernel_size", 3) % 2:
        assert past == future == (field - 1) // 2
    steps, t = 160, 60
    xs = _inputs(b=2, t=steps, dtype=torch.float64)
    kicked = [x.clone() for x in xs]
    for x in kicked:
        x[:, t] += 3.0
    with torch.no_grad():
        diff = (model(kicked)["pred"] - model(xs)["pred"]).abs().amax(dim=(0, 2))
    changed = torch.nonzero(diff > 0).flatten().tolist()
    # Output s reads inputs s - past .. s + future, so input t reaches outputs t - future ..
    # t + past (causal: t .. t + field - 1); every other output stays bit-identical.
    assert changed == list(range(t - future, t + past + 1))


def test_receptive_field_matches_the_formula():
    for k in (2, 3, 4, 5):
        for levels in (1, 2, 3, 5):
            for causal in (False, True):
                core = create_model(
                    "tcn", [4], "va", hidden=4, layers=levels, kernel_size=k, causal=causal
                ).core
                assert core.receptive_field == 1 + 2 * (k - 1) * (2**levels - 1)
                past, future = core.context
                assert (future == 0) == causal or k == 1


def _delay_task_loss(model: nn.Module, steps: int, seed: int) -> float:
    """Train on target_t = 0.8 * x_{t-5} (first two channels of modality 0; fresh uniform
    noise every step) and return the mean MSE of the last 20 steps. Frames are independent,
    so any per-frame model's best MSE is the target's variance, 0.64 / 3."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    lag, losses = 5, []
    for _ in range(steps):
        xs = [torch.rand(16, 48, d, generator=g) * 2 - 1 for d in (3, 2)]
        target = 0.8 * xs[0][:, :-lag, :2]
        pred = model(xs)["pred"][:, lag:]
        loss = (pred - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return sum(losses[-20:]) / 20


class _PerFrameLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(5, 2)

    def forward(self, xs):
        return {"pred": torch.tanh(self.linear(torch.cat(xs, -1)))}


@pytest.mark.parametrize(
    "settings,steps,fits",
    [
        ({}, 150, True),  # non-causal, 3 levels: reach 14 frames each way
        ({"causal": True}, 150, True),  # past reach 28
        # Controls: a per-frame linear model (None); the same TCN with 1-tap convolutions
        # (field 1); a causal TCN whose past reach, 4 frames (1 level, k=3), is one short.
        (None, 100, False),
        ({"kernel_size": 1}, 100, False),
        ({"layers": 1, "causal": True}, 100, False),
    ],
    ids=["tcn", "tcn_causal", "per_frame_linear", "tcn_one_tap", "tcn_causal_past_4"],
)
def test_only_a_field_reaching_the_lag_fits_it(settings, steps, fits):
    if settings is None:
        model = _PerFrameLinear()
    else:
        settings = {"hidden": 32, "layers": 3, "dropout": 0.0} | settings
        model = create_model("tcn", [3, 2], "va", **settings)
    variance = 0.64 / 3  # of 0.8 * U(-1, 1): the best any model blind to x_{t-5} can do
    loss = _delay_task_loss(model, steps, 0) / variance
    if fits:
        assert loss < 0.15, loss  # measured 0.01-0.05 over seeds 0-3
    else:
        assert loss > 0.9, loss  # measured 0.98-1.09


def _spy(model):
    """Replace the core with one that records what reaches it (after modality dropout)."""
    seen: list[list[torch.Tensor]] = []

    class Spy(nn.Module):
        def forward(self, xs):
            seen.append([x.detach().clone() for x in xs])
            return {"pred": torch.zeros(xs[0].shape[0], xs[0].shape[1], 2)}

    model.core = Spy()
    return seen


def test_modality_dropout_rate_and_never_all():
    p, n_mod, bsz = 0.3, 3, 20_000
    torch.manual_seed(0)
    model = create_model("tcn", DIMS, "va", hidden=8, modality_dropout=p).train()
    assert model.modality_dropout == p
    seen = _spy(model)
    xs = [torch.rand(bsz, 4, d) + 0.5 for d in DIMS]  # never zero
    model(xs)
    got = seen[0]
    zero = torch.stack([(x == 0).flatten(1).all(1) for x in got], 1)  # [B, M]
    some = torch.stack([(x == 0).flatten(1).any(1) for x in got], 1)
    assert torch.equal(zero, some)  # a modality is dropped whole or not at all
    for x, orig, z in zip(got, xs, zero.T):
        torch.testing.assert_close(x[~z], orig[~z], rtol=0, atol=0)  # survivors not rescaled
    assert not zero.all(1).any()  # never every modality of one sample
    rate = zero.float().mean(0)
    expected = p - p**n_mod / n_mod  # all-dropped samples keep one of the M at random
    assert (rate - expected).abs().max() < 0.015, rate
    assert (rate - p).abs().max() < 0.03, rate
    # Samples that lost two modalities: which one survived is spread evenly.
    survivors = (~zero[zero.sum(1) == n_mod - 1]).float().mean(0)
    assert (survivors - 1 / n_mod).abs().max() < 0.05, survivors


def test_modality_dropout_keeps_a_random_one_when_all_would_drop():
    torch.manual_seed(1)
    model = create_model("tcn", DIMS, "va", hidden=8, modality_dropout=1.0).train()
    seen = _spy(model)
    model([torch.ones(3000, 2, d) for d in DIMS])
    kept = torch.stack([(x != 0).flatten(1).all(1) for x in seen[0]], 1)
    assert torch.equal(kept.sum(1), torch.ones(3000, dtype=torch.long))
    assert (kept.float().mean(0) - 1 / 3).abs().max() < 0.04


def test_a_single_modality_is_never_dropped():
    model = create_model("tcn", DIMS[:1], "va", hidden=8, modality_dropout=0.9).train()
    seen = _spy(model)
    x = torch.rand(500, 3, DIMS[0]) + 0.5
    model([x])
    assert torch.equal(seen[0][0], x)


def test_modality_dropout_is_the_identity_in_eval():
    torch.manual_seed(0)
    plain = create_model("tcn", DIMS, "va", hidden=16, dropout=0.0)
    dropping = create_model("tcn", DIMS, "va", hidden=16, dropout=0.0, modality_dropout=0.5)
    dropping.load_state_dict(plain.state_dict())  # no parameters of its own
    xs = _inputs(b=8)
    plain.eval()
    dropping.eval()
    with torch.no_grad():
        torch.testing.assert_close(dropping(xs)["pred"], plain(xs)["pred"], rtol=0, atol=0)
        plain.train()
        dropping.train()
        ref = plain(xs)["pred"]  # no dropout at all: deterministic
        assert not torch.equal(dropping(xs)["pred"], ref)  # in training it does drop


def test_modality_dropout_reaches_other_families_and_is_checked():
    model = create_model("attention", DIMS, "va", hidden=8, modality_dropout=0.2)
    assert model.modality_dropout == 0.2
    assert create_model("tcn", DIMS, "va", modality_dropout=None).modality_dropout == 0.0
    with pytest.raises(ValueError, match="modality_dropout"):
        create_model("tcn", DIMS, "va", modality_dropout=1.5)


@pytest.mark.parametrize("bad", [{"bogus": 1}, {"heads": 4}, {"dilation": 2}])
def test_unknown_setting_raises_type_error(bad):
    with pytest.raises(TypeError):
        create_model("tcn", DIMS, "va", **bad)


def test_search_space_names_are_taken():
    core = create_model("tcn", DIMS, "va", hidden=24, dropout=0.2, layers=2).core
    assert core.head.in_features == 24
    assert len(core.blocks) == 2
    assert core.blocks[0].drop.p == 0.2
