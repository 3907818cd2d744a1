"""Feature extraction on Ray Data: faces and audio of a corpus into the feature store.

Faces: one row per video -> ``map_batches(decode_video_faces)`` (parallel CPU tasks, one per
video: list its face images, decode them a batch at a time) -> ``map_batches(FaceFeatures)``
(a callable class: every model loaded once per actor, one GPU per actor where GPUs exist) ->
``map_batches(FaceWriter)`` (one actor fills each video's output array as its rows arrive and
writes it to the store when the video is complete).
Audio: raw files -> ``map_batches(decode_waveforms)`` -> ``map_batches(AudioFeatures)``, whose
actors write each file's features to the store. A ``_left``/``_right`` pair shares one raw file:
its audio is decoded and encoded once.

Workers write the arrays (on a cluster the store must be shared storage); what flows back to the
driver is one small row per finished video, from which it alone writes the manifest.

Videos already in the store (manifest entry and row count) are skipped; corrupt or empty JPEGs
and videos without audio are reported, never fatal, and the rest of the corpus goes on.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
from PIL import Image

from abaw_ray.affwild2 import FACE_SIZE, face_image_name
from abaw_ray.console import progress
from abaw_ray.data.corpus import Corpus, face_image_path
from abaw_ray.data.timeline import fill_from_nearest
from abaw_ray.features.audio import AudioFrontEnd, NoAudioError, VocalIsolator, decode_audio
from abaw_ray.features.registry import create_extractor, get_spec, locate_weights
from abaw_ray.features.store import FeatureStore, store_key
from abaw_ray.pause import pause_point

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
    unfinished: list[str] = field(default_factory=list)  # lost with a worker: rerun
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
        if self.unfinished:
            lines.append(
                f"  unfinished: {len(self.unfinished)} video(s) lost with a worker "
                f"({', '.join(self.unfinished[:5])}{', ...' if len(self.unfinished) > 5 else ''}"
                f"): rerun the same command to finish them; finished videos are kept"
            )
        rate = self.frames / self.seconds if self.seconds else 0.0
        lines.append(f"  {self.frames} face frames in {self.seconds:.1f} s ({rate:.1f} frames/s)")
        return "\n".join(lines)


def decode_video_faces(batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data task, one video per call: lists the video's face images on its timeline and
    yields them decoded, ``DECODE_BATCH`` at a time, each row carrying the video's timeline
    length and how many images to expect. A task holds one batch of images, whatever the
    video's length."""
    for video, face_dir, width, frames, rows in zip(
        batch["video"], batch["face_dir"], batch["width"], batch["frames"], batch["rows"]
    ):
        frames = np.asarray(frames, np.int64)
        frames = frames[(frames >= 1) & (frames <= rows)]
        for a in range(0, len(frames), DECODE_BATCH):
            chunk = frames[a : a + DECODE_BATCH]
            paths = np.array([str(face_image_path(face_dir, width, k)) for k in chunk], object)
            yield {
                **decode_faces({"path": paths}),
                "video": np.full(len(chunk), video, dtype=object),
                "frame": chunk,
                "rows": np.full(len(chunk), int(rows), np.int64),
                "expected": np.full(len(chunk), len(frames), np.int64),
            }


