import numpy as np
import pytest
import torch
import torch.nn.functional as F

from abaw_ray.losses import ccc_loss, ccc_per_target, smoothed_cross_entropy, soft_macro_f1_loss
from abaw_ray.metrics import ccc


def test_ccc_loss_equals_one_minus_metric():
    rng = np.random.default_rng(0)
    pred = rng.normal(size=(4, 30, 2))
    target = rng.normal(size=(4, 30, 2)) * 0.5 + pred * 0.5
    mask = rng.random((4, 30)) > 0.2
    got = ccc_per_target(torch.tensor(pred), torch.tensor(target), torch.tensor(mask))
    for d in range(2):
        expected = ccc(pred[..., d][mask], target[..., d][mask])
        assert got[d].item() == pytest.approx(expected, abs=1e-6)
    loss = ccc_loss(torch.tensor(pred), torch.tensor(target), torch.tensor(mask))
    assert loss.item() == pytest.approx(1 - got.mean().item(), abs=1e-9)


def test_ccc_loss_is_finite_on_constant_inputs():
    pred = torch.zeros(2, 10, 2, requires_grad=True)
    target = torch.zeros(2, 10, 2)
    loss = ccc_loss(pred, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all()
    assert loss.item() == pytest.approx(1.0)


def test_soft_f1_is_low_for_confident_correct_and_ignores_invalid():
    target = torch.tensor([[0, 1, 2, -1]])
    logits = F.one_hot(target.clamp(min=0), 8).float() * 30
    logits[0, 3] = torch.randn(8)  # an invalid frame: must not count
    assert soft_macro_f1_loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)
    wrong = F.one_hot(torch.tensor([[1, 2, 0, 0]]), 8).float() * 30
    assert soft_macro_f1_loss(wrong, target).item() == pytest.approx(1.0, abs=1e-6)


def test_soft_f1_has_gradient():
    logits = torch.randn(2, 16, 8, requires_grad=True)
    target = torch.randint(0, 8, (2, 16))
    soft_macro_f1_loss(logits, target).backward()
    assert logits.grad.abs().sum() > 0


def test_smoothed_cross_entropy_matches_torch_and_skips_invalid():
    logits = torch.randn(3, 5, 8)
    target = torch.randint(0, 8, (3, 5))
    target[0, 0] = -1
    got = smoothed_cross_entropy(logits, target, smoothing=0.1)
    keep = target.reshape(-1) >= 0
    expected = F.cross_entropy(
        logits.reshape(-1, 8)[keep], target.reshape(-1)[keep], label_smoothing=0.1
    )
    assert got.item() == pytest.approx(expected.item(), abs=1e-6)
