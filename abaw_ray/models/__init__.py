"""The fusion models: a registry of families, each mapping modality sequences to per-frame
VA or EXPR outputs. Importing this package registers every family (as timm does)."""

from abaw_ray.models import (  # noqa: F401
    attention,
    expr_transformer,
    frame_mlp,
    mctn,
    mfn,
    tcn,
    transformer,
)
from abaw_ray.models.registry import (
    OUTPUT_DIMS,
    FusionModel,
    Setting,
    create_model,
    list_models,
    model_settings,
)

__all__ = [
    "OUTPUT_DIMS",
    "FusionModel",
    "Setting",
    "create_model",
    "list_models",
    "model_settings",
]
