"""WavLM (transformers): frame-level hidden states at 50 Hz, one layer or the sum of the last k.

Long recordings are cut into ``chunk_seconds`` pieces (attention cost grows with the square of
length) and batched; each output frame is stamped with the centre of its receptive field.
"""

from __future__ import annotations

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
from abaw_ray.features.weights import TINY_WEIGHTS, load_transformers, tiny_init

HOP = 320  # the conv front end's total stride: 20 ms at 16 kHz
RECEPTIVE_FIELD = 400

_TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=(32,) * 7,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
)

for _name, _layers, _desc in (
    ("wavlm_large", "last", "WavLM-Large last hidden layer"),
    ("wavlm_large_sum4", "sum_last_4", "WavLM-Large sum of the last 4 hidden layers"),
):
    register(
        ExtractorSpec(
            name=_name,
            family="wavlm",
            modality="audio",
            source="microsoft/wavlm-large",
            dim=1024,
            tiny_dim=32,
            rate_hz=AUDIO_RATE / HOP,
            batch_size=8,
            chunk_seconds=20.0,
            options={"layers": _layers},
            tiny=_TINY,
            description=_desc,
        )
    )


def frame_count(samples: int) -> int:
    return 0 if samples < RECEPTIVE_FIELD else (samples - RECEPTIVE_FIELD) // HOP + 1


def chunked_frames(
    wave: np.ndarray,
    chunk_samples: int,
    batch_size: int,
    run,
    hop: int,
    frames_of,
    offset_s: float,
    device: torch.device,
) -> tuple[np.ndarray, np.ndarray]:
    """Cut ``wave`` into equal chunks (the last zero-padded), run them in batches, keep each
    chunk's real frames, and stamp frame i of a chunk starting at sample s with
    ``(s + i * hop) / rate + offset_s``."""
    starts = list(range(0, max(len(wave), 1), chunk_samples))
    feats, times = [], []
    for b in range(0, len(starts), batch_size):
        group = starts[b : b + batch_size]
        batch = np.zeros((len(group), chunk_samples), np.float32)
        real = []
        for j, s in enumerate(group):
            piece = wave[s : s + chunk_samples]
            batch[j, : len(piece)] = piece
            real.append(frames_of(len(piece)))
        out = run(torch.from_numpy(batch).to(device))
        for j, s in enumerate(group):
            n = min(real[j], out.shape[1])
            feats.append(out[j, :n].float().cpu().numpy())
            times.append((s + np.arange(n) * hop) / AUDIO_RATE + offset_s)
    return np.concatenate(feats), np.concatenate(times)


@register_family("wavlm")
def build_wavlm(spec: ExtractorSpec, tiny: bool, weights_dir: Path | None) -> Extractor:
    from transformers import WavLMConfig, WavLMModel

    if tiny:
        with tiny_init():
            model = WavLMModel(WavLMConfig(**spec.tiny))
        weights = TINY_WEIGHTS
    else:
        model, weights = load_transformers(
            spec.name, spec.source, weights_dir, WavLMModel.from_pretrained
        )
    model.eval()
    layers = spec.options["layers"]
    k = int(layers.rsplit("_", 1)[1]) if layers.startswith("sum_last_") else 0
    chunk = int(spec.chunk_seconds * AUDIO_RATE)

    def run(x: torch.Tensor) -> torch.Tensor:
        # wavlm-large was trained on zero-mean, unit-variance input.
        x = (x - x.mean(1, keepdim=True)) / (x.std(1, keepdim=True) + 1e-7)
        out = model(x, output_hidden_states=k > 0)
        if k:
            return torch.stack(out.hidden_states[-k:]).sum(0)
        return out.last_hidden_state

    extractor = Extractor(spec, model, model.config.hidden_size, weights, forward=None)

    def forward(wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(wave) < RECEPTIVE_FIELD:
            wave = np.pad(wave, (0, RECEPTIVE_FIELD - len(wave)))
        return chunked_frames(
            wave,
            chunk,
            spec.batch_size,
            run,
            HOP,
            frame_count,
            RECEPTIVE_FIELD / 2 / AUDIO_RATE,
            extractor.device,
        )

    extractor.forward = forward
    return extractor
