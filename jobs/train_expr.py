r"""Train one expression trial (a Ray Train TorchTrainer) and print its macro F1.

    python jobs/train_expr.py [--data ROOT] [--tiny] --model expr_transformer \
        --features mobilenetv3 [--mode frozen|finetune] [--workers 2]

frozen: backbone features from the feature store (fast, what the search uses). finetune: the
backbone is trained end to end; Ray Data decodes and augments the face images and streams them
to the workers. Without --data: the embedded corpus with tiny backbones.
"""

from __future__ import annotations

import sys

from abaw_ray.train.job import run_train_job, train_parser


def main(argv: list[str] | None = None) -> int:
    return run_train_job(train_parser("expr", __doc__, "expr_transformer").parse_args(argv), "expr")


if __name__ == "__main__":
    sys.exit(main())
