"""``--folds 3 --make-pseudo-labels`` end to end: the search, then three fold models of the best
trial's settings; per-fold and out-of-fold scores that MLflow and the fold checkpoints agree
with, a submission made from the fold ensemble, and pseudo-labels of exactly the unlabelled
frames."""

from __future__ import annotations

import json
import re
import sqlite3

import numpy as np
import pytest

from abaw_ray.affwild2 import raw_video
from abaw_ray.data import load_corpus
from abaw_ray.metrics import score_split
from abaw_ray.pseudo import PseudoLabels
from abaw_ray.smoothing import Smoothing
from abaw_ray.submission import validate_submission
from abaw_ray.train.loop import load_predictions
from tests.raytools import kill_session
from tests.test_search_ray import SPACE, _job, _search_dir

pytestmark = pytest.mark.slow

FOLD_LINE = re.compile(
    r"^  fold (\d): ccc (-?[\d.]+) \(valence (-?[\d.]+), arousal (-?[\d.]+)\), best epoch "
    r"(\d+); (\d+) videos?, (\d+) annotated frames: (.+)$",
    re.M,
)
OOF_LINE = re.compile(r"^  out-of-fold: ccc (-?[\d.]+) .* over all (\d+) videos at once", re.M)


def _parent_metrics(output, name: str) -> dict[str, float]:
    with sqlite3.connect(output / "mlflow.db") as db:
        rows = db.execute(
            "select m.key, m.value from metrics m join runs r on r.run_uuid = m.run_uuid "
            "where r.name = ?",
            (name,),
        ).fetchall()
    return dict(rows)


def _submission(path) -> dict[str, list[tuple[float, float]]]:
    per: dict[str, list[tuple[float, float]]] = {}
    for line in path.read_text().splitlines()[1:]:
        loc, v, a = line.split(",")
        per.setdefault(loc.split("/")[0], []).append((float(v), float(a)))
    return per


