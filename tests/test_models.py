"""Shape, gradient and oracle tests for every fusion model."""

from __future__ import annotations

import pytest
import torch

from abaw_ray.models import create_model, list_models
from abaw_ray.models.layers import ConvAlign, linear_scan
from abaw_ray.models.mfn import _LSTMSystem, _ReferenceGatedMemory, mfn_reference_forward

DIMS = [12, 7, 5]


def _inputs(b=3, t=37, dims=DIMS, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, t, d, generator=g) for d in dims]


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("task,out_dim", [("va", 2), ("expr", 8)])
@pytest.mark.parametrize("n_mod", [1, 3])
def test_shapes(name, task, out_dim, n_mod):
    torch.manual_seed(0)
    model = create_model(name, DIMS[:n_mod], task, hidden=16)
    out = model(_inputs(dims=DIMS[:n_mod]))
    assert out["pred"].shape == (3, 37, out_dim)
    if task == "va":
        assert out["pred"].abs().max() <= 1.0
    assert out["aux_loss"].shape == ()


@pytest.mark.parametrize("name", list_models())
def test_every_parameter_gets_a_finite_gradient(name):
    torch.manual_seed(0)
    model = create_model(name, DIMS, "va", hidden=16, dropout=0.0)
    model.train()
    out = model(_inputs())
    (out["pred"].pow(2).mean() + out["aux_loss"]).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", list_models())
def test_samples_do_not_mix_across_the_batch(name):
    """The reference MCTN ran its LSTMs over the batch axis; here each sample stands alone."""
    torch.manual_seed(0)
    model = create_model(name, DIMS, "va", hidden=16).eval()
    xs = _inputs(b=4)
    with torch.no_grad():
        full = model(xs)["pred"]
        alone = model([x[2:3] for x in xs])["pred"]
    torch.testing.assert_close(full[2:3], alone, atol=1e-5, rtol=1e-4)


def test_linear_scan_gradients_match_autograd_through_the_loop():
    g = torch.Generator().manual_seed(1)
    log_a = (torch.randn(2, 19, 3, generator=g) - 1).requires_grad_()
    b = torch.randn(2, 19, 3, generator=g, requires_grad=True)
    h0 = torch.randn(2, 3, generator=g, requires_grad=True)
    w = torch.randn(2, 19, 3, generator=g)
    (linear_scan(log_a, b, h0) * w).sum().backward()
    fast = [t.grad.clone() for t in (log_a, b, h0)]
    for t in (log_a, b, h0):
        t.grad = None
    h, out = h0, []
    for t in range(19):
        h = log_a[:, t].exp() * h + b[:, t]
        out.append(h)
    (torch.stack(out, 1) * w).sum().backward()
    for f, t in zip(fast, (log_a, b, h0)):
        torch.testing.assert_close(f, t.grad, atol=1e-5, rtol=1e-5)


