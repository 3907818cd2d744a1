r"""The expression job: corpus -> features -> Ray Tune search -> ensemble -> EXPR submission.

    python jobs/search_expr.py [--data ROOT] [--output DIR] [--space FILE] [--num-samples N]
    ray job submit --working-dir . -- python jobs/search_expr.py --data /data/affwild2 \
        --output /shared/abaw --gpus-per-trial 0.25 --space search_spaces/expr.yaml

Without --data it runs on the embedded synthetic corpus. Every trial, the ensemble and the
submission are recorded in MLflow (sqlite:///OUTPUT/mlflow.db unless MLFLOW_TRACKING_URI is
set). A killed search continues with --resume.
"""

from __future__ import annotations

import sys

from abaw_ray.tune.job import run_search_job, search_parser


def main(argv: list[str] | None = None) -> int:
    return run_search_job(search_parser("expr", __doc__).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
