"""Is the embedded corpus learnable from what the default run extracts? A ridge probe per
extractor (val CCC on the official validation videos) against a shifted-label control.

The real probe does not depend on the seed; the control (labels and their validity masks
shifted together, by a seeded offset per video) does, so it is the median over ``--seeds``
seeds (0, 1, ...), with its [min, max] alongside.

    python bench/probe_features.py [--extractors face_hog,face_pixels,...] [--seeds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import ray

from abaw_ray.data import load_corpus
from abaw_ray.data.synthetic import ensure_default_corpus
from abaw_ray.features.pipeline import ExtractionConfig, extract_features
from abaw_ray.features.probe import probe_va
from abaw_ray.features.store import FeatureStore, store_key
from abaw_ray.runtime import init_ray


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument(
        "--extractors",
        default="face_hog,face_pixels,resnet50,clip_large,logmel,wavlm_large,whisper_v3",
    )
    p.add_argument("--store", type=Path, help="reuse a store (default: a temporary one)")
    p.add_argument("--seeds", type=int, default=3, help="control seeds (at least 3)")
    args = p.parse_args()
    if args.seeds < 3:
        p.error("--seeds must be at least 3 (the figure printed is a median)")
    names = args.extractors.split(",")
    corpus = load_corpus(ensure_default_corpus())
    with tempfile.TemporaryDirectory() as tmp:
        store = FeatureStore(args.store or Path(tmp))
        init_ray(num_cpus=2)
        ray.data.DataContext.get_current().enable_progress_bars = False
        extract_features(corpus, store, ExtractionConfig(extractors=tuple(names), tiny=True))
        ray.shutdown()
        control_head = f"control (median of {args.seeds} seeds)"
        print(f"{'features (tiny variants)':<34} {'val CCC':>8} {control_head:>30}")
        combos = [[n] for n in names] + [["face_hog", "logmel"]]
        for combo in combos:
            if not all(n in names for n in combo):
                continue
            keys = [store_key(n, tiny=True) for n in combo]
            runs = [probe_va(corpus, store, keys, seed=s) for s in range(args.seeds)]
            real = {round(r["val_ccc"], 9) for r in runs}
            if len(real) != 1:
                raise RuntimeError(f"the real probe of {keys} changed with the seed: {real}")
            control = [r["control_ccc"] for r in runs]
            spread = f"[{min(control):.3f}, {max(control):.3f}]"
            print(
                f"{'+'.join(keys):<34} {runs[0]['val_ccc']:>8.3f} "
                f"{statistics.median(control):>14.3f} {spread:>15}"
            )


if __name__ == "__main__":
    main()