def test_linear_scan_matches_the_loop():
    g = torch.Generator().manual_seed(0)
    log_a = torch.nn.functional.logsigmoid(torch.randn(2, 53, 6, generator=g) * 3)
    b = torch.randn(2, 53, 6, generator=g)
    h0 = torch.randn(2, 6, generator=g)
    h, out = h0, []
    for t in range(53):
        h = log_a[:, t].exp() * h + b[:, t]
        out.append(h)
    torch.testing.assert_close(linear_scan(log_a, b, h0), torch.stack(out, 1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("gates", ["paper", "reference"])
def test_mfn_equals_its_per_frame_oracle(gates):
    torch.manual_seed(0)
    model = create_model("mfn", DIMS, "va", hidden=24, gates=gates).eval()
    xs = _inputs(b=4, t=75)  # not a multiple of the scan's chunk
    with torch.no_grad():
        fast = model.core(xs)["pred"]
        oracle = mfn_reference_forward(model.core, xs)
    assert (fast - oracle).abs().max() < 1e-5


@pytest.mark.parametrize("gates", ["paper", "reference"])
def test_mfn_gradients_match_the_oracle(gates):
    torch.manual_seed(1)
    model = create_model("mfn", DIMS[:2], "va", hidden=8, dropout=0.0, gates=gates).eval()
    xs = _inputs(b=2, t=20, dims=DIMS[:2])
    model.core(xs)["pred"].sum().backward()
    fast = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    mfn_reference_forward(model.core, xs).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(fast[n], p.grad, atol=1e-4, rtol=1e-4)


def test_mfn_hand_written_backwards_pass_gradcheck():
    # Double precision, finite differences against the hand-written backward passes: the LSTM
    # system, and the reference-gated memory with a dropout mask (which the oracle test, in
    # eval mode, does not reach).
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)

    m, steps, bsz, hid = 2, 5, 3, 4
    assert torch.autograd.gradcheck(
        lambda x, w: _LSTMSystem.apply(x, w), (rand(m, steps, bsz, 4 * hid), rand(m, 4 * hid, hid))
    )
    k, n = 3, 4
    mask = (torch.rand(steps, bsz, 2 * k, generator=g) > 0.3).double() / 0.7
    assert torch.autograd.gradcheck(
        lambda pre, p, wm, w2, b2: _ReferenceGatedMemory.apply(pre, p, wm, w2, b2, mask),
        (rand(steps, bsz, 2 * k), rand(steps, bsz, n), rand(2 * k, n), rand(2, n, k), rand(2, n)),
    )


def test_conv_alignment_interpolates_the_strided_conv_output():
    torch.manual_seed(0)
    align = ConvAlign(4, 3, kernel=5, stride=2)
    x = torch.randn(1, 20, 4)
    h = align.act(align.conv(x.transpose(1, 2))).transpose(1, 2)  # [1, 10, 3]
    pos = torch.tensor([[0.0, 4.0, 5.0, 18.0]])  # native indices; conv output j sits at 2j
    out = align(x, pos)
    torch.testing.assert_close(out[0, 0], h[0, 0])
    torch.testing.assert_close(out[0, 1], h[0, 2])
    torch.testing.assert_close(out[0, 2], 0.5 * (h[0, 2] + h[0, 3]))
    torch.testing.assert_close(out[0, 3], h[0, 9])


def test_conv_aligned_model_takes_native_rate_audio():
    model = create_model("attention", [12, 7], "va", align=[None, "conv"], hidden=16)
    frames = torch.randn(2, 30, 12)
    audio = torch.randn(2, 55, 7)  # ~50 Hz audio against 30 fps video
    pos = torch.linspace(0, 53, 30).expand(2, 30)
    assert model([frames, audio], [None, pos])["pred"].shape == (2, 30, 2)
    with pytest.raises(ValueError, match="positions"):
        model([frames, audio])


def test_mctn_cycle_loss_falls_and_teacher_forcing_switches():
    torch.manual_seed(0)
    model = create_model("mctn", [6, 4], "va", hidden=16, dropout=0.0, loss_weight=1.0)
    core = model.core
    g = torch.Generator().manual_seed(0)
    src = torch.randn(8, 24, 6, generator=g)
    mix = torch.randn(6, 4, generator=g)
    tgt = torch.tanh(src @ mix)  # a learnable translation
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    cycles = []
    for step in range(60):
        core.teacher_forcing = max(0.0, 1.0 - step / 30)
        out = model([src, tgt])
        opt.zero_grad()
        out["aux_loss"].backward()
        opt.step()
        cycles.append(core.last_losses["cycle"])
    assert sum(cycles[-5:]) / 5 < 0.5 * sum(cycles[:5]) / 5
    # Forced and free-running decoding differ: the schedule really switches modes.
    fwd = core.forward_translators[0]
    with torch.no_grad():
        e = fwd.encode(core.norms[0](src))
        forced = fwd.decode(e, core.norms[1](tgt), teacher_forced=True)
        free = fwd.decode(e, core.norms[1](tgt), teacher_forced=False)
    assert not torch.allclose(forced, free)
    # In eval only the source path runs: no translation loss, the target is not needed.
    model.eval()
    assert float(model([src, tgt])["aux_loss"]) == 0.0
