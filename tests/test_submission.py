"""Submission files: template order, nearest-face filling, validation, and the round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from abaw_ray.data import load_corpus
from abaw_ray.data.corpus import read_template
from abaw_ray.data.timeline import nearest_available
from abaw_ray.errors import InputFormatError
from abaw_ray.submission import (
    format_submission,
    read_submission,
    score_submission,
    template_for_videos,
    validate_submission,
    write_submission,
)
from abaw_ray.submission import (
    main as submission_main,
)


@pytest.fixture(scope="module")
def corpus(corpus_root):
    return load_corpus(corpus_root)


def test_nearest_available_prefers_earlier_on_tie():
    available = np.array([True, False, False, False, True, False])
    got = nearest_available(np.arange(6), available)
    assert got.tolist() == [0, 0, 0, 4, 4, 4]  # index 2 lies 2 from both: the earlier wins
    assert nearest_available(np.array([0, 5]), np.array([0, 0, 1, 0, 0, 0], bool)).tolist() == [
        2,
        2,
    ]


def test_va_submission_follows_template_and_fills_faceless_frames(corpus, tmp_path):
    template = corpus.templates["va"]
    preds, masks = {}, {}
    for video in template.videos:
        n = corpus.num_frames(video)
        preds[video] = np.stack([np.linspace(-2, 2, n), np.linspace(1, -1, n)], axis=1)
        masks[video] = corpus.videos[video].face_mask(n)
    out = write_submission(tmp_path / "VA.txt", template, preds, masks)
    lines = out.read_text().splitlines()
    assert lines[0] == "image_location,valence,arousal"
    assert [ln.split(",")[0] for ln in lines[1:]] == list(template.image_locations)
    values = np.array([[float(x) for x in ln.split(",")[1:]] for ln in lines[1:]])
    assert values.min() >= -1 and values.max() <= 1  # clipped
    video = template.videos[0]
    mask = masks[video]
    missing = np.flatnonzero(~mask)
    assert missing.size, "the corpus should have frames without a face"
    k = missing[0]
    src = nearest_available(np.array([k]), mask)[0]
    row = lines[1 + int(np.flatnonzero(np.array(template.video_of_line) == video)[k])]
    expected = np.clip(preds[video][src], -1, 1)
    assert row == f"{video}/{k + 1:05d}.jpg,{expected[0]:.6f},{expected[1]:.6f}"


def test_expr_submission_lines(corpus, tmp_path):
    template = corpus.templates["expr"]
    preds = {v: np.arange(corpus.num_frames(v)) % 8 for v in template.videos}
    text = format_submission(template, preds)
    first = text.splitlines()[1]
    assert first == f"{template.videos[0]}/00001.jpg,0"
    path = tmp_path / "EXPR.txt"
    path.write_text(text)
    assert validate_submission(path, template) == len(template)


@pytest.mark.parametrize("task", ["va", "expr"])
def test_round_trip_on_validation_labels_scores_perfectly(corpus, tmp_path, task):
    videos = corpus.split_videos(task, "val")
    template = template_for_videos(task, {v: corpus.num_frames(v) for v in videos})
    preds = {}
    for v in videos:
        lab = corpus.labels_on_timeline(task, v)
        preds[v] = (
            np.where(lab.valid[:, None], lab.values, 0.0)
            if task == "va"
            else np.where(lab.valid, lab.values, 0)
        )
    path = write_submission(tmp_path / f"{task}.txt", template, preds)
    scores = score_submission(path, template, corpus)
    if task == "va":
        assert scores["valence"] == pytest.approx(1.0)
        assert scores["arousal"] == pytest.approx(1.0, abs=1e-12)
    else:
        assert scores["macro_f1"] == 1.0


def _valid_file(corpus, tmp_path) -> tuple[Path, list[str]]:
    template = corpus.templates["va"]
    preds = {v: np.zeros((corpus.num_frames(v), 2)) for v in template.videos}
    path = write_submission(tmp_path / "VA.txt", template, preds)
    return path, path.read_text().splitlines()


@pytest.mark.parametrize(
    "edit, line, message",
    [
        (lambda ls: ls[:5] + ls[6:], 6, "expected"),  # a missing line
        (lambda ls: ls + [ls[-1]], None, "extra line"),  # an extra line at the end
        (lambda ls: ls[:3] + [ls[4], ls[3]] + ls[5:], 4, "reordered"),
        (lambda ls: ls[:2] + [ls[2].rsplit(",", 1)[0] + ",x"] + ls[3:], 3, "non-numeric"),
        (lambda ls: ls[:2] + [ls[2].rsplit(",", 1)[0] + ",nan"] + ls[3:], 3, "not finite"),
        (lambda ls: ls[:2] + [ls[2].rsplit(",", 1)[0] + ",1.5"] + ls[3:], 3, "outside"),
        (lambda ls: ["image_location,arousal,valence"] + ls[1:], 1, "header"),
        (lambda ls: ls[:-3], None, "missing line"),
    ],
)
def test_validator_names_the_first_bad_line(corpus, tmp_path, edit, line, message):
    path, lines = _valid_file(corpus, tmp_path)
    path.write_text("\n".join(edit(lines)) + "\n")
    with pytest.raises(InputFormatError, match=message) as err:
        validate_submission(path, corpus.templates["va"])
    if line is not None:
        assert err.value.line == line


def test_validate_cli(corpus, tmp_path, capsys):
    path, lines = _valid_file(corpus, tmp_path)
    tmpl = str(corpus.templates["va"].path)
    root = str(corpus.root)
    assert submission_main(["validate", "--task", "va", "--template", tmpl, str(path)]) == 0
    # The template the corpus holds, found from its root: what README shows a user.
    assert submission_main(["validate", "--task", "va", "--data", root, str(path)]) == 0
    assert tmpl in capsys.readouterr().out
    path.write_text("\n".join(lines[:3] + [lines[3].split(",")[0] + ",2,0"] + lines[4:]) + "\n")
    assert submission_main(["validate", "--task", "va", "--template", tmpl, str(path)]) == 1
    assert f"{path.name}:4" in capsys.readouterr().err
    assert submission_main(["validate", "--task", "va", "--data", root, str(path)]) == 1
    assert f"{path.name}:4" in capsys.readouterr().err


def test_read_submission_returns_values_in_template_order(corpus, tmp_path):
    template = corpus.templates["expr"]
    preds = {v: np.full(corpus.num_frames(v), 4) for v in template.videos}
    path = write_submission(tmp_path / "E.txt", template, preds)
    parsed = read_submission(path, template)
    assert list(parsed) == list(template.videos)
    frames, values = parsed[template.videos[0]]
    assert frames[0] == 1 and (values == 4).all()
    tmpl = read_template(template.path)
    assert tmpl.task == "expr" and len(tmpl) == len(template)
