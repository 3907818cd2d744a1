"""Feature extraction on Ray Data: faces and audio of a corpus into the feature store.

Faces: frame paths -> ``map_batches(decode_faces)`` (parallel CPU tasks) ->
``map_batches(FaceFeatures)`` (a callable class: every model loaded once per actor, one GPU
per actor where GPUs exist) -> streamed back in order, one video at a time, into the store.
Audio: raw files -> ``map_batches(decode_waveforms)`` -> ``map_batches(AudioFeatures)``.
A ``_left``/``_right`` pair shares one raw file: its audio is decoded and encoded once.

Videos already in the store (manifest entry and row count) are skipped; corrupt or empty JPEGs
and videos without audio are reported, never fatal, and the rest of the corpus goes on.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
from PIL import Image

from abaw_ray.data.corpus import Corpus
from abaw_ray.data.timeline import fill_from_nearest
from abaw_ray.features.audio import AudioFrontEnd, NoAudioError, VocalIsolator, decode_audio
from abaw_ray.features.registry import create_extractor, get_spec, locate_weights
from abaw_ray.features.store import FeatureStore, store_key

FACE_SIZE = 112
DECODE_BATCH = 64


@dataclass(frozen=True)
class ExtractionConfig:
    extractors: tuple[str, ...]
    tiny: bool = False
    weights_dir: Path | None = None
    force: bool = False
    denoise: bool = True
    isolate_vocals: bool = False
    batch_size: int | None = None  # default: the smallest registry batch size of the models
    num_actors: int | None = None  # default: one per GPU, else one
    decode_cpus: float = 0.25  # logical CPUs per decode task: JPEG decode is light


@dataclass
class ExtractionReport:
    written: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    skipped: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    bad_frames: dict[str, str] = field(default_factory=dict)  # image path -> why
    gaps: dict[str, dict[str, str]] = field(default_factory=lambda: defaultdict(dict))
    frames: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        lines = []
        for key in sorted(set(self.written) | set(self.skipped) | set(self.gaps)):
            lines.append(
                f"  {key:<22} written {len(self.written.get(key, [])):>4}  "
                f"already done {self.skipped.get(key, 0):>4}  gaps {len(self.gaps.get(key, {}))}"
            )
            for video, why in self.gaps.get(key, {}).items():
                lines.append(f"      gap {video}: {why}")
        if self.bad_frames:
            lines.append(
                f"  unreadable face images: {len(self.bad_frames)} (filled from the "
                f"nearest frame, flagged in the mask)"
            )
            for path, why in list(self.bad_frames.items())[:20]:
                lines.append(f"      {path}: {why}")
        rate = self.frames / self.seconds if self.seconds else 0.0
        lines.append(f"  {self.frames} face frames in {self.seconds:.1f} s ({rate:.1f} frames/s)")
        return "\n".join(lines)


def decode_faces(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray Data task: JPEG paths -> uint8 [B, 112, 112, 3]; a bad file gives ok=False."""
    n = len(batch["path"])
    images = np.zeros((n, FACE_SIZE, FACE_SIZE, 3), np.uint8)
    ok = np.ones(n, bool)
    errors = np.full(n, "", dtype=object)
    for i, path in enumerate(batch["path"]):
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                if im.size != (FACE_SIZE, FACE_SIZE):
                    im = im.resize((FACE_SIZE, FACE_SIZE), Image.BILINEAR)
                images[i] = np.asarray(im)
        except Exception as err:  # PIL raises many types for truncated / empty / bad files
            ok[i] = False
            errors[i] = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    return {**batch, "image": images, "ok": ok, "error": errors}


def _set_threads(num_cpus: float) -> None:
    import torch

    # An actor's torch must use the cores Ray gave it, not every core of the node.
    torch.set_num_threads(max(1, math.ceil(num_cpus)))


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class FaceFeatures:
    """Ray Data callable class: every requested face model, loaded once per actor."""

    def __init__(
        self, names: list[str], tiny: bool, weights_dir: str | None, num_cpus: float
    ) -> None:
        _set_threads(num_cpus)
        device = _device()
        self.models = {
            store_key(n, tiny): create_extractor(n, tiny=tiny, weights_dir=weights_dir).to(device)
            for n in names
        }

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {k: batch[k] for k in ("video", "frame", "ok", "error")}
        for key, model in self.models.items():
            out[f"f:{key}"] = model(batch["image"]).astype(np.float16)
        return out


