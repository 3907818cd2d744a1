import numpy as np
import pytest
from sklearn.metrics import f1_score

from abaw_ray.metrics import ccc, f1_per_class, macro_f1, va_scores


def test_ccc_matches_hand_computation():
    # mean 2.5 / 5, population var 1.25 / 5, cov 2.5 -> 2*2.5 / (1.25 + 5 + 2.5^2) = 0.4
    assert ccc([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(0.4, abs=1e-12)
    assert ccc([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0)
    assert ccc([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_ccc_constant_prediction_is_zero_and_identical_constants_agree():
    assert ccc([0.3, 0.3, 0.3], [0.1, 0.5, 0.9]) == 0.0
    assert ccc([0.2, 0.2], [0.2, 0.2]) == 1.0
    assert ccc([0.2, 0.2], [0.4, 0.4]) == 0.0


def test_ccc_is_global_not_a_mean_of_windows():
    rng = np.random.default_rng(0)
    target = np.concatenate([rng.normal(-0.5, 0.1, 50), rng.normal(0.5, 0.1, 50)])
    pred = np.concatenate([np.full(50, -0.5), np.full(50, 0.5)])
    # Per window the prediction is constant (CCC 0); globally it tracks the level shift.
    per_window = np.mean([ccc(pred[:50], target[:50]), ccc(pred[50:], target[50:])])
    assert per_window == pytest.approx(0.0)
    assert ccc(pred, target) > 0.9


def test_va_scores_use_only_valid_frames():
    target = np.array([[0.1, 0.2], [0.4, -0.3], [-5, -5], [0.9, 0.5]])
    pred = np.array([[0.1, 0.2], [0.4, -0.3], [0.7, 0.7], [0.9, 0.5]])
    mask = (target != -5).all(axis=1)
    s = va_scores(pred, target, mask)
    assert s == {
        "valence": pytest.approx(1.0),
        "arousal": pytest.approx(1.0),
        "mean": pytest.approx(1.0),
    }
    unmasked = va_scores(pred, target)
    assert unmasked["mean"] < 0.5


def test_all_invalid_mask_is_a_clear_error():
    with pytest.raises(ValueError, match="no valid frame"):
        va_scores(np.zeros((3, 2)), np.zeros((3, 2)), np.zeros(3, bool))
    with pytest.raises(ValueError, match="no valid frame"):
        macro_f1(np.zeros(3), np.zeros(3), mask=np.zeros(3, bool))


@pytest.mark.parametrize("seed", range(5))
def test_macro_f1_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, 8, 500)
    pred = np.where(rng.random(500) < 0.6, target, rng.integers(0, 8, 500))
    assert macro_f1(pred, target) == pytest.approx(f1_score(target, pred, average="macro"))


def test_macro_f1_with_absent_class_and_mask_matches_sklearn():
    target = np.array([0, 0, 1, 1, 2, 2, 5, 7])
    pred = np.array([0, 1, 1, 1, 2, 3, 5, 6])
    mask = np.array([1, 1, 1, 1, 1, 1, 1, 0], bool)
    expected = f1_score(target[mask], pred[mask], average="macro")
    assert macro_f1(pred, target, mask=mask) == pytest.approx(expected)
    f1 = f1_per_class(pred, target, mask=mask)
    assert np.isnan(f1[4]) and f1[3] == 0.0 and f1[5] == 1.0


def test_macro_f1_perfect():
    t = np.arange(8).repeat(3)
    assert macro_f1(t, t) == 1.0


def test_confusion_matrix_counts_label_rows_and_prediction_columns():
    from abaw_ray.metrics import confusion_matrix

    target = np.array([0, 0, 1, 2, 2, 2])
    pred = np.array([0, 1, 1, 2, 0, 2])
    mask = np.array([True, True, True, True, True, False])
    cm = confusion_matrix(pred, target, 3, mask)
    # Label 0: one right, one taken for 1; label 2: one right, one taken for 0; the last
    # frame is masked out.
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 1, 0], [1, 0, 1]])
