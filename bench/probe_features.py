"""Is the embedded corpus learnable from what the default run extracts? A ridge probe per
extractor (val CCC on the official validation videos) against a shifted-label control.

    python bench/probe_features.py [--extractors face_hog,face_pixels,resnet50,logmel,wavlm_large]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import ray

from abaw_ray.data import load_corpus
from abaw_ray.data.synthetic import ensure_default_corpus
from abaw_ray.features.pipeline import ExtractionConfig, extract_features
from abaw_ray.features.probe import probe_va
from abaw_ray.features.store import FeatureStore, store_key


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument(
        "--extractors",
        default="face_hog,face_pixels,resnet50,clip_large,logmel,wavlm_large,whisper_v3",
    )
    p.add_argument("--store", type=Path, help="reuse a store (default: a temporary one)")
    args = p.parse_args()
    names = args.extractors.split(",")
    corpus = load_corpus(ensure_default_corpus())
    with tempfile.TemporaryDirectory() as tmp:
        store = FeatureStore(args.store or Path(tmp))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        extract_features(corpus, store, ExtractionConfig(extractors=tuple(names), tiny=True))
        ray.shutdown()
        print(f"{'features (tiny variants)':<34} {'val CCC':>8} {'control':>8}")
        combos = [[n] for n in names] + [["face_hog", "logmel"]]
        for combo in combos:
            if not all(n in names for n in combo):
                continue
            keys = [store_key(n, tiny=True) for n in combo]
            r = probe_va(corpus, store, keys)
            print(f"{'+'.join(keys):<34} {r['val_ccc']:>8.3f} {r['control_ccc']:>8.3f}")


if __name__ == "__main__":
    main()
