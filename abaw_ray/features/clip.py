"""CLIP vision tower (transformers): the projected image embedding of each face."""

from __future__ import annotations

from pathlib import Path

from abaw_ray.features.registry import (
    CLIP_MEAN,
    CLIP_STD,
    TINY_INPUT_SIZE,
    Extractor,
    ExtractorSpec,
    register,
    register_family,
)
from abaw_ray.features.weights import TINY_WEIGHTS, load_transformers, tiny_init

register(
    ExtractorSpec(
        name="clip_large",
        family="clip",
        modality="visual",
        source="openai/clip-vit-large-patch14",
        dim=768,
        tiny_dim=24,
        input_size=224,
        mean=CLIP_MEAN,
        std=CLIP_STD,
        batch_size=256,
        tiny=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=TINY_INPUT_SIZE,
            patch_size=16,
            projection_dim=24,
            input_size=TINY_INPUT_SIZE,
        ),
        description="CLIP ViT-L/14 image embedding (projection output)",
    )
)


@register_family("clip")
def build_clip(spec: ExtractorSpec, tiny: bool, weights_dir: Path | None) -> Extractor:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    if tiny:
        cfg = {k: v for k, v in spec.tiny.items() if k != "input_size"}
        with tiny_init():
            model = CLIPVisionModelWithProjection(CLIPVisionConfig(**cfg))
        weights = TINY_WEIGHTS
    else:
        model, weights = load_transformers(
            spec.name, spec.source, weights_dir, CLIPVisionModelWithProjection.from_pretrained
        )
    model.eval()
    dim = model.config.projection_dim
    return Extractor(
        spec,
        model,
        dim,
        weights,
        lambda x: model(pixel_values=x).image_embeds,
        input_size=model.config.image_size,
    )