def test_three_folds_report_scores_and_submit_the_fold_ensemble(corpus_root, tmp_path):
    output = tmp_path / "out"
    args = ["--data", str(corpus_root), "--output", str(output), "--space", str(SPACE)]
    proc = _job(
        [*args, "--num-samples", "2", "--num-cpus", "2", "--folds", "3", "--make-pseudo-labels"]
    )
    try:
        out, _ = proc.communicate(timeout=600)
    finally:
        kill_session(proc.pid)
    assert proc.returncode == 0, out[-3000:]
    search = _search_dir(output)
    corpus = load_corpus(corpus_root)
    pooled = {*corpus.split_videos("va", "train"), *corpus.split_videos("va", "val")}

    # Three per-fold lines, then the out-of-fold line; the folds partition every training and
    # validation video, whole, the _left/_right pair of one raw video in one fold.
    folds = [m.groups() for m in FOLD_LINE.finditer(out)]
    assert [f[0] for f in folds] == ["1", "2", "3"], out[-3000:]
    fold_videos = [tuple(f[7].split(", ")) for f in folds]
    every = [v for videos in fold_videos for v in videos]
    assert sorted(every) == sorted(pooled) and len(every) == len(set(every))
    for videos in fold_videos:
        raw = {raw_video(v) for v in videos}
        assert not any(raw_video(v) in raw for v in pooled - set(videos))
    oof = OOF_LINE.search(out)
    assert oof and int(oof.group(2)) == len(pooled) and "mildly optimistic" in out

    # MLflow's parent run holds the same scores.
    metrics = _parent_metrics(output, search.name)
    for i, f in enumerate(folds, 1):
        assert round(metrics[f"fold{i}_ccc"], 4) == float(f[1])
        assert round(metrics[f"fold{i}_ccc_valence"], 4) == float(f[2])
        assert metrics[f"fold{i}_best_epoch"] == int(f[4])
    assert round(metrics["folds_oof_ccc"], 4) == float(oof.group(1))
    mean = np.mean([metrics[f"fold{i}_ccc"] for i in (1, 2, 3)])
    assert metrics["folds_mean_ccc"] == pytest.approx(mean)

    # Each fold model's best checkpoint predicted its own fold's videos; scored by hand, alone
    # and all together (the official global CCC), they give the printed scores.
    trainers = sorted((search / "folds").iterdir())
    assert [t.name.split("-")[0] for t in trainers] == ["fold1", "fold2", "fold3"]
    labels = {v: corpus.labels_on_timeline("va", v) for v in pooled}
    values = {v: lab.values for v, lab in labels.items()}
    valid = {v: lab.valid for v, lab in labels.items()}
    val, test = {}, []
    for trainer, videos, f in zip(trainers, fold_videos, folds):
        (checkpoint,) = [c for c in trainer.glob("checkpoint_*") if c.is_dir()]
        preds = load_predictions(checkpoint)
        assert sorted(preds["selection"]) == sorted(videos) and not preds["holdout"]
        own = score_split("va", preds["selection"], videos, values, valid)
        assert round(own["ccc"], 4) == float(f[1])
        assert int(f[6]) == sum(int(valid[v].sum()) for v in videos)
        val.update(preds["selection"])
        test.append(preds["test"])
    assert round(score_split("va", val, sorted(pooled), values, valid)["ccc"], 4) == float(
        oof.group(1)
    )

    # The submission validates and holds the folds' mean test predictions, smoothed by the
    # filter chosen on the out-of-fold predictions (not the trial ensemble's).
    template = corpus.templates["va"]
    submission = output / search.name / "VA_submission.txt"
    assert validate_submission(submission, template) == len(template)
    recipe = json.loads((output / search.name / "folds.json").read_text())
    smoothing = {t: Smoothing(**s) for t, s in recipe["smoothing"].items()}
    assert f"smoothed (valence {smoothing['valence']}, arousal {smoothing['arousal']})" in out
    written = _submission(submission)
    for v in template.videos:
        mean = np.mean([np.float64(t[v]) for t in test], axis=0)
        expected = np.stack(
            [smoothing[t].apply("va", mean)[:, i] for i, t in enumerate(("valence", "arousal"))],
            1,
        )
        frames = template.frames(v) - 1
        face = corpus.videos[v].face_mask(corpus.num_frames(v))
        mine = np.array(written[v])[face[frames]]  # frames with a face: their own prediction
        np.testing.assert_allclose(mine, np.clip(expected[frames][face[frames]], -1, 1), atol=2e-6)
    # The summary, the recipe file and MLflow say the fold ensemble was submitted, announced
    # before the file, with the out-of-fold score as its estimate.
    lines = out.strip().splitlines()
    assert lines[-1].startswith("cost: 2 trials") and lines[-2].startswith("submission: ")
    assert lines[-3].startswith("submitted: the fold ensemble") and oof.group(1) in lines[-3]
    assert "not submitted: the fold ensemble below is" in out
    assert not re.search(r"^submitted: the trial ensemble", out, re.M)
    submitted = json.loads((output / search.name / "ensemble_recipe.json").read_text())
    assert submitted["submitted"]["kind"] == "fold ensemble"
    assert submitted["submitted"]["estimate"]["out_of_fold"] == pytest.approx(
        metrics["folds_oof_ccc"]
    )
    assert metrics["submitted_estimate_ccc"] == metrics["folds_oof_ccc"]
    with sqlite3.connect(output / "mlflow.db") as db:
        (kind,) = db.execute(
            "select p.value from params p join runs r on r.run_uuid = p.run_uuid "
            "where r.name = 'ensemble' and p.key = 'submitted'"
        ).fetchone()
    assert kind == "fold ensemble"

    # Pseudo-labels: every frame of the test videos and exactly the unlabelled frames of the
    # training videos that have some, none of a validation video; the printed count and
    # MLflow's agree with the file.
    pseudo = PseudoLabels.load(output / search.name)
    train = corpus.split_videos("va", "train")
    gaps = {v for v in train if not corpus.labels_on_timeline("va", v).valid.all()}
    assert gaps and set(pseudo.values) == gaps | set(corpus.split_videos("va", "test"))
    for v in gaps:
        real = corpus.labels_on_timeline("va", v).valid
        assert not pseudo.confidence[v][real].any()
    for v, c in pseudo.confidence.items():
        assert c.min() >= 0 and c.max() <= 1 and np.abs(pseudo.values[v]).max() <= 1
    shown = re.search(r"^pseudo-labels: (\d+) unlabelled frames", out, re.M)
    assert shown and int(shown.group(1)) == pseudo.frames == metrics["pseudo_frames"]
