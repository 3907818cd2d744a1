r"""Train one VA trial (a Ray Train TorchTrainer) and print its scores.

    python jobs/train_va.py [--data ROOT] [--tiny] --model mfn \
        --features clip_large,wavlm_large [--workers 2]

Without --data: the embedded corpus with its tiny/model-free features. Missing features are
extracted first. --shift-labels trains the control (labels shifted within each training
video) to show what a model learns from nothing.
"""

from __future__ import annotations

import sys

from abaw_ray.train.job import run_train_job, train_parser


def main(argv: list[str] | None = None) -> int:
    return run_train_job(train_parser("va", __doc__, "mfn").parse_args(argv), "va")


if __name__ == "__main__":
    sys.exit(main())
