"""The features stage: pre-trained extractors by name, the audio front end, the feature store,
alignment of audio features to video frames, and the Ray Data extraction pipeline.
Importing this package registers every extractor family (as timm does)."""

from abaw_ray.features import (  # noqa: F401
    clip,
    descriptors,
    fer_cnn,
    opensmile_audio,
    timm_backbones,
    wavlm,
    whisper,
)
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
