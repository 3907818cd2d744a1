r"""The main job: corpus -> features -> Ray Tune search -> ensemble -> VA submission.

    python jobs/search_va.py [--data ROOT] [--output DIR] [--space FILE] [--num-samples N] [--tiny]
    ray job submit --working-dir . -- python jobs/search_va.py --data /data/affwild2 \
        --output /shared/abaw --gpus-per-trial 0.25

Without --data it runs on the embedded synthetic corpus. Every trial, the ensemble and the
submission are recorded in MLflow (sqlite:///OUTPUT/mlflow.db unless MLFLOW_TRACKING_URI is
set). A killed search continues with --resume.
"""

from __future__ import annotations

import sys

from abaw_ray.tune.job import run_search_job, search_parser


def main(argv: list[str] | None = None) -> int:
    return run_search_job(search_parser("va", __doc__).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
