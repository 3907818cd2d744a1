"""Does the search's data plane fit the real corpus? A synthetic feature store with the real
Aff-Wild2 VA geometry (594 videos, lengths drawn like Aff-Wild2's from a few hundred to 54,000
frames, about 2.9M frames in all, 30 fps; 356 training, 76 validation, 162 test videos), the
paper's features at their real dims and rates (CLIP-L 768 and EVA02-L 1024 per frame, WavLM-L
1024 and Whisper-L 1280 at 50 Hz, float16), at ``--fraction`` of the videos.

It runs the search job's preparation (the feature bank of ``search_spaces/va.yaml``'s
extractors and alignments, put in the object store) and one trial's data loading on a local
Ray instance, and prints: the driver's peak RSS, the object-store bytes, the bytes one trial
fetches and the preparation wall time, at the fraction and extrapolated to the full corpus
(linear in frames; RSS as the process's baseline plus the rest scaled). The median of
``--repeats`` preparations (at least 3) is the time; the memory is the run's peak.

    python bench/scale.py [--fraction 0.03125] [--repeats 3]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import ray

from abaw_ray.data.corpus import Corpus, Video
from abaw_ray.data.labels import FrameLabels
from abaw_ray.data.media import MediaInfo
from abaw_ray.features.registry import get_spec
from abaw_ray.features.store import FeatureStore
from abaw_ray.train.data import build_bank
from abaw_ray.tune.space import load_search_space

REPO = Path(__file__).resolve().parents[1]
VIDEOS = {"train": 356, "val": 76, "test": 162}  # ABAW VA: 594 videos
FRAMES = 2_900_000  # about, over all of them
FPS = 30.0
LONGEST = 54_000


def video_lengths(count: int, rng: np.random.Generator) -> np.ndarray:
    """Lengths like Aff-Wild2's: log-normal, a few hundred to 54,000 frames, scaled so that
    594 videos hold about 2.9M frames."""
    raw = np.clip(rng.lognormal(mean=8.2, sigma=0.9, size=count), 300, LONGEST)
    return np.clip(raw * (FRAMES / 594) / np.exp(8.2 + 0.9**2 / 2), 300, LONGEST).astype(int)


def synthetic_corpus(root: Path, fraction: float, seed: int) -> Corpus:
    rng = np.random.default_rng(seed)
    splits, videos, labels = {}, {}, {}
    for split, total in VIDEOS.items():
        names = [f"{split}{i:04d}" for i in range(max(1, round(total * fraction)))]
        splits[split] = tuple(names)
        for name, n in zip(names, video_lengths(len(names), rng)):
            media = MediaInfo(root / f"{name}.mp4", FPS, int(n), n / FPS, True, 16_000)
            videos[name] = Video(name, None, np.arange(1, n + 1), 5, media)
            if split != "test":
                values = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
                labels[name] = FrameLabels(
                    "va", name, root / f"{name}.txt", values, np.ones(n, bool)
                )
    return Corpus(root, videos, {"va": splits}, {"va": labels, "expr": {}}, {}, {})


def write_store(store: FeatureStore, corpus: Corpus, names: list[str], seed: int) -> int:
    """Random float16 features of every video, written one video at a time; bytes written."""
    rng = np.random.default_rng(seed)
    written = 0
    for name in names:
        spec = get_spec(name)
        key = store.open(spec, tiny=False, weights="synthetic (bench/scale.py)")
        for video in corpus.videos:
            n = corpus.num_frames(video)
            if spec.modality == "visual":
                values = rng.standard_normal((n, spec.dim), np.float32)
                store.write(key, video, values, mask=np.ones(n, bool))
            else:
                rows = int(n / FPS * spec.rate_hz)
                values = rng.standard_normal((rows, spec.dim), np.float32)
                store.write(key, video, values, times=np.arange(rows) / spec.rate_hz)
            written += values.shape[0] * spec.dim * 2
    return written


def bank_bytes(bank, variants: set[str] | None = None) -> int:
    """Bytes of the bank's arrays (of ``variants`` only, if given)."""
    total = 0
    for variant, per_video in bank.frames.items():
        if variants is None or variant in variants:
            total += sum(a.nbytes for a in per_video.values())
    for key, per_video in bank.native.items():
        if variants is None or f"{key}|native" in variants:
            total += sum(a.nbytes for a in per_video.values())
            total += sum(a.nbytes for a in bank.positions[key].values())
    return total


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--fraction", type=float, default=1 / 32, help="of the 594 videos")
    p.add_argument("--repeats", type=int, default=3, help="preparations timed (at least 3)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.repeats < 3:
        p.error("--repeats must be at least 3 (the time printed is a median)")
    space = load_search_space(REPO / "search_spaces" / "va.yaml")
    alignments = next((q.args for q in space.parameters if q.name == "alignment"), ("interp",))
    names = list(space.extractors)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = synthetic_corpus(Path(tmp), args.fraction, args.seed)
        frames = sum(corpus.num_frames(v) for v in corpus.videos)
        store = FeatureStore(Path(tmp) / "features")
        stored = write_store(store, corpus, names, args.seed)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        baseline = peak_rss()
        times, refs = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            bank = build_bank(corpus, store, names, "va", alignments)
            refs.append(ray.put(bank))  # what prepare() does
            times.append(time.perf_counter() - start)
            put = bank_bytes(bank)
            del bank
            refs.clear()  # one bank at a time in the object store
        driver = peak_rss()
        # One trial of the first combination: what it needs, and what it fetches today.
        combo = space.combinations()[0].split("+")
        bank = build_bank(corpus, store, names, "va", alignments)
        needed = {bank.variant(k, "interp") for k in combo} | {f"{k}|native" for k in combo}
        trial_needs = bank_bytes(bank, needed)
        ref = ray.put(bank)
        del bank
        fetched = bank_bytes(ray.get(ref))  # the whole bank: every trial gets it all
        ray.shutdown()

    scale = FRAMES / frames
    gb = 1e9
    full_rss = baseline + (driver - baseline) * scale
    print(
        f"synthetic VA store: {len(corpus.videos)} videos, {frames} frames "
        f"(fraction {args.fraction:g}; x{scale:.1f} to the full corpus), features "
        f"{', '.join(names)}, alignments {', '.join(alignments)}"
    )
    print(
        f"  store on disk           : {stored / gb:7.2f} GB  -> full {stored * scale / gb:7.1f} GB"
    )
    print(f"  bank in the object store: {put / gb:7.2f} GB  -> full {put * scale / gb:7.1f} GB")
    print(
        f"  driver peak RSS         : {driver / gb:7.2f} GB  -> full {full_rss / gb:7.1f} GB "
        f"(baseline {baseline / gb:.2f} GB)"
    )
    print(
        f"  one trial ({'+'.join(combo)}): fetches {fetched / gb:.2f} GB, needs "
        f"{trial_needs / gb:.2f} GB -> full: fetches {fetched * scale / gb:.1f} GB, needs "
        f"{trial_needs * scale / gb:.1f} GB"
    )
    print(
        f"  preparation wall time   : {statistics.median(times):7.1f} s [{min(times):.1f}, "
        f"{max(times):.1f}] (median of {args.repeats}) -> full "
        f"{statistics.median(times) * scale / 60:.1f} min"
    )
    print(
        f"scale: full-corpus driver peak RSS {full_rss / gb:.1f} GB, trial fetch "
        f"{fetched * scale / gb:.1f} GB of {put * scale / gb:.1f} GB stored"
    )


if __name__ == "__main__":
    main()
