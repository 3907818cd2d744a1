"""Does the search's data plane fit the real corpus? A synthetic feature store with the real
Aff-Wild2 VA geometry (594 videos, lengths drawn like Aff-Wild2's from a few hundred to 54,000
frames, about 2.9M frames in all, 30 fps; 356 training, 76 validation, 162 test videos), the
paper's features at their real dims and rates (CLIP-L 768 and EVA02-L 1024 per frame, WavLM-L
1024 and Whisper-L 1280 at 50 Hz, float16), at ``--fraction`` of the videos, written by Ray
tasks.

It runs the search job's preparation (``build_bank`` over ``search_spaces/va.yaml``'s
extractors and alignments: one Ray task per feature variant builds its shard in the object
store) and one trial's data loading (a Ray task that fetches its combination, as a trial does)
on a local Ray instance, and prints: the driver's peak RSS, the object-store bytes, the bytes
one trial fetched, the private memory peak of the task that streams the largest variant, and the
preparation wall time, at the fraction and extrapolated to the full corpus (linear in frames;
RSS as the process's baseline plus the rest scaled). The median of ``--repeats``
preparations (at least 3) is the time; the memory is the run's peak.

    python bench/scale.py [--fraction 0.03125] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import ray

from abaw_ray.data.corpus import Corpus, Video
from abaw_ray.data.labels import FrameLabels
from abaw_ray.data.media import MediaInfo
from abaw_ray.features.registry import get_spec
from abaw_ray.features.store import FeatureStore
from abaw_ray.runtime import init_ray
from abaw_ray.train.bank import SHARD_BYTES, FeatureBank, FeatureShard, build_bank, build_shards
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


def write_features(store_root: str, name: str, lengths: dict[str, int], seed: int) -> int:
    """Random float16 features of ``name`` for every video, one video at a time (a Ray task's
    body); bytes written."""
    store = FeatureStore(store_root)
    spec = get_spec(name)
    key = store.open(spec, tiny=False, weights="synthetic (bench/scale.py)")
    rng = np.random.default_rng(seed)
    written = 0
    for video, n in lengths.items():
        if spec.modality == "visual":
            values = rng.standard_normal((n, spec.dim), np.float32)
            store.write(key, video, values, mask=np.ones(n, bool))
        else:
            rows = int(n / FPS * spec.rate_hz)
            values = rng.standard_normal((rows, spec.dim), np.float32)
            store.write(key, video, values, times=np.arange(rows) / spec.rate_hz)
        written += values.shape[0] * spec.dim * 2
    return written


def shard_bytes(shard: FeatureShard) -> int:
    return shard.values.nbytes + (shard.positions.nbytes if shard.positions is not None else 0)


def trial_fetch(index: FeatureBank, keys: list[str], alignment: str) -> int:
    """What a trial does first (``train_loop_per_worker``): fetch its combination's shards;
    the bytes it got."""
    bank = index.fetch(index.variants_for(keys, alignment))
    arrays = [*bank.frames.values(), *bank.native.values(), *bank.positions.values()]
    return sum(a.nbytes for per_video in arrays for a in per_video.values())


def shard_task_peak(corpus, store_root: str, variant: str, bank: FeatureBank) -> tuple[int, int]:
    """(private memory before, its peak while) a worker streams ``variant``'s shards into the
    object store, as ``build_bank``'s tasks do. Private memory is ``RssAnon``, sampled every
    5 ms: the object store's shared pages the worker writes are counted with the store."""
    before = status_bytes("RssAnon")
    peak, done = [before], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], status_bytes("RssAnon"))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    videos, train = list(bank.num_frames), bank.splits["train"]
    for item in build_shards(corpus, store_root, variant, videos, train):
        ray.put(item)  # what yielding it does: a copy into the object store
        del item  # as the streaming task drops what it yielded
    done.set()
    sampler.join()
    return before, peak[0]


def status_bytes(field: str) -> int:
    """A size from this process's ``/proc/self/status`` (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status (bench/scale.py measures on Linux)")


def peak_rss() -> int:
    """This process's peak resident set (``VmHWM``: unlike ``ru_maxrss``, it starts afresh at
    exec, so it is this process's own)."""
    return status_bytes("VmHWM")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--fraction", type=float, default=1 / 32, help="of the 594 videos")
    p.add_argument("--repeats", type=int, default=3, help="preparations timed (at least 3)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.repeats < 3:
        p.error("--repeats must be at least 3 (the time printed is a median)")
    space = load_search_space(REPO / "search_spaces" / "va.yaml")
    alignments = space.alignments()
    names = list(space.extractors)
    init_ray(num_cpus=2)
    baseline = peak_rss()  # the process with Ray and the project imported, before any data
    try:
        with tempfile.TemporaryDirectory() as tmp:
            corpus = synthetic_corpus(Path(tmp), args.fraction, args.seed)
            lengths = {v: corpus.num_frames(v) for v in corpus.videos}
            frames = sum(lengths.values())
            store = FeatureStore(Path(tmp) / "features")
            root = str(store.root)
            writer = ray.remote(write_features)
            stored = sum(
                ray.get(
                    [writer.remote(root, n, lengths, args.seed + i) for i, n in enumerate(names)]
                )
            )
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                bank = build_bank(corpus, store, names, "va", alignments)
                times.append(time.perf_counter() - start)
                sizer = ray.remote(shard_bytes)
                in_store = {
                    x: sum(ray.get([sizer.remote(r) for r in refs]))
                    for x, refs in bank.shards.items()
                }
                count = sum(len(refs) for refs in bank.shards.values())
                del bank  # one bank at a time in the object store
            bank = build_bank(corpus, store, names, "va", alignments)
            driver = peak_rss()
            combo = space.combinations()[0].split("+")
            fetched = ray.get(ray.remote(trial_fetch).remote(ray.put(bank), combo, "interp"))
            largest = max(in_store, key=in_store.get)
            task = ray.remote(shard_task_peak)
            worker_base, shard_peak = ray.get(task.remote(ray.put(corpus), root, largest, bank))
            del bank
    finally:
        ray.shutdown()

    put = sum(in_store.values())
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
    print(
        f"  shards in object store  : {put / gb:7.2f} GB  -> full {put * scale / gb:7.1f} GB "
        f"({len(in_store)} variants in {count} shards of <= {SHARD_BYTES / 2**20:.0f} MiB or one "
        f"video; largest variant {largest}: {in_store[largest] * scale / gb:.1f} GB full)"
    )
    print(
        f"  driver peak RSS         : {driver / gb:7.2f} GB  -> full {full_rss / gb:7.2f} GB "
        f"(baseline {baseline / gb:.2f} GB)"
    )
    print(
        f"  one trial ({'+'.join(combo)}, interp): fetches {fetched / gb:.2f} GB -> full "
        f"{fetched * scale / gb:.1f} GB"
    )
    print(
        f"  shard task private peak : {(shard_peak - worker_base) / gb:7.2f} GB above its "
        f"{worker_base / gb:.2f} GB before (streams {largest}: one shard and one video's "
        f"work at a time, whatever the corpus size)"
    )
    print(
        f"  preparation wall time   : {statistics.median(times):7.1f} s [{min(times):.1f}, "
        f"{max(times):.1f}] (median of {args.repeats}) -> full "
        f"{statistics.median(times) * scale / 60:.1f} min at these 2 CPUs"
    )
    print(
        f"scale: full-corpus driver peak RSS {full_rss / gb:.2f} GB, trial fetch "
        f"{fetched * scale / gb:.1f} GB of {put * scale / gb:.1f} GB stored"
    )


if __name__ == "__main__":
    main()
