r"""The action-unit job: corpus -> features -> Ray Tune search -> ensemble (per-unit thresholds
chosen on the selection videos) -> AU submission.

    python jobs/search_au.py [--data ROOT] [--output DIR] [--space FILE] [--num-samples N]
    ray job submit --working-dir . -- python jobs/search_au.py --data /data/affwild2 \
        --output /shared/abaw --gpus-per-trial 0.25 --space search_spaces/au.yaml

Without --data it runs on the embedded synthetic corpus. Every trial, the ensemble and the
submission are recorded in MLflow (sqlite:///OUTPUT/mlflow.db unless MLFLOW_TRACKING_URI is
set). A killed search continues with --resume.
"""

from __future__ import annotations

import sys

from abaw_ray.tune.job import run_search_job, search_parser


def main(argv: list[str] | None = None) -> int:
    return run_search_job(search_parser("au", __doc__).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
