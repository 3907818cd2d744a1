r"""Extract pre-trained features of an Aff-Wild2 corpus into the feature store, on Ray Data.

    python jobs/extract_features.py [--data ROOT] [--store DIR] [--extractors a,b] [--tiny]
    ray job submit --working-dir . -- python jobs/extract_features.py \
        --data /data/affwild2 --store /shared/features --extractors clip_large,wavlm_large

Without --data it runs on the embedded synthetic corpus (tiny extractors). A rerun skips the
videos already in the store; --force redoes them.
"""

from __future__ import annotations

import argparse
import sys
import time

from abaw_ray.data import load_corpus
from abaw_ray.data.corpus import preflight
from abaw_ray.errors import CorpusNotFoundError, InputFormatError
from abaw_ray.features.pipeline import ExtractionConfig, extract_features
from abaw_ray.features.registry import list_extractors
from abaw_ray.features.store import FeatureStore
from abaw_ray.features.weights import WeightsNotFoundError
from abaw_ray.fsutil import ensure_results_dir
from abaw_ray.runtime import add_corpus_flags, add_ray_flags, check_output_dir, job_on_ray
from abaw_ray.train.prepare import EMBEDDED_FEATURES, resolve_corpus


def extraction_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_corpus_flags(p)
    p.add_argument(
        "--extractors",
        default=None,
        help=f"comma-separated names from: {', '.join(list_extractors())} "
        f"(default on the embedded corpus: {','.join(EMBEDDED_FEATURES)})",
    )
    p.add_argument(
        "--force", action="store_true", help="redo videos already in the store (default: off)"
    )
    p.add_argument(
        "--no-denoise", action="store_true", help="skip spectral-gating denoising (default: off)"
    )
    p.add_argument(
        "--isolate-vocals",
        action="store_true",
        help="Hybrid Demucs vocal isolation before the audio models (default: off)",
    )
    p.add_argument(
        "--batch-size", type=int, help="frames per model call (default: the extractor's own)"
    )
    p.add_argument("--actors", type=int, help="extraction actors (default: one per GPU, else 1)")
    add_ray_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    p = extraction_parser()
    args = p.parse_args(argv)

    root, embedded = resolve_corpus(args.data, args.realistic)
    names = tuple(args.extractors.split(",")) if args.extractors else EMBEDDED_FEATURES
    if not embedded and args.extractors is None:
        p.error("--extractors is required with --data (e.g. clip_large,wavlm_large)")
    config = ExtractionConfig(
        extractors=names,
        tiny=args.tiny or embedded,
        weights_dir=args.weights_dir,
        force=args.force,
        denoise=not args.no_denoise,
        isolate_vocals=args.isolate_vocals,
        batch_size=args.batch_size,
        num_actors=args.actors,
    )
    try:
        preflight(root, None)
        corpus = load_corpus(root)
    except (CorpusNotFoundError, InputFormatError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    problem = check_output_dir(args.output)
    if problem is None and args.store is not None:
        problem = check_output_dir(args.store, "--store")
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    output = ensure_results_dir(args.output.resolve())
    store = ensure_results_dir(args.store.resolve() if args.store else output / "features")
    name = f"extract-{time.strftime('%Y%m%d-%H%M%S')}"
    with job_on_ray(args, "extraction", name, output) as console:
        try:
            report = extract_features(corpus, FeatureStore(store), config)
        except WeightsNotFoundError as err:
            print(f"error: {err}", file=console.err)
            return 2
        print(f"feature store {store} for {root}", file=console.out)
        print(report.summary(), file=console.out)
    return 1 if report.unfinished else 0


if __name__ == "__main__":
    sys.exit(main())
