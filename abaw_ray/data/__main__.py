"""``python -m abaw_ray.data check|synth``: check a corpus, or write the embedded one."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from abaw_ray.affwild2 import CHALLENGE_DIRS, SPLIT_DIRS
from abaw_ray.data.check import format_summary, summarize
from abaw_ray.data.corpus import load_corpus
from abaw_ray.data.synthetic import DEFAULT_VIDEOS, ensure_default_corpus, generate
from abaw_ray.errors import InputFormatError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m abaw_ray.data")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate a corpus and print what it holds")
    check.add_argument("--data", type=Path, help="Aff-Wild2 root (default: the embedded corpus)")
    check.add_argument("--json", action="store_true", help="print the summary as JSON")
    synth = sub.add_parser("synth", help="write the embedded synthetic corpus")
    synth.add_argument("--out", type=Path, required=True)
    synth.add_argument(
        "--videos",
        type=int,
        help=f"people (default: {DEFAULT_VIDEOS[False]}; {DEFAULT_VIDEOS[True]} with --realistic)",
    )
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument(
        "--realistic",
        action="store_true",
        help="subjects who differ, late labels, occluded/blurred/badly lit faces, sparse noisy "
        "speech, imbalanced expressions (default: off)",
    )
    args = parser.parse_args(argv)

    if args.command == "synth":
        corpus = generate(args.out, videos=args.videos, seed=args.seed, realistic=args.realistic)
        frames = sum(v.num_frames for v in corpus.videos)
        print(f"wrote {len(corpus.videos)} videos, {frames} frames to {args.out}")
        return 0

    root = args.data or ensure_default_corpus()
    try:
        summary = summarize(load_corpus(root))
    except (InputFormatError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    labelled = [
        task
        for task, splits in summary["splits"].items()
        if splits.get("train", {}).get("valid_frames") and splits.get("val", {}).get("valid_frames")
    ]
    if not labelled:
        challenges = " or ".join(names[0] for names in CHALLENGE_DIRS.values())
        print(
            f"error: {root}: no task has labelled training and validation videos "
            f"({challenges}, {' and '.join(SPLIT_DIRS.values())})",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