def decode_waveforms(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray Data task: raw video -> 16 kHz mono waveform (serialised; lengths differ)."""
    waves, errors = [], []
    for path in batch["source"]:
        try:
            wave = decode_audio(path)
            errors.append("")
        except NoAudioError as err:
            wave = np.zeros(0, np.float32)
            errors.append(str(err))
        buf = io.BytesIO()
        np.save(buf, wave)
        waves.append(buf.getvalue())
    return {**batch, "wave": np.array(waves, dtype=object), "error": np.array(errors, object)}


class AudioFeatures:
    """Ray Data callable class: vocal isolation, denoising and every audio model, per file."""

    def __init__(
        self,
        names: list[str],
        tiny: bool,
        weights_dir: str | None,
        frontend: AudioFrontEnd,
        num_cpus: float,
    ) -> None:
        _set_threads(num_cpus)
        device = _device()
        self.frontend = frontend
        self.isolator = (
            VocalIsolator.create(frontend.tiny, frontend.weights_dir)
            if frontend.isolate_vocals
            else None
        )
        self.models = {
            store_key(n, tiny): create_extractor(n, tiny=tiny, weights_dir=weights_dir).to(device)
            for n in names
        }

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from abaw_ray.features.audio import spectral_gate

        results = []
        for raw, error in zip(batch["wave"], batch["error"]):
            item: dict[str, Any] = {}
            if not error:
                wave = np.load(io.BytesIO(raw))
                if self.isolator is not None:
                    wave = self.isolator(wave)
                if self.frontend.denoise:
                    wave = spectral_gate(wave)
                for key, model in self.models.items():
                    feats, times = model.extract(wave.astype(np.float32))
                    item[key] = (feats.astype(np.float16), times)
            buf = io.BytesIO()
            np.savez(
                buf,
                **{f"{k}/values": v[0] for k, v in item.items()},
                **{f"{k}/times": v[1] for k, v in item.items()},
            )
            results.append(buf.getvalue())
        return {
            "source": batch["source"],
            "videos": batch["videos"],
            "error": batch["error"],
            "features": np.array(results, dtype=object),
        }


def actor_resources(
    config: ExtractionConfig, total: dict[str, float], node_cpus: float
) -> tuple[int, float, float]:
    """(actors, GPUs per actor, CPUs per actor) from the cluster's ``total`` resources and
    the CPUs of its largest node: an actor must fit on one node, whatever the total."""
    gpus = int(total.get("GPU", 0))
    cpus = float(total.get("CPU", 1))
    fits = max(0.5, node_cpus - config.decode_cpus)  # beside one decode task on its node
    if gpus:
        actors = config.num_actors or gpus
        return actors, 1.0, max(0.5, min(4.0, fits, cpus / actors - config.decode_cpus))
    actors = config.num_actors or 1
    return actors, 0.0, max(0.5, min(fits, (cpus - config.decode_cpus) / actors))


def _actor_resources(config: ExtractionConfig) -> tuple[int, float, float]:
    node_cpus = max(
        (n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=1.0
    )
    return actor_resources(config, ray.cluster_resources(), node_cpus)


def extract_faces(
    corpus: Corpus,
    store: FeatureStore,
    names: list[str],
    config: ExtractionConfig,
    report: ExtractionReport,
) -> None:
    keys = {
        n: store.open(
            get_spec(n),
            config.tiny,
            locate_weights(n, config.tiny, config.weights_dir),
            force=config.force,
        )
        for n in names
    }
    todo: dict[str, int] = {}
    for video in sorted(corpus.videos):
        v = corpus.videos[video]
        if video in corpus.unusable or v.face_dir is None:
            continue
        rows = corpus.num_frames(video)
        pending = [k for k in keys.values() if not store.is_complete(k, video, rows)]
        for k in keys.values():
            if k not in pending:
                report.skipped[k] += 1
        if not pending:
            continue
        faces = v.face_frames[(v.face_frames >= 1) & (v.face_frames <= rows)]
        if faces.size == 0:
            for k in pending:
                report.gaps[k][video] = "no face image on its timeline"
                store.record_gap(k, video, "no face image on its timeline")
            continue
        todo[video] = rows
    if not todo:
        return

    items = [
        {"video": video, "frame": int(k), "path": str(corpus.videos[video].face_path(int(k)))}
        for video in todo
        for k in corpus.videos[video].face_frames
        if 1 <= k <= todo[video]
    ]
    expected = defaultdict(int)
    for it in items:
        expected[it["video"]] += 1
    actors, gpus, cpus = _actor_resources(config)
    batch_size = config.batch_size or min(get_spec(n).batch_size for n in names)
    if not gpus:
        batch_size = min(batch_size, 64)

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # videos finish one after another
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items) // 512))
    ds = ds.map_batches(decode_faces, batch_size=DECODE_BATCH, num_cpus=config.decode_cpus)
    ds = ds.map_batches(
        FaceFeatures,
        fn_constructor_kwargs=dict(
            names=names,
            tiny=config.tiny,
            weights_dir=str(config.weights_dir or "") or None,
            num_cpus=cpus,
        ),
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=gpus,
        num_cpus=cpus,
    )

    parts: dict[str, list[dict[str, np.ndarray]]] = defaultdict(list)
    received: dict[str, int] = defaultdict(int)
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
        for video in np.unique(batch["video"]):
            sel = batch["video"] == video
            parts[video].append({k: v[sel] for k, v in batch.items()})
            received[video] += int(sel.sum())
            if received[video] == expected[video]:
                _write_faces(store, keys, video, todo[video], parts.pop(video), report)
                report.frames += expected[video]


def _write_faces(
    store: FeatureStore,
    keys: dict[str, str],
    video: str,
    rows: int,
    parts: list[dict[str, np.ndarray]],
    report: ExtractionReport,
) -> None:
    frames = np.concatenate([p["frame"] for p in parts])
    ok = np.concatenate([p["ok"] for p in parts])
    errors = np.concatenate([p["error"] for p in parts])
    for f, good, err in zip(frames, ok, errors):
        if not good:
            report.bad_frames[f"{video}/{int(f):05d}.jpg"] = str(err)
    mask = np.zeros(rows, bool)
    mask[frames[ok] - 1] = True
    bad = {f"{int(f):05d}.jpg": str(e) for f, g, e in zip(frames, ok, errors) if not g}
    for key in keys.values():
        feats = np.concatenate([p[f"f:{key}"] for p in parts])
        if not mask.any():
            report.gaps[key][video] = "no readable face image"
            store.record_gap(key, video, "no readable face image")
            continue
        full = np.zeros((rows, feats.shape[1]), np.float16)
        full[frames[ok] - 1] = feats[ok]
        full = fill_from_nearest(full, mask)
        store.write(
            key,
            video,
            full,
            mask=mask,
            info={"faces": int(mask.sum()), "filled": int((~mask).sum()), "unreadable": bad},
        )
        report.written[key].append(video)


def extract_audio(
    corpus: Corpus,
    store: FeatureStore,
    names: list[str],
    config: ExtractionConfig,
    report: ExtractionReport,
) -> None:
    frontend = AudioFrontEnd(
        denoise=config.denoise,
        isolate_vocals=config.isolate_vocals,
        tiny=config.tiny,
        weights_dir=config.weights_dir,
    )
    keys = {
        n: store.open(
            get_spec(n),
            config.tiny,
            locate_weights(n, config.tiny, config.weights_dir),
            frontend=frontend.describe(),
            force=config.force,
        )
        for n in names
    }
    by_source: dict[str, list[str]] = defaultdict(list)
    for video in sorted(corpus.videos):
        v = corpus.videos[video]
        if video in corpus.unusable:
            continue
        pending = [k for k in keys.values() if not store.is_complete(k, video)]
        for k in keys.values():
            if k not in pending:
                report.skipped[k] += 1
        if not pending:
            continue
        reason = None
        if v.media is None:
            reason = "no raw video found (no audio source)"
        elif v.media.error:
            reason = f"{v.media.path}: unreadable ({v.media.error})"
        elif not v.media.has_audio:
            reason = f"{v.media.path}: no audio stream"
        if reason:
            for k in pending:
                report.gaps[k][video] = reason
                store.record_gap(k, video, reason)
            continue
        by_source[str(v.audio_source)].append(video)
    if not by_source:
        return

    actors, gpus, cpus = _actor_resources(config)
    items = [{"source": s, "videos": json.dumps(v)} for s, v in sorted(by_source.items())]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(decode_waveforms, batch_size=1, num_cpus=config.decode_cpus)
    ds = ds.map_batches(
        AudioFeatures,
        fn_constructor_kwargs=dict(
            names=names,
            tiny=config.tiny,
            weights_dir=str(config.weights_dir or "") or None,
            frontend=frontend,
            num_cpus=cpus,
        ),
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=gpus,
        num_cpus=cpus,
    )
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for source, videos_json, error, blob in zip(
            batch["source"], batch["videos"], batch["error"], batch["features"]
        ):
            videos = json.loads(videos_json)
            if error:
                for key in keys.values():
                    for video in videos:
                        report.gaps[key][video] = str(error)
                        store.record_gap(key, video, str(error))
                continue
            data = np.load(io.BytesIO(blob))
            for key in keys.values():
                for video in videos:  # a _left/_right pair: one decode, one encode, two entries
                    store.write(
                        key,
                        video,
                        data[f"{key}/values"],
                        times=data[f"{key}/times"],
                        info={"source": Path(source).name},
                    )
                    report.written[key].append(video)


def extract_features(
    corpus: Corpus, store: FeatureStore, config: ExtractionConfig
) -> ExtractionReport:
    """Extract every requested feature the store lacks. Ray must be initialised."""
    report = ExtractionReport()
    start = time.perf_counter()
    visual = [n for n in config.extractors if get_spec(n).modality == "visual"]
    audio = [n for n in config.extractors if get_spec(n).modality == "audio"]
    if visual:
        extract_faces(corpus, store, visual, config, report)
    if audio:
        extract_audio(corpus, store, audio, config, report)
    report.seconds = time.perf_counter() - start
    return report
