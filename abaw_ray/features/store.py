"""The feature store: one float16 array per video per extractor, and a manifest per extractor.

    <root>/<key>/<video>.npy         visual: one row per frame of the label timeline
                                     audio: one row per native-rate frame
    <root>/<key>/<video>.mask.npy    visual: True where the frame had a face (others filled)
    <root>/<key>/<video>.times.npy   audio: each row's time in seconds
    <root>/<key>/manifest.json       extractor, version, weights, dim, rate; rows per video
    <root>/<key>/manifest.json.lock  held while a job updates the manifest

``key`` is the extractor's name, with ``.tiny`` appended for tiny random weights so the two
never mix. Every file is written atomically and a video enters the manifest only after its
arrays are in place, so an interrupted extraction resumes where it stopped. Extraction workers
write the arrays (the store must be shared storage on a cluster); the driver alone writes the
manifest. Several jobs may share a store: each update of a manifest rereads it under a file
lock, and a job clears only the partial files of writers that are gone.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from abaw_ray.features.registry import ExtractorSpec, get_spec
from abaw_ray.fsutil import atomic_path, atomic_write_text, remove_stale_partials

MANIFEST_LOCK = "manifest.json.lock"


def store_key(name: str, tiny: bool) -> str:
    spec = get_spec(name)
    return f"{name}.tiny" if tiny and spec.needs_weights else name


def parse_key(key: str) -> tuple[str, bool]:
    name, _, suffix = key.partition(".")
    return name, suffix == "tiny"


@dataclass(frozen=True)
class StoredFeatures:
    values: np.ndarray  # float16 [rows, dim]
    mask: np.ndarray | None  # visual: bool [rows]
    times: np.ndarray | None  # audio: float64 [rows]
    rate_hz: float | None


class StoreMismatchError(RuntimeError):
    pass


class FeatureStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def worker_root(self) -> str:
        """The root as Ray workers must be given it: absolute (their working folder differs
        from the driver's)."""
        return str(self.root.resolve())

    def dir(self, key: str) -> Path:
        return self.root / key

    def manifest_path(self, key: str) -> Path:
        return self.dir(key) / "manifest.json"

    def manifest(self, key: str) -> dict[str, Any]:
        path = self.manifest_path(key)
        if not path.is_file():
            return {}
        return json.loads(path.read_text())

    def keys(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.parent.name for p in self.root.glob("*/manifest.json"))

    def open(
        self,
        spec: ExtractorSpec,
        tiny: bool,
        weights: str,
        frontend: str | None = None,
        force: bool = False,
    ) -> str:
        """Prepare an extractor's folder and return its key; refuse to mix arrays made with
        other weights or settings (``force`` clears the folder instead)."""
        key = store_key(spec.name, tiny)
        header = {
            "extractor": spec.name,
            "key": key,
            "modality": spec.modality,
            "version": spec.version,
            "weights": weights,
            "dim": spec.tiny_dim if tiny and spec.needs_weights else spec.dim,
            "rate_hz": spec.rate_hz,
            "frontend": frontend if spec.modality == "audio" else None,
        }
        if force and self.dir(key).exists():
            shutil.rmtree(self.dir(key))
        remove_stale_partials(self.dir(key))  # what killed writers left; never a live one's
        with self._lock(key):
            current = self.manifest(key)
            if current:
                old = {k: current.get(k) for k in header}
                if old != header:
                    diff = {k: (old[k], header[k]) for k in header if old[k] != header[k]}
                    raise StoreMismatchError(
                        f"{self.manifest_path(key)} was written with other settings {diff}; "
                        f"rerun with --force to redo {key}, or use another --store"
                    )
                return key
            atomic_write_text(
                self.manifest_path(key), json.dumps({**header, "videos": {}, "gaps": {}}, indent=1)
            )
        return key

    def is_complete(self, key: str, video: str, rows: int | None = None) -> bool:
        entry = self.manifest(key).get("videos", {}).get(video)
        if entry is None:
            return False
        path = self.dir(key) / f"{video}.npy"
        if not path.is_file():
            return False
        try:
            arr = np.load(path, mmap_mode="r")
        except (ValueError, OSError):
            return False
        if arr.shape[0] != entry["rows"]:
            return False
        return rows is None or entry["rows"] == rows

    def _save(self, path: Path, arr: np.ndarray) -> None:
        with atomic_path(path, suffix=".npy") as tmp:
            np.save(tmp, arr)

    def write_arrays(
        self,
        key: str,
        video: str,
        values: np.ndarray,
        *,
        mask: np.ndarray | None = None,
        times: np.ndarray | None = None,
        info: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Write a video's arrays (atomically, each) and return its manifest entry; the video
        is not in the store until ``record`` adds that entry. Workers write arrays; one
        process, the driver, owns the manifest."""
        d = self.dir(key)
        values = np.asarray(values, dtype=np.float16)
        if mask is not None:
            self._save(d / f"{video}.mask.npy", np.asarray(mask, dtype=bool))
        if times is not None:
            self._save(d / f"{video}.times.npy", np.asarray(times, dtype=np.float64))
        self._save(d / f"{video}.npy", values)
        return {"rows": int(values.shape[0]), **(info or {})}

    def record(self, key: str, entries: dict[str, dict[str, Any]]) -> None:
        """Add the manifest entries of videos whose arrays are written."""
        if entries:
            self._update(key, lambda m: m["videos"].update(entries))

    def write(self, key: str, video: str, values: np.ndarray, **arrays: Any) -> None:
        """``write_arrays`` then ``record``, in one process."""
        self.record(key, {video: self.write_arrays(key, video, values, **arrays)})

    def record_gap(self, key: str, video: str, reason: str) -> None:
        self._update(key, lambda m: m["gaps"].__setitem__(video, reason))

    def _lock(self, key: str) -> FileLock:
        """The manifest's lock: jobs sharing a store (on one host or over NFS) update it one
        at a time."""
        self.dir(key).mkdir(parents=True, exist_ok=True)
        return FileLock(self.dir(key) / MANIFEST_LOCK)

    def _update(self, key: str, change) -> None:
        """Read, change and write the manifest under its lock: entries another job recorded
        meanwhile are kept."""
        with self._lock(key):
            manifest = self.manifest(key)
            change(manifest)
            atomic_write_text(self.manifest_path(key), json.dumps(manifest, indent=1))

    def load(self, key: str, video: str, mmap: bool = False) -> StoredFeatures:
        d = self.dir(key)
        entry = self.manifest(key).get("videos", {}).get(video)
        if entry is None:
            raise FileNotFoundError(f"{d}: no features for video {video} (not in the manifest)")
        mode = "r" if mmap else None
        values = np.load(d / f"{video}.npy", mmap_mode=mode)
        mask_path, times_path = d / f"{video}.mask.npy", d / f"{video}.times.npy"
        return StoredFeatures(
            values=values,
            mask=np.load(mask_path) if mask_path.is_file() else None,
            times=np.load(times_path) if times_path.is_file() else None,
            rate_hz=self.manifest(key).get("rate_hz"),
        )
