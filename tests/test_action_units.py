"""The action-unit track: its label files, official score, thresholds, losses, heads, ensemble
recipe, submission, pseudo-labels and the synthetic corpus's units, each checked against values
computed by hand or by brute force."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from abaw_ray.data.labels import read_au_labels
from abaw_ray.ensemble import Member, build_ensemble
from abaw_ray.errors import InputFormatError
from abaw_ray.losses import au_bce_loss, au_pos_weights, soft_au_f1_loss
from abaw_ray.metrics import au_f1, best_thresholds, calibrate_thresholds, score_split
from abaw_ray.models import create_model
from abaw_ray.pseudo import make_pseudo_labels
from abaw_ray.submission import decisions, read_submission, template_for_videos, write_submission
from abaw_ray.tasks import AU_NAMES, NUM_AUS
from abaw_ray.train.loop import TrialConfig

HEADER = ",".join(AU_NAMES)


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_au_label_files_are_read_with_unannotated_lines_masked(tmp_path):
    f = _write(
        tmp_path / "v.txt",
        [HEADER, "1,0,0,0,0,0,1,0,0,0,1,0", ",".join(["-1"] * 12), "0,0,1,1,0,0,0,0,0,0,0,1"],
    )
    lab = read_au_labels(f)
    assert lab.values.dtype == np.uint8 and lab.values.shape == (3, NUM_AUS)
    np.testing.assert_array_equal(lab.valid, [True, False, True])
    assert lab.values[0].tolist() == [1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0]
    assert lab.values[1].sum() == 0 and lab.values[2, 2] == 1 and lab.values[2, 11] == 1


@pytest.mark.parametrize(
    "bad, why",
    [
        ("1,0,-1,0,0,0,1,0,0,0,1,0", "whole line -1"),
        ("1,0,0,0,0,0,1,0,0,0,1", "expected 12 values"),
        ("1,0,2,0,0,0,1,0,0,0,1,0", "0 or 1"),
        ("1,0,x,0,0,0,1,0,0,0,1,0", "integers"),
    ],
)
def test_a_bad_au_line_is_named_by_file_and_line(tmp_path, bad, why):
    f = _write(tmp_path / "v.txt", [HEADER, "0,0,0,0,0,0,0,0,0,0,0,0", bad])
    with pytest.raises(InputFormatError, match=why) as err:
        read_au_labels(f)
    assert f"{f}:3" in str(err.value)


def test_the_official_au_score_is_the_mean_of_each_units_f1_over_all_frames():
    # Two videos scored together: unit 0 has tp 2, fp 1, fn 1 -> F1 2*2/(2*2+1+1) = 2/3;
    # unit 1 never present and never predicted -> 0 (sklearn's zero_division=0); the rest
    # perfect on their positives.
    labels = {"a": np.zeros((3, 12), np.uint8), "b": np.zeros((2, 12), np.uint8)}
    preds = {"a": np.zeros((3, 12)), "b": np.zeros((2, 12))}
    labels["a"][:, 2:] = 1
    preds["a"][:, 2:] = 0.9
    labels["b"][:, 2:] = 1
    preds["b"][:, 2:] = 0.5  # AU_DECISION itself is present
    labels["a"][[0, 1], 0], labels["b"][0, 0] = 1, 1
    preds["a"][[0, 2], 0], preds["b"][0, 0] = 0.7, 0.6
    valid = {"a": np.ones(3, bool), "b": np.ones(2, bool)}
    s = score_split("au", preds, ["a", "b"], labels, valid)
    expected = (2 / 3 + 0 + 10 * 1.0) / 12
    assert s["f1"] == pytest.approx(expected)
    assert s["f1_AU1"] == pytest.approx(2 / 3) and s["f1_AU2"] == 0.0
    # An unannotated frame does not count: masking frame a1 (a false negative) leaves
    # tp 2, fp 1, fn 0 -> 4/5.
    valid["a"][1] = False
    assert score_split("au", preds, ["a", "b"], labels, valid)["f1_AU1"] == pytest.approx(0.8)


def test_best_thresholds_match_a_brute_force_search_and_calibration_moves_them_to_half():
    rng = np.random.default_rng(0)
    t = rng.random((500, 3)) < [0.1, 0.4, 0.7]
    p = np.clip(t * rng.uniform(0.2, 0.9, (500, 3)) + rng.uniform(0, 0.5, (500, 3)), 0, 1)
    grid = np.arange(1, 100) / 100
    for tolerance in (0.0, 0.01, 0.05):
        th, f1 = best_thresholds(p, t, tolerance)
        for u in range(3):
            brute = np.array([au_f1((p[:, u] >= g)[:, None], t[:, u : u + 1])[0] for g in grid])
            near = grid[brute >= brute.max() - tolerance - 1e-12]
            assert th[u] == pytest.approx(near[np.argmin(np.abs(near - 0.5))])
            assert f1[u] == pytest.approx(brute[np.argmin(np.abs(grid - th[u]))])
            assert f1[u] >= brute.max() - tolerance - 1e-12
    moved = calibrate_thresholds(p, th)
    np.testing.assert_array_equal(moved >= 0.5, p >= th)
    assert np.all(np.diff(calibrate_thresholds(np.linspace(0, 1, 11)[:, None], [0.3]), axis=0) > 0)


def test_bce_with_positive_weights_is_torchs_and_the_weights_count_negatives_over_positives():
    torch.manual_seed(0)
    logits, target = torch.randn(6, 12), (torch.rand(6, 12) < 0.3).float()
    mask = torch.tensor([1, 1, 0, 1, 1, 1], dtype=torch.bool)
    w = torch.linspace(0.5, 3.0, 12)
    ours = au_bce_loss(logits, target, mask, w)
    ref = torch.nn.functional.binary_cross_entropy_with_logits(
        logits[mask], target[mask], pos_weight=w
    )
    assert float(ours) == pytest.approx(float(ref), rel=1e-5)
    frames = np.zeros((10, 12))
    frames[:2, 0] = 1  # 2 positives, 8 negatives: (8 + 1) / (2 + 1) = 3
    assert float(au_pos_weights(frames)[0]) == pytest.approx(3.0)
    # A perfect, confident prediction has a soft F1 near 1: its loss near 0.
    sure = (target * 2 - 1) * 20
    assert (
        float(soft_au_f1_loss(sure, target, mask))
        < 1e-3
        < float(soft_au_f1_loss(-sure, target, mask))
    )


def test_every_model_has_a_12_logit_au_head_and_a_multi_task_one_has_the_others_heads():
    x = [torch.randn(2, 16, 8)]
    for name in ("attention", "tcn", "transformer", "frame_mlp"):
        out = create_model(name, [8], "au")(x)
        assert out["pred"].shape == (2, 16, NUM_AUS), name
    out = create_model("tcn", [8], "au", other_tasks=("va", "expr"))(x)
    assert out["pred"].shape == (2, 16, 12)
    assert out["other_tasks"]["va"].shape == (2, 16, 2)
    assert out["other_tasks"]["expr"].shape == (2, 16, 8)
    assert float(out["other_tasks"]["va"].detach().abs().max()) <= 1.0  # tanh, as a VA model's


def test_settings_a_task_lacks_fail_when_read_with_the_valid_values():
    with pytest.raises(ValueError, match="for au trials only"):
        TrialConfig.from_dict({"task": "expr", "loss": "asymmetric"})
    with pytest.raises(ValueError, match="for expr trials only"):
        TrialConfig.from_dict({"task": "au", "balanced_sampling": True})
    with pytest.raises(ValueError, match="va and expr"):
        TrialConfig.from_dict({"task": "au", "aux_tasks": "exrp"})
    assert TrialConfig.from_dict({"task": "au", "aux_tasks": "va+expr"}).other_tasks == (
        "va",
        "expr",
    )


def test_a_space_with_a_setting_its_task_lacks_fails_when_it_loads(tmp_path):
    from abaw_ray.tune.space import SearchSpaceError, load_search_space

    space = tmp_path / "s.yaml"
    space.write_text(
        "task: va\nfeatures: {visual: [face_hog]}\nparameters:\n"
        "  aux_tasks: {choice: ['', au, va]}\n"
    )
    with pytest.raises(SearchSpaceError, match="other tasks are expr and au"):
        load_search_space(space)
    space.write_text("task: ua\nfeatures: {visual: [face_hog]}\n")
    with pytest.raises(SearchSpaceError, match="va, expr, au"):
        load_search_space(space)


def _members(rng: np.random.Generator, labels: dict, noise: float) -> list[Member]:
    """Two members whose probabilities lean towards the labels, each unit's own way."""
    out = []
    for k in range(2):
        val = {
            v: np.clip(0.35 * y + rng.uniform(0, 0.6 + noise, y.shape), 0, 1)
            for v, y in labels.items()
        }
        out.append(Member(f"m{k}", val, {"t": rng.random((20, 12))}))
    return out


