"""Raw video files: container metadata (frame rate, frame count, audio stream) through PyAV.

The frame rate differs per Aff-Wild2 video and the container's metadata is authoritative.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm")


@dataclass(frozen=True)
class MediaInfo:
    path: Path
    fps: float | None
    num_frames: int | None
    duration_s: float | None
    has_audio: bool
    audio_rate: int | None
    error: str | None = None


def probe_media(path: str | Path) -> MediaInfo:
    """Read a container's metadata without decoding; an unreadable file is reported, not raised."""
    path = Path(path)
    try:
        with av.open(str(path)) as container:
            video = next(iter(container.streams.video), None)
            audio = next(iter(container.streams.audio), None)
            fps = None
            num_frames = None
            duration = None
            if video is not None:
                rate = video.average_rate or video.guessed_rate or video.base_rate
                fps = float(rate) if rate else None
                num_frames = int(video.frames) if video.frames else None
                if video.duration is not None and video.time_base is not None:
                    duration = float(video.duration * video.time_base)
            if duration is None and container.duration:
                duration = container.duration / av.time_base
            if num_frames is None and fps and duration:
                num_frames = int(round(fps * duration))
            return MediaInfo(
                path=path,
                fps=fps,
                num_frames=num_frames,
                duration_s=duration,
                has_audio=audio is not None,
                audio_rate=int(audio.rate) if audio is not None and audio.rate else None,
            )
    except (av.error.FFmpegError, OSError) as err:
        return MediaInfo(path, None, None, None, False, None, error=f"{type(err).__name__}: {err}")
