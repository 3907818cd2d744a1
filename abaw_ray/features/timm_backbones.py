"""timm image backbones: EVA02, ResNet-50, SE-ResNet-50, MobileNetV3, EfficientNetV2.

Features are timm's pre-logits (``num_classes=0``): for MobileNetV3-small that is the 1024-d
head the paper used. Real weights come from ``weights_dir/<name>/`` (a ``model.safetensors``
or ``pytorch_model.bin``) or from the Hugging Face cache entry named by timm's pretrained cfg.
"""

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
from abaw_ray.features.weights import (
    TINY_WEIGHTS,
    WeightsNotFoundError,
    local_dir,
    missing_message,
    tiny_init,
    weights_dirs,
)

_TINY_RESNET = dict(
    layers=(1, 1, 1, 1), channels=(8, 16, 32, 64), stem_width=8, input_size=TINY_INPUT_SIZE
)

for _spec in (
    ExtractorSpec(
        name="eva02_large",
        family="timm",
        modality="visual",
        source="eva02_large_patch14_224.mim_m38m",
        dim=1024,
        tiny_dim=64,
        input_size=224,
        mean=CLIP_MEAN,
        std=CLIP_STD,
        batch_size=128,
        tiny=dict(
            img_size=TINY_INPUT_SIZE,
            embed_dim=64,
            depth=2,
            num_heads=2,
            input_size=TINY_INPUT_SIZE,
        ),
        description="EVA02-L/14 (MIM, Merged-38M) pooled features",
    ),
    ExtractorSpec(
        name="resnet50",
        family="timm",
        modality="visual",
        source="resnet50.a1_in1k",
        dim=2048,
        tiny_dim=256,
        input_size=224,
        batch_size=256,
        tiny=_TINY_RESNET,
        description="ResNet-50 pooled features",
    ),
    ExtractorSpec(
        name="senet",
        family="timm",
        modality="visual",
        source="seresnet50.a1_in1k",
        dim=2048,
        tiny_dim=256,
        input_size=224,
        batch_size=256,
        tiny=_TINY_RESNET,
        description="SE-ResNet-50 pooled features",
    ),
    ExtractorSpec(
        name="mobilenetv3",
        family="timm",
        modality="visual",
        source="mobilenetv3_small_100.lamb_in1k",
        dim=1024,
        tiny_dim=1024,
        input_size=224,
        batch_size=512,
        tiny=dict(arch="mobilenetv3_small_050", input_size=TINY_INPUT_SIZE),
        description="MobileNetV3-small 1024-d pre-logits (the paper's EXPR backbone)",
    ),
    ExtractorSpec(
        name="efficientnetv2",
        family="timm",
        modality="visual",
        source="tf_efficientnetv2_s.in21k_ft_in1k",
        dim=1280,
        tiny_dim=320,
        input_size=300,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        batch_size=256,
        tiny=dict(channel_multiplier=0.25, depth_multiplier=0.25, input_size=TINY_INPUT_SIZE),
        description="EfficientNetV2-S pooled features",
    ),
):
    register(_spec)


def _local_checkpoint(name: str, weights_dir: Path | None) -> Path | None:
    folder = local_dir(name, weights_dir)
    if folder is None:
        return None
    for fname in ("model.safetensors", "pytorch_model.bin", "model.pth"):
        if (folder / fname).is_file():
            return folder / fname
    return None


def locate_timm(spec: ExtractorSpec, weights_dir: Path | None) -> str:
    """``file:<checkpoint>`` from ``weights_dir/<name>/`` or the Hugging Face cache."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    checkpoint = _local_checkpoint(spec.name, weights_dir)
    if checkpoint is not None:
        return f"file:{checkpoint}"
    hub_id = timm.models.get_pretrained_cfg(spec.source).hf_hub_id
    for fname in ("model.safetensors", "pytorch_model.bin"):
        cached = try_to_load_from_cache(hub_id, fname)
        if isinstance(cached, str):
            return f"file:{cached}"
    looked = [str(d / spec.name) for d in weights_dirs(weights_dir)]
    looked.append(f"Hugging Face cache for {hub_id}")
    raise WeightsNotFoundError(missing_message(spec.name, hub_id, weights_dir, looked))


@register_family("timm", locate=locate_timm)
def build_timm(spec: ExtractorSpec, tiny: bool, weights_dir: Path | None) -> Extractor:
    import timm

    arch, _, _tag = spec.source.partition(".")
    if tiny:
        kwargs = {k: v for k, v in spec.tiny.items() if k not in ("input_size", "arch")}
        with tiny_init():
            model = timm.create_model(
                spec.tiny.get("arch", arch), pretrained=False, num_classes=0, **kwargs
            )
        weights = TINY_WEIGHTS
    else:
        weights = locate_timm(spec, weights_dir)
        model = timm.create_model(
            spec.source,
            pretrained=True,
            num_classes=0,
            pretrained_cfg_overlay=dict(file=weights.split(":", 1)[1]),
        )
    model.eval()
    dim = model.head_hidden_size if getattr(model, "head_hidden_size", None) else model.num_features
    size = spec.tiny["input_size"] if tiny else model.pretrained_cfg["input_size"][-1]
    return Extractor(spec, model, int(dim), weights, model, input_size=int(size))
