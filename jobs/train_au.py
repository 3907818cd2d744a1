r"""Train one action-unit trial (a Ray Train TorchTrainer) and print its mean F1 over the 12
units (each at 0.5; the search's ensemble tunes a threshold per unit).

    python jobs/train_au.py [--data ROOT] [--tiny] --model transformer \
        --features mobilenetv3 [--mode frozen|finetune] [--workers 2]

frozen: backbone features from the feature store (fast, what the search uses). finetune: the
backbone is trained end to end; Ray Data decodes and augments the face images and streams them
to the workers. Without --data: the embedded corpus with tiny backbones.
"""

from __future__ import annotations

import sys

from abaw_ray.train.job import run_train_job, train_parser


def main(argv: list[str] | None = None) -> int:
    return run_train_job(train_parser("au", __doc__, "transformer").parse_args(argv), "au")


if __name__ == "__main__":
    sys.exit(main())
