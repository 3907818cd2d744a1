"""Media files the tests write on purpose."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def write_video_without_audio(path: Path, frames: int = 10) -> Path:
    """A valid .mp4 with a video stream and no audio stream."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=25)
        s.width = s.height = 32
        s.pix_fmt = "yuv420p"
        black = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
        for _ in range(frames):
            for p in s.encode(black):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path
