"""The feature bank as shards: built by Ray tasks from the store, one object per feature
variant, normalisation statistics streamed, and a trial fetching its own combination only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from abaw_ray.data.corpus import Corpus, Video
from abaw_ray.data.labels import FrameLabels
from abaw_ray.data.media import MediaInfo
from abaw_ray.features.registry import get_spec
from abaw_ray.features.store import FeatureStore
from abaw_ray.train.bank import RunningMoments, build_bank

FPS, RATE = 30.0, 50.0
LENGTHS = {"t0": 90, "t1": 60, "t2": 45, "v0": 30, "v1": 36, "x0": 24}
SPLITS = {"train": ("t0", "t1", "t2"), "val": ("v0", "v1"), "test": ("x0",)}


def test_running_moments_match_numpy_across_chunks():
    rng = np.random.default_rng(0)
    parts = [rng.normal(3.0, 2.0, (n, 4)).astype(np.float16) for n in (7, 1, 12)]
    moments = RunningMoments(4)
    for x in parts:
        moments.add(x, chunk=3)  # chunks that split every part unevenly
    mean, std = moments.mean_std()
    x = np.concatenate(parts).astype(np.float64)
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-6)
    np.testing.assert_allclose(std, x.std(0) + 1e-5, rtol=1e-6)


def _corpus(root: Path) -> Corpus:
    videos, labels = {}, {}
    for name, n in LENGTHS.items():
        media = MediaInfo(root / f"{name}.mp4", FPS, n, n / FPS, True, 16_000)
        videos[name] = Video(name, None, np.arange(1, n + 1), 5, media)
        if not name.startswith("x"):
            values = np.linspace(-1, 1, 2 * n, dtype=np.float32).reshape(n, 2)
            labels[name] = FrameLabels("va", name, root / f"{name}.txt", values, np.ones(n, bool))
    return Corpus(root, videos, {"va": SPLITS}, {"va": labels, "expr": {}}, {}, {})


@pytest.fixture(scope="module")
def ray_local():
    import ray

    # "local": a new instance even where another runs on the host (ray.init alone joins it)
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_shards_hold_the_store_and_a_trial_fetches_its_combination_only(tmp_path, ray_local):
    corpus = _corpus(tmp_path)
    store = FeatureStore(tmp_path / "features")
    rng = np.random.default_rng(1)
    visual = store.open(get_spec("clip_large"), tiny=True, weights="test")
    audio = store.open(get_spec("wavlm_large"), tiny=True, weights="test")
    dv, da = store.manifest(visual)["dim"], store.manifest(audio)["dim"]
    stored = {}
    for v, n in LENGTHS.items():
        stored[v] = (rng.normal(1.0, 3.0, (n, dv)) + np.arange(dv)).astype(np.float16)
        store.write(visual, v, stored[v], mask=np.ones(n, bool))
        if v != "t2":  # t2 has no audio: zeros, and positions 0
            rows = int(n / FPS * RATE)
            store.write(audio, v, rng.normal(size=(rows, da)), times=np.arange(rows) / RATE)

    # Shards of at most 60 frames' visual rows: whole videos, so t0 (90 frames) is alone.
    shard_bytes = 60 * dv * 2
    bank = build_bank(corpus, store, [visual, audio], "va", ("interp", "conv"), 0, 0, shard_bytes)
    # Only the searched alignments are built; the driver holds no feature array.
    assert set(bank.shards) == {visual, f"{audio}|interp", f"{audio}|native"}
    groups = [sorted(s.bounds) for s in ray_local.get(bank.shards[visual])]
    assert groups == [["t0"], ["t1"], ["t2"], ["v0"], ["v1", "x0"]]  # in split order
    assert bank.frames == {} and bank.native == {}
    assert bank.dim(visual) == dv and bank.dim(audio) == da

    train = np.concatenate([stored[v] for v in SPLITS["train"]]).astype(np.float64)
    np.testing.assert_allclose(bank.mean[visual], train.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bank.std[visual], train.std(0) + 1e-5, rtol=1e-5)
    native_train = [store.load(audio, v).values for v in ("t0", "t1")] + [np.zeros((1, da))]
    native_train = np.concatenate(native_train).astype(np.float64)
    np.testing.assert_allclose(bank.mean[f"{audio}|native"], native_train.mean(0), atol=1e-5)

    # A visual-only trial gets the visual shard and nothing else.
    seen = bank.fetch(bank.variants_for([visual], "interp"))
    assert set(seen.frames) == {visual} and seen.native == {}
    for v in LENGTHS:
        np.testing.assert_array_equal(seen.frames[visual][v], stored[v])

    # A conv trial gets native audio and each frame centre's fractional native index.
    conv = bank.fetch(bank.variants_for([visual, audio], "conv"))
    assert set(conv.frames) == {visual} and set(conv.native) == {audio}
    np.testing.assert_array_equal(conv.native[audio]["v1"], store.load(audio, "v1").values)
    centres = (np.arange(LENGTHS["v1"]) + 0.5) / FPS
    last = len(conv.native[audio]["v1"]) - 1  # beyond the audio, the edge row
    expected = np.minimum(centres * RATE, last)
    np.testing.assert_allclose(conv.positions[audio]["v1"], expected, atol=1e-4)
    assert expected[-1] == last
    assert not conv.native[audio]["t2"].any() and not conv.positions[audio]["t2"].any()

    with pytest.raises(KeyError, match="pool"):
        bank.fetch([f"{audio}|pool"])