def decode_faces(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray Data task: JPEG paths -> uint8 [B, FACE_SIZE, FACE_SIZE, 3] (another size is resized);
    a bad file gives ok=False."""
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
        out = {k: batch[k] for k in ("video", "frame", "rows", "expected", "ok", "error")}
        for key, model in self.models.items():
            out[f"f:{key}"] = model(batch["image"]).astype(np.float16)
        return out


class FaceWriter:
    """Ray Data callable class, one actor: fills each video's output arrays as its rows arrive
    (in any order, across batches) and writes the video to the store once every expected
    image is in. It holds the output arrays of the videos in flight, nothing more."""

    def __init__(self, store_root: str, keys: list[str]) -> None:
        self.store = FeatureStore(store_root)
        self.keys = keys
        self.open: dict[str, dict[str, Any]] = {}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        finished, results = [], []
        for video in np.unique(batch["video"]):
            sel = batch["video"] == video
            state = self.open.get(video)
            if state is None:
                rows = int(batch["rows"][sel][0])
                state = self.open[video] = {
                    "expected": int(batch["expected"][sel][0]),
                    "received": 0,
                    "mask": np.zeros(rows, bool),
                    "bad": {},
                    "values": {
                        k: np.zeros((rows, batch[f"f:{k}"].shape[1]), np.float16) for k in self.keys
                    },
                }
            frames, ok = batch["frame"][sel], batch["ok"][sel]
            state["received"] += int(sel.sum())
            state["mask"][frames[ok] - 1] = True
            for f, err in zip(frames[~ok], batch["error"][sel][~ok]):
                state["bad"][face_image_name(f)] = str(err)
            for k in self.keys:
                state["values"][k][frames[ok] - 1] = batch[f"f:{k}"][sel][ok]
            if state["received"] == state["expected"]:
                finished.append(video)
                results.append(json.dumps(self._write(video, self.open.pop(video))))
        return {"video": np.array(finished, dtype=object), "result": np.array(results, object)}

    def _write(self, video: str, state: dict[str, Any]) -> dict[str, Any]:
        mask, bad = state["mask"], state["bad"]
        result: dict[str, Any] = {"frames": state["expected"], "bad": bad, "entries": {}}
        if not mask.any():
            result["gap"] = "no readable face image"
            return result
        info = {"faces": int(mask.sum()), "filled": int((~mask).sum()), "unreadable": bad}
        for key, values in state["values"].items():
            result["entries"][key] = self.store.write_arrays(
                key, video, fill_from_nearest(values, mask), mask=mask, info=info
            )
        return result


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
        store_root: str,
    ) -> None:
        _set_threads(num_cpus)
        self.store = FeatureStore(store_root)
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
        for source, raw, error, videos in zip(
            batch["source"], batch["wave"], batch["error"], batch["videos"]
        ):
            entries: dict[str, dict[str, Any]] = {}
            if not error:
                wave = np.load(io.BytesIO(raw))
                if self.isolator is not None:
                    wave = self.isolator(wave)
                if self.frontend.denoise:
                    wave = spectral_gate(wave)
                for key, model in self.models.items():
                    feats, times = model.extract(wave.astype(np.float32))
                    info = {"source": Path(source).name}
                    entries[key] = {  # a _left/_right pair: one decode, one encode, two entries
                        video: self.store.write_arrays(key, video, feats, times=times, info=info)
                        for video in json.loads(videos)
                    }
            results.append(json.dumps(entries))
        return {
            "source": batch["source"],
            "videos": batch["videos"],
            "error": batch["error"],
            "entries": np.array(results, dtype=object),
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
        {
            "video": video,
            "face_dir": str(corpus.videos[video].face_dir),
            "width": corpus.videos[video].face_name_width,
            "frames": corpus.videos[video].face_frames.astype(np.int32),
            "rows": rows,
        }
        for video, rows in todo.items()
    ]
    actors, gpus, cpus = _actor_resources(config)
    batch_size = config.batch_size or min(get_spec(n).batch_size for n in names)
    if not gpus:
        batch_size = min(batch_size, 64)

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # videos finish one after another
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(decode_video_faces, batch_size=1, num_cpus=config.decode_cpus)
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
    ds = ds.map_batches(
        FaceWriter,
        fn_constructor_kwargs=dict(store_root=store.worker_root(), keys=list(keys.values())),
        batch_size=None,
        compute=ray.data.ActorPoolStrategy(size=1),  # a video's rows meet in one place
        num_cpus=0,  # file writes; it must not take a core from decoding or the models
    )
    bar = progress(
        total=sum(todo.values()), desc=f"extracting {', '.join(keys.values())}", unit="frame"
    )
    for row in ds.iter_rows():
        video, result = str(row["video"]), json.loads(row["result"])
        bar.update(todo.pop(video, 0))
        for name, why in result["bad"].items():
            report.bad_frames[f"{video}/{name}"] = why
        report.frames += result["frames"]
        for key in keys.values():
            if "gap" in result:
                report.gaps[key][video] = result["gap"]
                store.record_gap(key, video, result["gap"])
            else:
                store.record(key, {video: result["entries"][key]})
                report.written[key].append(video)
        pause_point("video_recorded", video)
    bar.close()
    report.unfinished += sorted(todo)  # their rows were lost with a worker: a rerun redoes them


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
            store_root=store.worker_root(),
        ),
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=gpus,
        num_cpus=cpus,
    )
    bar = progress(total=len(items), desc=f"extracting {', '.join(keys.values())}", unit="audio")
    for row in ds.iter_rows():
        videos, error = json.loads(row["videos"]), str(row["error"])
        by_source.pop(str(row["source"]), None)
        bar.update()
        for key in keys.values():
            if error:
                for video in videos:
                    report.gaps[key][video] = error
                    store.record_gap(key, video, error)
                continue
            store.record(key, json.loads(row["entries"])[key])
            report.written[key] += videos
    bar.close()
    report.unfinished += sorted(v for videos in by_source.values() for v in videos)


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
