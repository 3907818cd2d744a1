"""The data layer against what the generator wrote, and against malformed copies of it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from abaw_ray.affwild2 import (
    ANNOTATIONS,
    EXPR_CHALLENGE,
    FACE_DIR,
    PAIR_SIDES,
    RAW_VIDEO_DIRS,
    TEMPLATES,
    TEST_LISTS,
    TRAIN_DIR,
    VA_CHALLENGE,
    VAL_DIR,
    pair_names,
)
from abaw_ray.data import load_corpus
from abaw_ray.data.__main__ import main as data_main
from abaw_ray.data.check import summarize
from abaw_ray.data.labels import read_expr_labels, read_va_labels
from abaw_ray.errors import InputFormatError


@pytest.fixture(scope="module")
def corpus(corpus_root):
    return load_corpus(corpus_root)


def test_splits_and_labels_match_the_generator(corpus, synthetic):
    truth = synthetic.by_name()
    for task, lines_attr in (("va", "va_label_lines"), ("expr", "expr_label_lines")):
        for split in ("train", "val"):
            expected = sorted(
                v.name
                for v in synthetic.videos
                if v.split == split and getattr(v, lines_attr) is not None
            )
            assert sorted(corpus.split_videos(task, split)) == expected
            for name in expected:
                assert corpus.labels[task][name].num_frames == getattr(truth[name], lines_attr)
    for v in synthetic.videos:
        video = corpus.videos[v.name]
        assert video.fps == pytest.approx(v.fps, rel=1e-6)
        assert video.media.num_frames == v.num_frames
        assert video.has_audio
        assert str(video.audio_source).endswith(v.raw_file)


def test_left_right_share_one_audio_track(corpus):
    lefts = [n for n in corpus.videos if n.endswith(f"_{PAIR_SIDES[0]}")]
    assert lefts
    for left in lefts:
        left, right = pair_names(left[: -len(f"_{PAIR_SIDES[0]}")])
        assert corpus.videos[left].audio_source == corpus.videos[right].audio_source
        assert corpus.videos[left].face_dir != corpus.videos[right].face_dir


def test_check_summary_counts_what_the_generator_wrote(corpus, synthetic):
    summary = summarize(corpus)
    for task, lines_attr, invalid_attr in (
        ("va", "va_label_lines", "va_invalid"),
        ("expr", "expr_label_lines", "expr_invalid"),
    ):
        for split in ("train", "val"):
            members = [
                v
                for v in synthetic.videos
                if v.split == split and getattr(v, lines_attr) is not None
            ]
            row = summary["splits"][task][split]
            assert row["videos"] == len(members)
            assert row["label_lines"] == sum(getattr(v, lines_attr) for v in members)
            assert row["invalid_frames"] == sum(getattr(v, invalid_attr) for v in members)
            assert row["valid_frames"] == row["label_lines"] - row["invalid_frames"]
            assert row["missing_face_frames"] == sum(v.missing_faces for v in members)
    test = [v for v in synthetic.videos if v.split == "test"]
    va_tmpl = summary["templates"]["va"]
    assert va_tmpl["lines"] == sum(
        v.num_frames for v in test if v.name in corpus.templates["va"].videos
    )
    mismatched = {
        v.name: v.va_label_lines or v.expr_label_lines
        for v in synthetic.videos
        if v.split != "test" and (v.va_label_lines or v.expr_label_lines) != v.num_frames
    }
    got = {m["video"]: m["timeline_frames"] for m in summary["length_mismatches"]}
    assert got == mismatched and len(got) == 2
    actions = sorted(m["action"] for m in summary["length_mismatches"])
    assert actions == ["cut 1", "padded 1"]
    assert summary["videos_without_audio"] == {}


def test_check_cli_json(corpus_root, capsys):
    assert data_main(["check", "--data", str(corpus_root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["videos"] == 8
    assert len(out["frame_rates"]) >= 3


def test_timeline_trusts_label_length_and_pads_as_invalid(corpus, synthetic):
    longer = next(v for v in synthetic.videos if (v.va_label_lines or 0) > v.num_frames)
    assert corpus.num_frames(longer.name) == longer.va_label_lines
    lab = corpus.labels_on_timeline("va", longer.name)
    assert lab.num_frames == longer.va_label_lines
    mask = corpus.videos[longer.name].face_mask(corpus.num_frames(longer.name))
    assert not mask[-1]  # the padded frame has no face image
    times = corpus.frame_times(longer.name)
    assert times[1] == pytest.approx(1 / longer.fps)


def test_va_minus_five_is_invalid(tmp_path):
    f = tmp_path / "v.txt"
    f.write_text("valence,arousal\n0.5,-0.2\n-5,-5\n1,-1\n")
    lab = read_va_labels(f)
    assert lab.valid.tolist() == [True, False, True]
    np.testing.assert_allclose(lab.values[0], [0.5, -0.2])
    g = tmp_path / "e.txt"
    g.write_text("Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other\n7\n-1\n0\n")
    assert read_expr_labels(g).valid.tolist() == [True, False, True]


# --- malformed copies: each one fails with the file and line named -----------------------


def _copy(src: Path, dst: Path) -> Path:
    """A writable copy whose bulky media folders are symlinks to the original."""
    dst.mkdir()
    for item in src.iterdir():
        if item.name.startswith((FACE_DIR, *RAW_VIDEO_DIRS)):
            (dst / item.name).symlink_to(item, target_is_directory=True)
        elif item.is_dir():
            shutil.copytree(item, dst / item.name)
        else:
            shutil.copy2(item, dst / item.name)
    return dst


def _first_label(root: Path, challenge: str, split: str = TRAIN_DIR) -> Path:
    return sorted((root / ANNOTATIONS / challenge / split).glob("*.txt"))[0]


def _set_line(path: Path, lineno: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[lineno - 1] = text
    path.write_text("\n".join(lines) + "\n")


def _break_va_header(root):
    f = _first_label(root, VA_CHALLENGE)
    _set_line(f, 1, "arousal,valence")
    return f, 1


def _break_va_number(root):
    f = _first_label(root, VA_CHALLENGE)
    _set_line(f, 7, "0.1,abc")
    return f, 7


def _break_va_range(root):
    f = _first_label(root, VA_CHALLENGE)
    _set_line(f, 9, "1.5,0.2")
    return f, 9


def _break_expr_range(root):
    f = _first_label(root, EXPR_CHALLENGE)
    _set_line(f, 4, "8")
    return f, 4


def _break_expr_number(root):
    f = _first_label(root, EXPR_CHALLENGE)
    _set_line(f, 5, "happy")
    return f, 5


def _break_listed_twice(root):
    f = _first_label(root, VA_CHALLENGE)
    dup = root / ANNOTATIONS / VA_CHALLENGE / VAL_DIR / f.name
    shutil.copy2(f, dup)
    return dup, None


def _break_test_list_twice(root):
    f = root / TEST_LISTS["va"]
    names = f.read_text().splitlines()
    f.write_text("\n".join(names + [names[0]]) + "\n")
    return f, len(names) + 1


def _break_template_unknown(root):
    f = root / TEMPLATES["va"]
    _set_line(f, 3, "no_such_video/00002.jpg,0,0")
    return f, 3


def _break_template_outside(root):
    f = root / TEMPLATES["va"]
    _set_line(f, 4, "../../etc/00003.jpg,0,0")
    return f, 4


@pytest.mark.parametrize(
    "breaker",
    [
        _break_va_header,
        _break_va_number,
        _break_va_range,
        _break_expr_range,
        _break_expr_number,
        _break_listed_twice,
        _break_test_list_twice,
        _break_template_unknown,
        _break_template_outside,
    ],
)
def test_malformed_input_names_file_and_line(breaker, corpus_root, tmp_path, capsys):
    root = _copy(corpus_root, tmp_path / "copy")
    path, line = breaker(root)
    with pytest.raises(InputFormatError) as err:
        load_corpus(root)
    assert err.value.path.name == path.name
    assert err.value.line == line
    assert data_main(["check", "--data", str(root)]) != 0
    message = capsys.readouterr().err
    where = f"{path.name}:{line}" if line is not None else path.name
    assert where in message


def test_missing_faces_and_off_by_one_labels_are_not_fatal(corpus_root, tmp_path):
    root = _copy(corpus_root, tmp_path / "copy")
    f = _first_label(root, VA_CHALLENGE)
    lines = f.read_text().splitlines()
    f.write_text("\n".join(lines + [lines[-1], lines[-1]]) + "\n")  # two lines longer
    summary = summarize(load_corpus(root))
    assert any(m["video"] == f.stem for m in summary["length_mismatches"])


def _digest(root: Path, *, action_units: bool, pixels: bool) -> str:
    """sha256 of a generated corpus: its text files (with or without the AU ones), which face
    images exist, and with ``pixels`` the decoded first two faces of each video."""
    import hashlib

    import numpy as np
    from PIL import Image

    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.txt")):
        rel = path.relative_to(root).as_posix()
        if action_units or not ("AU_" in rel or "Action_Unit" in rel):
            digest.update(rel.encode() + path.read_bytes())
    for path in sorted(root.glob(f"{FACE_DIR}/*/*.jpg")):
        digest.update(path.relative_to(root).as_posix().encode())
    if pixels:
        for path in sorted(root.glob(f"{FACE_DIR}/*/0000[12].jpg")):  # decoded, not the bytes
            digest.update(np.asarray(Image.open(path)).tobytes())
    return digest.hexdigest()


def test_the_default_generator_is_pinned(tmp_path):
    """The embedded corpus is cached by GENERATOR_VERSION and every figure in the README was
    measured on it: what seed 0 writes (labels, -5 / -1 stretches, which frames have a face,
    the faces) must not change unless that version is bumped. Swapping two random draws, as a
    refactor once did, changes the faces and fails here. Version 3 added action units from a
    random stream of their own: the VA and EXPR files and the face frames are byte for byte
    what version 2 wrote (its digest of them, measured before AUs existed)."""
    from abaw_ray.data.synthetic import GENERATOR_VERSION, generate

    root = tmp_path / "c"
    generate(root, videos=6, seed=0, seconds=(2.0, 3.0))
    assert _digest(root, action_units=False, pixels=False) == (
        "af98c8c8eeeffa056e1fdf7cace9b88eb8d109eecc6523e229682bd9df01a960"
    )
    assert GENERATOR_VERSION == 3
    assert _digest(root, action_units=True, pixels=True) == (
        "32238ec1ed6350de82d591d0ee0ca89a9862706d4dbea6b4ccbca1b50544863d"
    )
