"""Whisper encoder (transformers): frame-level encoder states at 50 Hz, not decoder tokens.

The encoder takes 30 s log-mel windows; each window's states are trimmed to the real audio it
held, so a 12 s clip gives 600 frames, not 1500.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from abaw_ray.features.registry import (
    AUDIO_RATE,
    Extractor,
    ExtractorSpec,
    register,
    register_family,
)
from abaw_ray.features.wavlm import chunked_frames
from abaw_ray.features.weights import TINY_WEIGHTS, load_transformers, tiny_init

WINDOW_SECONDS = 30.0
HOP = 320  # 10 ms mel hop x the encoder's stride-2 conv

for _name, _repo, _mels in (
    ("whisper_v2", "openai/whisper-large-v2", 80),
    ("whisper_v3", "openai/whisper-large-v3", 128),
):
    register(
        ExtractorSpec(
            name=_name,
            family="whisper",
            modality="audio",
            source=_repo,
            dim=1280,
            tiny_dim=32,
            rate_hz=AUDIO_RATE / HOP,
            batch_size=4,
            chunk_seconds=WINDOW_SECONDS,
            options={"num_mel_bins": _mels},
            tiny=dict(
                d_model=32,
                encoder_layers=2,
                encoder_attention_heads=2,
                decoder_layers=1,
                decoder_attention_heads=2,
                encoder_ffn_dim=64,
                decoder_ffn_dim=64,
                num_mel_bins=_mels,
            ),
            description=f"Whisper large-{_name[-2:]} encoder states",
        )
    )


@register_family("whisper")
def build_whisper(spec: ExtractorSpec, tiny: bool, weights_dir: Path | None) -> Extractor:
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    if tiny:
        with tiny_init():
            encoder = WhisperEncoder(WhisperConfig(**spec.tiny))
        mel = WhisperFeatureExtractor(feature_size=spec.options["num_mel_bins"])
        weights = TINY_WEIGHTS
    else:
        model, weights = load_transformers(
            spec.name, spec.source, weights_dir, WhisperModel.from_pretrained
        )
        encoder = model.get_encoder()
        mel, _ = load_transformers(
            spec.name, spec.source, weights_dir, WhisperFeatureExtractor.from_pretrained
        )
    encoder.eval()
    chunk = int(WINDOW_SECONDS * AUDIO_RATE)
    extractor = Extractor(spec, encoder, encoder.config.d_model, weights, forward=None)

    def run(x: torch.Tensor) -> torch.Tensor:
        feats = mel(list(x.cpu().numpy()), sampling_rate=AUDIO_RATE, return_tensors="pt")
        return encoder(feats.input_features.to(extractor.device)).last_hidden_state

    def forward(wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return chunked_frames(
            wave,
            chunk,
            spec.batch_size,
            run,
            HOP,
            lambda n: math.ceil(n / HOP),
            HOP / 2 / AUDIO_RATE,
            extractor.device,
        )

    extractor.forward = forward
    return extractor
