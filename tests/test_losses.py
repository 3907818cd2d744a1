import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from abaw_ray.losses import (
    ccc_loss,
    ccc_per_target,
    focal_loss,
    smoothed_cross_entropy,
    soft_macro_f1_loss,
)
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


def test_focal_loss_matches_hand_computation():
    # Two classes. Frame 1: logits (0, 0), class 0: p_t = 1/2. Frames 2 and 3: logits
    # (ln 3, 0), so p = (3/4, 1/4); frame 2 is class 0 (p_t = 3/4), frame 3 class 1 (p_t = 1/4).
    # gamma = 2: (1/2)^2 ln 2, (1/4)^2 ln(4/3), (3/4)^2 ln 4, averaged over the 3 frames.
    logits = torch.tensor([[0.0, 0.0], [math.log(3), 0.0], [math.log(3), 0.0]])
    target = torch.tensor([0, 0, 1])
    terms = [math.log(2) / 4, math.log(4 / 3) / 16, 9 * math.log(4) / 16]
    assert focal_loss(logits, target).item() == pytest.approx(sum(terms) / 3, abs=1e-6)
    # alpha = (0.25, 0.75): each frame's term times its class's alpha; still / 3 frames.
    alpha = torch.tensor([0.25, 0.75])
    weighted = (0.25 * terms[0] + 0.25 * terms[1] + 0.75 * terms[2]) / 3
    got = focal_loss(logits, target, class_weights=alpha)
    assert got.item() == pytest.approx(weighted, abs=1e-6)


def test_focal_loss_with_gamma_zero_is_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 8) * 3
    target = torch.randint(0, 8, (3, 7))
    expected = F.cross_entropy(logits.reshape(-1, 8), target.reshape(-1))
    assert focal_loss(logits, target, gamma=0.0).item() == pytest.approx(expected.item(), 1e-6)
    # With class weights: the per-frame weighted CE averaged over frames (not over weights).
    w = torch.rand(8) + 0.5
    per = F.cross_entropy(logits.reshape(-1, 8), target.reshape(-1), weight=w, reduction="none")
    got = focal_loss(logits, target, gamma=0.0, class_weights=w)
    assert got.item() == pytest.approx(per.mean().item(), rel=1e-6)


def test_focal_loss_ignores_masked_and_invalid_frames():
    torch.manual_seed(1)
    logits = torch.randn(2, 6, 8)
    target = torch.randint(0, 8, (2, 6))
    target[0, 2] = -1
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    keep = (target >= 0) & mask
    expected = focal_loss(logits[keep], target[keep])
    changed = logits.clone()
    changed[0, 2] = 100 * torch.randn(8)  # the -1 frame and the masked ones may hold anything
    changed[1, 4:] = 100 * torch.randn(2, 8)
    got = focal_loss(changed, target, mask)
    assert got.item() == pytest.approx(expected.item(), abs=1e-6)
    assert got.item() != pytest.approx(focal_loss(changed, target.clamp(min=0)).item(), abs=1e-3)


def test_focal_loss_is_zero_with_gradient_when_nothing_is_valid():
    logits = torch.randn(2, 4, 8, requires_grad=True)
    target = torch.full((2, 4), -1)
    loss = focal_loss(logits, target)
    loss.backward()
    assert loss.item() == 0.0
    assert logits.grad is not None and torch.equal(logits.grad, torch.zeros_like(logits))
    masked = focal_loss(logits, torch.zeros(2, 4), torch.zeros(2, 4, dtype=torch.bool))
    assert masked.item() == 0.0 and masked.requires_grad


def test_focal_loss_down_weights_easy_frames_relative_to_cross_entropy():
    # Per frame, focal / CE = (1 - p_t)^gamma: near 0 for an easy frame, near 1 for a hard one.
    target = torch.zeros(4, dtype=torch.long)
    p_true = torch.tensor([0.95, 0.9, 0.2, 0.05])
    logits = torch.stack([p_true.log(), (1 - p_true).log()], 1)  # softmax gives back p_true
    ce = F.cross_entropy(logits, target, reduction="none")
    focal = torch.stack([focal_loss(logits[i : i + 1], target[i : i + 1]) for i in range(4)])
    ratio = focal / ce
    assert torch.allclose(ratio, (1 - p_true) ** 2, atol=1e-5)
    assert ratio[0] < 0.01 and ratio[3] > 0.9
    # In a batch, the easy frames' share of the loss shrinks: hard frames dominate.
    easy_share_ce = ce[:2].sum() / ce.sum()
    easy_share_focal = (focal[:2].sum() / focal.sum()).item()
    assert easy_share_focal < easy_share_ce.item() / 10
    assert focal_loss(logits, target).item() < F.cross_entropy(logits, target).item()


def test_frame_weights_count_a_frame_that_many_times():
    """Weight 2 = the frame twice, weight 0 = the frame absent: each loss equals the unweighted
    loss on the frames repeated by hand."""
    from abaw_ray.losses import ccc_loss, focal_loss, smoothed_cross_entropy, soft_macro_f1_loss

    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(1, 6, 2, generator=g), torch.randn(1, 6, 2, generator=g)
    weight = torch.tensor([[2.0, 1.0, 0.0, 1.0, 3.0, 1.0]])
    repeat = torch.tensor([0, 0, 1, 3, 4, 4, 4, 5])
    got = ccc_loss(pred, target, frame_weight=weight)
    want = ccc_loss(pred[:, repeat], target[:, repeat])
    assert float(got) == pytest.approx(float(want), abs=1e-6)
    assert float(got) != pytest.approx(float(ccc_loss(pred, target)), abs=1e-3)

    logits = torch.randn(1, 6, 8, generator=g)
    classes = torch.tensor([[0, 3, 3, 1, 7, 0]])
    cw = torch.linspace(0.5, 2.0, 8)
    for loss in (
        lambda lg, t, **k: smoothed_cross_entropy(lg, t, smoothing=0.1, class_weights=cw, **k),
        lambda lg, t, **k: focal_loss(lg, t, gamma=2.0, **k),
        lambda lg, t, **k: soft_macro_f1_loss(lg, t, **k),
    ):
        got = loss(logits, classes, frame_weight=weight)
        want = loss(logits[:, repeat], classes[:, repeat])
        assert float(got) == pytest.approx(float(want), abs=1e-6)
