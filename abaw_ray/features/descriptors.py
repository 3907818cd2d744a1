"""Model-free descriptors, the classic AVEC-style baselines: HOG and pixels for faces, log-mel
energies with pitch for audio. No weights, so their "tiny" and real variants are the same, and
they carry signal where randomly initialised tiny networks carry little.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from abaw_ray.affwild2 import FACE_SIZE
from abaw_ray.features.registry import (
    AUDIO_RATE,
    GREY,
    MODEL_FREE,
    Extractor,
    ExtractorSpec,
    register,
    register_family,
)

HOG_CELL = 16
HOG_BINS = 9
PIXELS = 16
MEL_BANDS = 64
MEL_HOP = 160  # 10 ms
PITCH_WINDOW = 640  # 40 ms: two periods of a 50 Hz voice
PITCH_RANGE_HZ = (60.0, 500.0)

_FACE = dict(
    family="descriptors",
    modality="visual",
    source=None,
    input_size=FACE_SIZE,  # the faces as they are
    mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),
    batch_size=256,
)
register(
    ExtractorSpec(
        name="face_hog",
        dim=(FACE_SIZE // HOG_CELL) ** 2 * HOG_BINS,
        tiny_dim=(FACE_SIZE // HOG_CELL) ** 2 * HOG_BINS,
        description="HOG, 16-px cells, 9 unsigned orientations, block-normalised",
        **_FACE,
    )
)
register(
    ExtractorSpec(
        name="face_pixels",
        dim=PIXELS * PIXELS,
        tiny_dim=PIXELS * PIXELS,
        description="16x16 grey pixels, standardised per face",
        **_FACE,
    )
)
register(
    ExtractorSpec(
        name="logmel",
        family="descriptors",
        modality="audio",
        source=None,
        dim=MEL_BANDS + 3,
        tiny_dim=MEL_BANDS + 3,
        rate_hz=AUDIO_RATE / MEL_HOP,
        chunk_seconds=60.0,
        description="64 log-mel energies, log energy, log pitch, voicing (100 Hz)",
    )
)


def _grey(x: torch.Tensor) -> torch.Tensor:
    w = x.new_tensor(GREY).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def hog(x: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] -> [B, cells * 9]; each cell normalised by its 3x3 neighbourhood."""
    g = _grey(x)
    kx = g.new_tensor([[-1.0, 0.0, 1.0]]).view(1, 1, 1, 3)
    gx = F.conv2d(F.pad(g, (1, 1, 0, 0), mode="replicate"), kx)
    gy = F.conv2d(F.pad(g, (0, 0, 1, 1), mode="replicate"), kx.transpose(2, 3))
    mag = torch.sqrt(gx**2 + gy**2)
    angle = torch.atan2(gy, gx) % math.pi
    pos = angle / math.pi * HOG_BINS
    lo = pos.floor().long() % HOG_BINS
    frac = pos - pos.floor()
    bins = torch.zeros(g.shape[0], HOG_BINS, *g.shape[2:], device=x.device)
    bins.scatter_add_(1, lo, mag * (1 - frac))
    bins.scatter_add_(1, (lo + 1) % HOG_BINS, mag * frac)
    cells = F.avg_pool2d(bins, HOG_CELL) * HOG_CELL**2
    energy = F.avg_pool2d(
        cells.pow(2).sum(1, keepdim=True), 3, stride=1, padding=1, count_include_pad=False
    )
    cells = cells / torch.sqrt(energy * HOG_BINS + 1e-6)
    return cells.clamp(max=0.2 * 3).flatten(1)


def face_pixels(x: torch.Tensor) -> torch.Tensor:
    small = F.interpolate(_grey(x), size=(PIXELS, PIXELS), mode="area").flatten(1)
    return (small - small.mean(1, keepdim=True)) / (small.std(1, keepdim=True) + 1e-6)


def logmel(wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[N, 67] at 100 Hz and frame-centre times: log-mel, log energy, log f0, voicing."""
    import torchaudio.transforms as T

    x = torch.from_numpy(np.asarray(wave, dtype=np.float32))
    if x.numel() < PITCH_WINDOW:
        x = F.pad(x, (0, PITCH_WINDOW - x.numel()))
    mel = T.MelSpectrogram(
        AUDIO_RATE, n_fft=512, win_length=400, hop_length=MEL_HOP, n_mels=MEL_BANDS, center=True
    )(x)
    logm = torch.log(mel + 1e-6).T  # [N, 64]
    n = logm.shape[0]
    padded = F.pad(x, (PITCH_WINDOW // 2, PITCH_WINDOW // 2))
    frames = padded.unfold(0, PITCH_WINDOW, MEL_HOP)[:n]
    frames = frames - frames.mean(1, keepdim=True)
    energy = torch.log(frames.pow(2).mean(1) + 1e-8)
    spec = torch.fft.rfft(frames * torch.hann_window(PITCH_WINDOW), n=2 * PITCH_WINDOW)
    acf = torch.fft.irfft(spec.abs() ** 2)[:, :PITCH_WINDOW]
    lo = int(AUDIO_RATE / PITCH_RANGE_HZ[1])
    hi = int(AUDIO_RATE / PITCH_RANGE_HZ[0])
    peak, lag = acf[:, lo:hi].max(1)
    voicing = (peak / (acf[:, 0] + 1e-8)).clamp(0, 1)
    f0 = AUDIO_RATE / (lag + lo).float()
    feats = torch.cat([logm, energy[:, None], torch.log(f0)[:, None], voicing[:, None]], 1)
    if feats.shape[0] < n:
        feats = F.pad(feats, (0, 0, 0, n - feats.shape[0]))
    times = np.arange(n) * MEL_HOP / AUDIO_RATE
    return feats.numpy(), times


@register_family("descriptors")
def build_descriptor(spec: ExtractorSpec, tiny: bool, weights_dir: Path | None) -> Extractor:
    fn = {"face_hog": hog, "face_pixels": face_pixels, "logmel": logmel}[spec.name]
    return Extractor(spec, None, spec.dim, MODEL_FREE, fn)
