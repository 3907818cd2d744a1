"""Extractor registry, weights loading, audio front end, alignment and the store (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest

from abaw_ray.affwild2 import FACE_SIZE
from abaw_ray.features import WeightsNotFoundError, create_extractor, get_spec, list_extractors
from abaw_ray.features.align import align_to_frames
from abaw_ray.features.audio import NoAudioError, VocalIsolator, decode_audio, spectral_gate
from abaw_ray.features.registry import AUDIO_RATE, locate_weights
from abaw_ray.features.store import FeatureStore, StoreMismatchError, store_key
from tests.media import write_video_without_audio


@pytest.mark.parametrize("name", list_extractors())
def test_every_registry_name_builds_tiny_with_declared_dim(name):
    ex = create_extractor(name, tiny=True)
    spec = get_spec(name)
    assert ex.dim == ex.declared_dim == (spec.tiny_dim if spec.needs_weights else spec.dim)
    if spec.modality == "visual":
        images = np.random.default_rng(0).integers(
            0, 255, (3, FACE_SIZE, FACE_SIZE, 3), dtype=np.uint8
        )
        out = ex(images)
        assert out.shape == (3, ex.dim) and np.isfinite(out).all()
    else:
        wave = np.random.default_rng(0).normal(0, 0.1, AUDIO_RATE * 2).astype(np.float32)
        feats, times = ex.extract(wave)
        assert feats.shape[1] == ex.dim
        assert len(times) == len(feats)
        # native rate: e.g. 50 Hz for WavLM/Whisper, 100 Hz for log-mel, over 2 s of audio
        assert len(feats) == pytest.approx(2 * spec.rate_hz, abs=2)
        assert np.all(np.diff(times) > 0) and times[-1] <= 2.0


def test_tiny_models_are_identical_across_builds():
    images = np.full((2, FACE_SIZE, FACE_SIZE, 3), 128, np.uint8)
    a = create_extractor("resnet50", tiny=True)(images)
    b = create_extractor("resnet50", tiny=True)(images)
    np.testing.assert_array_equal(a, b)


def test_missing_real_weights_say_what_to_download(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("ABAW_RAY_WEIGHTS", raising=False)
    for name, repo in (
        ("clip_large", "openai/clip-vit-large-patch14"),
        ("resnet50", "timm/resnet50.a1_in1k"),
        ("wavlm_large", "microsoft/wavlm-large"),
    ):
        with pytest.raises(WeightsNotFoundError, match=repo) as err:
            create_extractor(name, weights_dir=tmp_path / "weights")
        assert "--tiny" in str(err.value) and str(tmp_path / "weights") in str(err.value)
        with pytest.raises(WeightsNotFoundError):
            locate_weights(name, weights_dir=tmp_path / "weights")


def test_real_loading_path_reads_a_local_weights_folder(tmp_path):
    """The offline loader on a local folder, exercised with a tiny model saved there."""
    tiny = create_extractor("clip_large", tiny=True)
    tiny.module.save_pretrained(tmp_path / "clip_large")
    loaded = create_extractor("clip_large", weights_dir=tmp_path)
    assert loaded.weights == f"local:{tmp_path / 'clip_large'}"
    assert locate_weights("clip_large", weights_dir=tmp_path) == loaded.weights
    images = np.random.default_rng(1).integers(0, 255, (2, FACE_SIZE, FACE_SIZE, 3), dtype=np.uint8)
    np.testing.assert_allclose(loaded(images), tiny(images), atol=1e-5)


def test_decode_audio_any_container_to_16k_mono(synthetic):
    for v in synthetic.videos[:4]:
        wave = decode_audio(synthetic.root / v.raw_file)
        assert wave.dtype == np.float32 and wave.ndim == 1
        duration = v.num_frames / v.fps
        assert len(wave) / AUDIO_RATE == pytest.approx(duration, abs=0.1)


def test_video_without_audio_stream_is_named(tmp_path):
    path = tmp_path / "silent.mp4"
    write_video_without_audio(path, frames=10)
    with pytest.raises(NoAudioError, match="silent.mp4"):
        decode_audio(path)


def test_spectral_gate_removes_stationary_noise():
    rng = np.random.default_rng(0)
    t = np.arange(AUDIO_RATE * 2) / AUDIO_RATE
    tone = np.where((t > 0.5) & (t < 1.5), 0.3 * np.sin(2 * np.pi * 220 * t), 0.0)
    noise = rng.normal(0, 0.02, t.size)
    out = spectral_gate((tone + noise).astype(np.float32))
    quiet = t < 0.4
    assert np.std(out[quiet]) < 0.3 * np.std(noise[quiet])  # noise-only stretch gated down
    voiced = (t > 0.7) & (t < 1.3)
    assert np.corrcoef(out[voiced], tone[voiced])[0, 1] > 0.95  # the voice survives


def test_vocal_isolator_tiny_keeps_length(tmp_path):
    iso = VocalIsolator.create(tiny=True)
    wave = np.random.default_rng(0).normal(0, 0.1, AUDIO_RATE).astype(np.float32)
    assert iso(wave).shape == wave.shape
    with pytest.raises(WeightsNotFoundError, match="hdemucs_high"):
        VocalIsolator.create(tiny=False, weights_dir=tmp_path)


def test_align_interp_is_exact_on_a_linear_ramp():
    times = np.arange(0, 4, 0.02) + 0.01  # 50 Hz, stamped at frame centres
    feats = np.stack([3 * times + 1, -times], axis=1)
    fps = 30.0
    frame_times = np.arange(100) / fps  # frames within the audio span
    out = align_to_frames(feats, times, frame_times, "interp")
    centres = frame_times + 0.5 / fps
    np.testing.assert_allclose(out[:, 0], 3 * centres + 1, atol=1e-5)
    np.testing.assert_allclose(out[:, 1], -centres, atol=1e-6)


def test_align_pool_averages_inside_each_frame():
    times = np.arange(0, 2, 0.01)  # 100 Hz
    step = (times >= 1.0).astype(float)[:, None]
    frame_times = np.arange(0, 2, 0.25)  # 4 fps: each frame holds 25 audio frames
    out = align_to_frames(step, times, frame_times, "pool")[:, 0]
    np.testing.assert_allclose(out, [0, 0, 0, 0, 1, 1, 1, 1])
    # A frame that straddles the step gets the share of audio frames on each side.
    out2 = align_to_frames(step, times, np.array([0.9, 1.1]), "pool")[:, 0]
    np.testing.assert_allclose(out2, [0.5, 1.0])


def test_store_writes_atomically_and_refuses_other_weights(tmp_path, monkeypatch):
    store = FeatureStore(tmp_path)
    spec = get_spec("face_hog")
    key = store.open(spec, tiny=True, weights="none (model-free descriptor)")
    assert key == store_key("face_hog", True) == "face_hog"
    store.write(key, "v1", np.ones((5, 441)), mask=np.ones(5, bool))
    assert store.is_complete(key, "v1", rows=5) and not store.is_complete(key, "v1", rows=6)

    def crash(*a, **k):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(np, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        store.write(key, "v2", np.ones((5, 441)), mask=np.ones(5, bool))
    monkeypatch.undo()
    assert not store.is_complete(key, "v2")
    assert not list(tmp_path.glob("face_hog/v2*.npy"))  # nothing half-written left behind
    assert not list(tmp_path.glob("face_hog/*.partial*"))
    assert store.load(key, "v1").values.dtype == np.float16
    clip = get_spec("clip_large")
    k2 = store.open(clip, tiny=True, weights="tiny-random(seed=0)")
    assert k2 == "clip_large.tiny"
    with pytest.raises(StoreMismatchError, match="weights"):
        store.open(clip, tiny=True, weights="tiny-random(seed=1)")


def test_real_timm_loading_reads_a_local_checkpoint(tmp_path):
    import timm
    from safetensors.torch import save_file

    model = timm.create_model("mobilenetv3_small_100", pretrained=False)
    (tmp_path / "mobilenetv3").mkdir()
    save_file(model.state_dict(), tmp_path / "mobilenetv3" / "model.safetensors")
    ex = create_extractor("mobilenetv3", weights_dir=tmp_path)
    assert ex.weights == f"file:{tmp_path / 'mobilenetv3' / 'model.safetensors'}"
    assert ex.input_size == 224 and ex.dim == get_spec("mobilenetv3").dim
    images = np.random.default_rng(0).integers(0, 255, (2, FACE_SIZE, FACE_SIZE, 3), dtype=np.uint8)
    x = ex.preprocess(images)
    model.eval()
    expected = model.forward_head(model.forward_features(x), pre_logits=True)
    np.testing.assert_allclose(ex(images), expected.detach().numpy(), atol=1e-4)


@pytest.mark.parametrize(
    "total, node_cpus, expected",
    [
        ({"CPU": 2.0}, 1.0, (1, 0.0, 0.75)),  # two 1-CPU nodes: the actor fits on one
        ({"CPU": 2.0}, 2.0, (1, 0.0, 1.75)),  # one 2-CPU machine: all but a decode task
        ({"CPU": 128.0}, 16.0, (1, 0.0, 15.75)),  # 8 x 16 CPUs: not 127.75 on one node
        ({"CPU": 64.0, "GPU": 4.0}, 16.0, (4, 1.0, 4.0)),  # one actor per GPU, <= 4 CPUs
        ({"CPU": 4.0, "GPU": 4.0}, 1.0, (4, 1.0, 0.75)),
    ],
)
def test_extraction_actors_fit_on_one_node(total, node_cpus, expected):
    from abaw_ray.features.pipeline import ExtractionConfig, actor_resources

    assert actor_resources(ExtractionConfig(extractors=("face_hog",)), total, node_cpus) == expected
