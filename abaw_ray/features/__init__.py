"""The features stage: pre-trained extractors by name, the audio front end, the feature store,
alignment of audio features to video frames, and the Ray Data extraction pipeline."""

from abaw_ray.features.registry import (
    EXTRACTORS,
    Extractor,
    ExtractorSpec,
    create_extractor,
    get_spec,
    list_extractors,
)
from abaw_ray.features.weights import WeightsNotFoundError

__all__ = [
    "EXTRACTORS",
    "Extractor",
    "ExtractorSpec",
    "WeightsNotFoundError",
    "create_extractor",
    "get_spec",
    "list_extractors",
]