def test_au_thresholds_are_chosen_on_the_selection_videos_only_and_submitted():
    """The held-out videos choose nothing: inverting their labels leaves the recipe, its
    thresholds and the submitted test predictions as they were; the held-out score moves."""
    rng = np.random.default_rng(1)
    labels = {v: (rng.random((300, 12)) < 0.3).astype(np.uint8) for v in ("s1", "s2", "h1")}
    valid = {v: np.ones(300, bool) for v in labels}
    members = _members(rng, labels, 0.0)
    ens = build_ensemble("au", members, ["s1", "s2"], ["h1"], ["t"], labels, valid)
    flipped = {**labels, "h1": 1 - labels["h1"]}
    other = build_ensemble("au", members, ["s1", "s2"], ["h1"], ["t"], flipped, valid)
    assert len(ens.submitted.recipe.thresholds) == 12
    assert ens.submitted.recipe == other.submitted.recipe == ens.selection.recipe
    np.testing.assert_array_equal(ens.test["t"], other.test["t"])
    assert ens.holdout_videos == ("h1",) and not ens.refit
    assert ens.holdout["ensemble"]["f1"] != other.holdout["ensemble"]["f1"]
    # The thresholds are those best_thresholds finds on the selection's combined predictions,
    # mapped to 0.5: the selection score is the tuned F1 there.
    sel = {v: ens.validation[v] for v in ("s1", "s2")}
    assert score_split("au", sel, ["s1", "s2"], labels, valid)["f1"] == pytest.approx(
        ens.selection.scores["f1"]
    )


