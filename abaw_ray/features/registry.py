"""The extractor registry: every pre-trained feature extractor by name, its settings as data.

Like timm's ``create_model``: callers name an extractor (``clip_large``, ``wavlm_large``) and
``create_extractor`` builds it; each family file registers a builder and the specs below say
which weights, preprocessing, output dim and rate each name means. Every name also has a tiny,
randomly initialised variant of the same architecture for tests and the embedded corpus.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from abaw_ray.affwild2 import FACE_SIZE

Modality = Literal["visual", "audio"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's (EVA02 was trained with it)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
GREY = (0.299, 0.587, 0.114)  # RGB -> grey weights (ITU-R 601; OpenCV's BGR2GRAY, PIL's "L")
TINY_INPUT_SIZE = FACE_SIZE  # the tiny test variants take the faces as they are, unresized
AUDIO_RATE = 16000
MODEL_FREE = "none (model-free descriptor)"


@dataclass(frozen=True)
class ExtractorSpec:
    """What a registry name means. ``source`` is a Hugging Face repo id or a timm model name;
    ``tiny`` holds the architecture overrides of the random test variant."""

    name: str
    family: str
    modality: Modality
    source: str | None
    dim: int
    tiny_dim: int
    version: str = "1"
    rate_hz: float | None = None  # audio: output frames per second; visual: one per video frame
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    batch_size: int = 64
    chunk_seconds: float = 20.0
    options: dict[str, Any] = field(default_factory=dict)
    tiny: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    @property
    def needs_weights(self) -> bool:
        return self.source is not None


@dataclass
class Extractor:
    """A built extractor. Visual: ``__call__(uint8 [B, H, W, 3]) -> float32 [B, dim]``.
    Audio: ``extract(float32 wave at 16 kHz) -> (float32 [N, dim], times [N] in seconds)``."""

    spec: ExtractorSpec
    module: torch.nn.Module | None
    dim: int
    weights: str  # which weights produced the features: recorded in the store's manifest
    forward: Callable[..., Any]
    input_size: int | None = None  # visual: the side length the model expects
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    autocast_dtype: torch.dtype | None = None

    @property
    def tiny(self) -> bool:
        return self.weights.startswith("tiny-random")

    @property
    def declared_dim(self) -> int:
        return self.spec.tiny_dim if self.tiny else self.spec.dim

    def to(self, device: str | torch.device) -> Extractor:
        self.device = torch.device(device)
        if self.module is not None:
            self.module.to(self.device)
            if self.device.type == "cuda" and self.spec.modality == "visual":
                self.module.to(memory_format=torch.channels_last)
                self.autocast_dtype = (
                    torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
                )
        return self

    def preprocess(self, images: np.ndarray) -> torch.Tensor:
        """uint8 [B, H, W, 3] -> normalised float [B, 3, S, S] on the extractor's device."""
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        size = self.input_size or self.spec.input_size
        if x.shape[-1] != size or x.shape[-2] != size:
            x = torch.nn.functional.interpolate(
                x, size=(size, size), mode="bilinear", align_corners=False, antialias=True
            )
        mean = torch.tensor(self.spec.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.spec.std, device=self.device).view(1, 3, 1, 1)
        x = (x - mean) / std
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = self.preprocess(images)
        if self.autocast_dtype is not None:
            with torch.autocast(self.device.type, dtype=self.autocast_dtype):
                y = self.forward(x)
        else:
            y = self.forward(x)
        return y.float().cpu().numpy()

    @torch.inference_mode()
    def extract(self, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.forward(wave)


Builder = Callable[[ExtractorSpec, bool, "Path | None"], Extractor]
Locator = Callable[[ExtractorSpec, "Path | None"], str]
_BUILDERS: dict[str, Builder] = {}
_LOCATORS: dict[str, Locator] = {}
EXTRACTORS: dict[str, ExtractorSpec] = {}


def register_family(family: str, locate: Locator | None = None) -> Callable[[Builder], Builder]:
    """Register a family's builder; ``locate`` finds its real weights without loading them
    (by default: the local folder, then the Hugging Face cache, as transformers loads)."""

    def deco(fn: Builder) -> Builder:
        _BUILDERS[family] = fn
        if locate is not None:
            _LOCATORS[family] = locate
        return fn

    return deco


def register(spec: ExtractorSpec) -> ExtractorSpec:
    if spec.name in EXTRACTORS:
        raise ValueError(f"extractor {spec.name} registered twice")
    EXTRACTORS[spec.name] = spec
    return spec


def list_extractors(modality: Modality | None = None) -> list[str]:
    return sorted(n for n, s in EXTRACTORS.items() if modality is None or s.modality == modality)


def get_spec(name: str) -> ExtractorSpec:
    if name not in EXTRACTORS:
        raise KeyError(f"unknown extractor {name!r}; known: {', '.join(sorted(EXTRACTORS))}")
    return EXTRACTORS[name]


def create_extractor(
    name: str, tiny: bool = False, weights_dir: str | Path | None = None
) -> Extractor:
    """Build ``name``. Real weights load offline from ``weights_dir/<name>`` or the Hugging Face
    cache; when they are missing this raises :class:`WeightsNotFoundError` saying what to
    download. It never falls back to random weights: that is ``tiny=True``, asked for."""
    spec = get_spec(name)
    return _BUILDERS[spec.family](spec, tiny, Path(weights_dir) if weights_dir else None)


def locate_weights(name: str, tiny: bool = False, weights_dir: str | Path | None = None) -> str:
    """The weights ``create_extractor`` would use, found without loading them (a cheap check
    a driver makes before starting workers); raises ``WeightsNotFoundError``."""
    from abaw_ray.features.weights import TINY_WEIGHTS, locate_transformers

    spec = get_spec(name)
    if not spec.needs_weights:
        return MODEL_FREE
    if tiny:
        return TINY_WEIGHTS
    wd = Path(weights_dir) if weights_dir else None
    if spec.family in _LOCATORS:
        return _LOCATORS[spec.family](spec, wd)
    return locate_transformers(spec.name, spec.source, wd)
