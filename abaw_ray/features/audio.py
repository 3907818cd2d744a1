"""The audio front end: decode any container's audio, denoise, isolate the voice, 16 kHz mono.

Decoding uses PyAV (any container, rate, channel count); resampling uses torchaudio's
resampler; denoising is spectral gating on torch's STFT; vocal isolation runs a Hybrid Demucs
source-separation model from local weights (a tiny random one for tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch
import torchaudio.functional as AF

from abaw_ray.features.registry import AUDIO_RATE
from abaw_ray.features.weights import TINY_WEIGHTS, WeightsNotFoundError, local_dir, tiny_init

SEPARATION_RATE = 44100
SEPARATION_SOURCES = ["drums", "bass", "other", "vocals"]


class NoAudioError(ValueError):
    """The raw video has no audio stream (or none that decodes)."""


def decode_audio(path: str | Path, rate: int = AUDIO_RATE) -> np.ndarray:
    """Mono float32 waveform at ``rate`` Hz; channels are averaged."""
    path = Path(path)
    try:
        with av.open(str(path)) as container:
            stream = next(iter(container.streams.audio), None)
            if stream is None:
                raise NoAudioError(f"{path}: no audio stream")
            native = int(stream.rate or stream.codec_context.sample_rate)
            to_float = av.AudioResampler(format="fltp", layout="mono", rate=native)
            chunks = []
            for frame in container.decode(stream):
                for out in to_float.resample(frame):
                    chunks.append(out.to_ndarray()[0])
            for out in to_float.resample(None):
                chunks.append(out.to_ndarray()[0])
    except av.error.FFmpegError as err:
        raise NoAudioError(f"{path}: audio does not decode ({err})") from err
    if not chunks:
        raise NoAudioError(f"{path}: the audio stream holds no samples")
    wave = torch.from_numpy(np.concatenate(chunks).astype(np.float32))
    if native != rate:
        wave = AF.resample(wave, native, rate)
    return wave.numpy()


def spectral_gate(
    wave: np.ndarray,
    rate: int = AUDIO_RATE,
    n_fft: int = 512,
    threshold_db: float = 6.0,
    noise_quantile: float = 0.1,
) -> np.ndarray:
    """Spectral gating: estimate each frequency's noise floor from the quietest frames and
    attenuate time-frequency bins that do not rise ``threshold_db`` above it."""
    x = torch.from_numpy(np.asarray(wave, dtype=np.float32))
    if x.numel() < n_fft:
        return wave
    hop = n_fft // 4
    window = torch.hann_window(n_fft)
    spec = torch.stft(x, n_fft, hop, window=window, return_complex=True)
    db = 20 * torch.log10(spec.abs() + 1e-8)
    frame_energy = db.mean(0)
    quiet = frame_energy <= torch.quantile(frame_energy, noise_quantile)
    noise = db[:, quiet]
    floor = noise.mean(1, keepdim=True) + noise.std(1, keepdim=True).nan_to_num(0.0)
    mask = torch.sigmoid((db - floor - threshold_db) / 2.0)
    # Smooth over neighbouring bins and frames so the gate does not flutter (musical noise).
    kernel = torch.ones(1, 1, 3, 5) / 15
    mask = torch.nn.functional.conv2d(mask[None, None], kernel, padding=(1, 2))[0, 0]
    out = torch.istft(spec * mask, n_fft, hop, window=window, length=x.numel())
    return out.numpy()


@dataclass
class VocalIsolator:
    """Hybrid Demucs (torchaudio) keeping the ``vocals`` source."""

    model: torch.nn.Module
    weights: str
    segment_seconds: float = 10.0

    @classmethod
    def create(cls, tiny: bool = False, weights_dir: Path | None = None) -> VocalIsolator:
        from torchaudio.models import HDemucs, hdemucs_high

        if tiny:
            with tiny_init():
                model = HDemucs(SEPARATION_SOURCES, channels=4, depth=6, nfft=4096)
            return cls(model.eval(), TINY_WEIGHTS)
        folder = local_dir("hdemucs_high", weights_dir)
        files = sorted(folder.glob("*.pt")) if folder else []
        if not files:
            raise WeightsNotFoundError(
                "hdemucs_high: no local weights for vocal isolation. Download torchaudio's "
                "HDEMUCS_HIGH_MUSDB_PLUS checkpoint (hdemucs_high_trained.pt) on a machine "
                "with internet and put it in <weights-dir>/hdemucs_high/, or turn isolation off."
            )
        model = hdemucs_high(SEPARATION_SOURCES)
        model.load_state_dict(torch.load(files[0], map_location="cpu", weights_only=True))
        return cls(model.eval(), f"file:{files[0]}")

    @torch.inference_mode()
    def __call__(self, wave: np.ndarray, rate: int = AUDIO_RATE) -> np.ndarray:
        x = torch.from_numpy(np.asarray(wave, dtype=np.float32))
        x = AF.resample(x, rate, SEPARATION_RATE) if rate != SEPARATION_RATE else x
        seg = int(self.segment_seconds * SEPARATION_RATE)
        vocals = []
        for start in range(0, x.numel(), seg):
            piece = x[start : start + seg]
            stereo = piece.expand(2, -1)[None]
            ref = stereo.mean()
            scale = stereo.std().clamp_min(1e-8)
            out = self.model((stereo - ref) / scale)[0] * scale + ref
            vocals.append(out[SEPARATION_SOURCES.index("vocals")].mean(0))
        y = torch.cat(vocals) if vocals else x
        return (AF.resample(y, SEPARATION_RATE, rate) if rate != SEPARATION_RATE else y).numpy()


@dataclass(frozen=True)
class AudioFrontEnd:
    """Decode -> (vocal isolation) -> (denoise) -> mono 16 kHz."""

    denoise: bool = True
    isolate_vocals: bool = False
    tiny: bool = False
    weights_dir: Path | None = None

    def describe(self) -> str:
        return f"pyav->16k mono, denoise={self.denoise}, vocals={self.isolate_vocals}"

    def load(self, path: str | Path, isolator: VocalIsolator | None = None) -> np.ndarray:
        wave = decode_audio(path)
        if self.isolate_vocals:
            isolator = isolator or VocalIsolator.create(self.tiny, self.weights_dir)
            wave = isolator(wave)
        if self.denoise:
            wave = spectral_gate(wave)
        return wave.astype(np.float32)