def test_an_au_submission_round_trips_and_a_bad_line_is_named(tmp_path):
    template = template_for_videos("au", {"v": 4})
    probs = np.array([[0.2] * 12, [0.7] * 12, [0.5] * 12, [0.49] * 12])
    path = write_submission(tmp_path / "AU.txt", template, {"v": decisions("au", probs)})
    lines = path.read_text().splitlines()
    assert lines[0] == "image_location," + HEADER
    assert lines[1].endswith(",0,0,0,0,0,0,0,0,0,0,0,0") and lines[3].endswith(",1" * 12)
    frames, values = read_submission(path, template)["v"]
    assert frames.tolist() == [1, 2, 3, 4] and values[:, 0].tolist() == [0, 1, 1, 0]
    lines[2] = lines[2].rsplit(",", 1)[0] + ",2"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputFormatError, match="not 0 or 1") as err:
        read_submission(path, template)
    assert f"{path}:3" in str(err.value)


def test_au_pseudo_labels_are_the_decisions_with_their_distance_from_the_threshold():
    pred = {"t": np.array([[0.9] * 12, [0.5] * 12, [0.1] * 6 + [0.6] * 6])}
    known = {"t": np.array([False, False, True])}
    pseudo = make_pseudo_labels("au", pred, [pred], known)
    assert pseudo.values["t"].dtype == np.uint8
    assert pseudo.values["t"][0].sum() == 12 and pseudo.values["t"][1].sum() == 12
    np.testing.assert_allclose(pseudo.confidence["t"], [0.8, 0.0, 0.0], atol=1e-6)


def test_the_synthetic_units_follow_the_expressions_and_mark_the_face_where_they_act(
    synthetic, corpus_root
):
    from abaw_ray.data import load_corpus
    from abaw_ray.data.synthetic import _identity, draw_face

    corpus = load_corpus(corpus_root)
    au, expr = corpus.labels["au"], corpus.labels["expr"]
    both = [v for v in au if v in expr]
    units = np.concatenate([au[v].values for v in both])
    classes = np.concatenate([expr[v].values[: au[v].num_frames] for v in both])
    ok = np.concatenate([au[v].valid & expr[v].valid[: au[v].num_frames] for v in both])
    units, classes = units[ok], classes[ok]
    happy, sad = classes == 4, classes == 5
    au12, au15 = AU_NAMES.index("AU12"), AU_NAMES.index("AU15")
    assert happy.sum() > 30 and sad.sum() > 30
    assert units[happy, au12].mean() > units[~happy, au12].mean() + 0.3
    assert units[sad, au15].mean() > units[~sad, au15].mean() + 0.3
    # AU25 (lips part) is common, AU24 rare.
    rates = units.mean(0)
    assert rates[AU_NAMES.index("AU25")] > 0.4 > 0.15 > rates[AU_NAMES.index("AU24")]
    # One unit's mark changes the face near where that unit acts and nowhere else.
    identity = _identity(np.random.default_rng(0))
    plain = draw_face(np.zeros(7), identity, np.random.default_rng(1), None, np.zeros(12))
    for name, rows in (("AU1", slice(0, 40)), ("AU26", slice(80, 112))):
        shown = np.zeros(12)
        shown[AU_NAMES.index(name)] = 0.6
        face = draw_face(np.zeros(7), identity, np.random.default_rng(1), None, shown)
        changed = np.abs(face.astype(int) - plain).sum(-1) > 30
        assert changed.any() and changed[rows].sum() == changed.sum(), name


def test_a_corpus_without_one_tasks_labels_keeps_its_timelines(corpus_root):
    """A corpus built with VA and EXPR labels only (an older annotation set, or by hand) has
    the same frame timelines: nothing asks for the AU labels it lacks."""
    from dataclasses import replace

    from abaw_ray.data import load_corpus

    corpus = load_corpus(corpus_root)
    without = replace(corpus, labels={t: corpus.labels[t] for t in ("va", "expr")})
    for v in corpus.labels["va"]:
        assert without.num_frames(v) == corpus.labels["va"][v].num_frames
