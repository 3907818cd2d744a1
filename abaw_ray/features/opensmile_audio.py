"""openSMILE low-level descriptors: eGeMAPS v02 (25 LLDs) and ComParE 2016 (65 LLDs).

The affective-computing standard hand-crafted audio features, computed by the ``opensmile``
wheel (its C++ extractor and the feature-set configurations ship inside it: nothing to fetch).
Model-free, so their real and "tiny" variants are the same extractor.

Frames. openSMILE cuts 20 ms (energy, spectral, MFCC) and 60 ms (pitch, voice quality,
formants) windows every 10 ms, both starting at the same sample (``frameCenterSpecial=left``),
and writes one row per 10 ms step. The wave is zero-padded by 30 ms on both sides, so row
``i`` is stamped ``i * 10 ms``: the centre of its 60 ms window (its 20 ms window is centred
20 ms earlier, openSMILE's own row alignment, kept so values equal openSMILE's). Rows whose
stamp lies past the end of the audio are dropped: D seconds give ``floor(100 D) + 1`` rows,
as ``logmel`` does.

Values. openSMILE's own values, float32, with two exceptions so that the feature store's
float16 arrays hold them: ComParE's ``spectralVariance`` (Hz², up to ~1e7 on noise) and
``spectralKurtosis`` (up to ~1e4 on pure tones) are log-compressed as ``sign(x) log1p|x|``,
and anything else is clipped to +-60000. NaN (openSMILE fills a segment shorter than its
window with NaN) becomes 0.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from abaw_ray.features.registry import (
    AUDIO_RATE,
    MODEL_FREE,
    Extractor,
    ExtractorSpec,
    register,
    register_family,
)

HOP_SECONDS = 0.010
LONG_WINDOW_SECONDS = 0.060  # the pitch / voice-quality window, the longest openSMILE uses here
PAD = int(LONG_WINDOW_SECONDS / 2 * AUDIO_RATE)  # 30 ms each side: row i centred at i * hop
FLOAT16_SAFE = 60000.0
LOG_COMPRESSED = ("pcm_fftMag_spectralVariance_sma", "pcm_fftMag_spectralKurtosis_sma")
EGEMAPS_DIM = 25
COMPARE_DIM = 65

register(
    ExtractorSpec(
        name="egemaps",
        family="opensmile",
        modality="audio",
        source=None,
        dim=EGEMAPS_DIM,
        tiny_dim=EGEMAPS_DIM,
        rate_hz=1.0 / HOP_SECONDS,
        options={"feature_set": "eGeMAPSv02"},
        description="openSMILE eGeMAPS v02 low-level descriptors: loudness, spectral balance, "
        "MFCC 1-4, F0 (semitones from 27.5 Hz), jitter, shimmer, HNR, formants F1-F3 (100 Hz)",
    )
)
register(
    ExtractorSpec(
        name="compare",
        family="opensmile",
        modality="audio",
        source=None,
        dim=COMPARE_DIM,
        tiny_dim=COMPARE_DIM,
        rate_hz=1.0 / HOP_SECONDS,
        options={"feature_set": "ComParE_2016"},
        description="openSMILE ComParE 2016 low-level descriptors: F0, voicing, jitter, "
        "shimmer, HNR, RMS energy, ZCR, 26 RASTA auditory bands, spectral shape, MFCC 1-14 "
        "(100 Hz; spectral variance and kurtosis log-compressed)",
    )
)


@cache
def _smile(feature_set: str) -> Any:
    import opensmile

    return opensmile.Smile(
        feature_set=getattr(opensmile.FeatureSet, feature_set),
        feature_level=opensmile.FeatureLevel.LowLevelDescriptors,
    )


def feature_names(name: str) -> list[str]:
    """The column names of ``name``'s output (``log1p(...)`` marks a log-compressed one)."""
    from abaw_ray.features.registry import get_spec

    smile = _smile(get_spec(name).options["feature_set"])
    return [f"log1p({c})" if c in LOG_COMPRESSED else c for c in smile.feature_names]


def smile_llds(feature_set: str, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``wave`` (mono, 16 kHz) -> (float32 [N, dim], frame-centre times [N] in seconds)."""
    smile = _smile(feature_set)
    x = np.nan_to_num(np.asarray(wave, dtype=np.float32).ravel())
    duration = x.size / AUDIO_RATE
    x = np.pad(x, (PAD, PAD))
    values = np.asarray(smile(x, AUDIO_RATE)[0].T, dtype=np.float32)  # [frames, features]
    times = np.arange(len(values)) * HOP_SECONDS
    keep = max(1, int(np.searchsorted(times, duration + 1e-9, side="right")))
    values, times = values[:keep], times[:keep]
    names = list(smile.feature_names)
    for column in LOG_COMPRESSED:
        if column in names:
            j = names.index(column)
            values[:, j] = np.sign(values[:, j]) * np.log1p(np.abs(values[:, j]))
    values = np.nan_to_num(values, nan=0.0, posinf=FLOAT16_SAFE, neginf=-FLOAT16_SAFE)
    return np.clip(values, -FLOAT16_SAFE, FLOAT16_SAFE), times


@register_family("opensmile")
def build_opensmile(spec: ExtractorSpec, tiny: bool, weights_dir: Path | None) -> Extractor:
    feature_set = spec.options["feature_set"]
    smile = _smile(feature_set)  # fail here, at build time, if opensmile is missing
    if smile.num_features != spec.dim:
        raise RuntimeError(
            f"{spec.name}: opensmile {feature_set} gives {smile.num_features} LLDs, "
            f"the registry says {spec.dim}"
        )

    def forward(wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return smile_llds(feature_set, wave)

    return Extractor(spec, None, spec.dim, MODEL_FREE, forward)
