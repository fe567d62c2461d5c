"""The one episode-video writer of the envs package: mp4 (H.264 through PyAV) when it can, else a gif."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def write_video(path: str | Path, frames: list[np.ndarray] | np.ndarray, fps: float = 30.0) -> Path:
    """Write ``frames`` ([T, H, W, 3] uint8) to ``path`` with suffix ``.mp4``, or ``.gif`` when PyAV or an
    mp4 encoder is missing here; returns the path written. The file appears complete or not at all."""
    from robodual_core.io import atomic_write_bytes

    video = np.asarray(frames, dtype=np.uint8)
    if video.ndim != 4 or video.shape[-1] != 3 or not len(video):
        raise ValueError(f"expected frames [T, H, W, 3] with T >= 1, found shape {video.shape}")
    path = Path(path)
    try:
        data, target = _mp4(video, fps), path.with_suffix(".mp4")
    except Exception:  # no PyAV or no encoder: a gif needs only pillow
        data, target = _gif(video, fps), path.with_suffix(".gif")
    atomic_write_bytes(target, data)
    return target


def _mp4(video: np.ndarray, fps: float) -> bytes:
    import io

    import av

    h, w = video.shape[1] // 2 * 2, video.shape[2] // 2 * 2  # yuv420p wants even sizes
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        stream: Any = container.add_stream(codec, rate=max(1, round(fps)))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for frame in video:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[:h, :w]), format="rgb24")))
        container.mux(stream.encode())
    return buf.getvalue()


def _gif(video: np.ndarray, fps: float) -> bytes:
    import io

    from PIL import Image

    images = [Image.fromarray(frame) for frame in video]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=round(1000.0 / fps), loop=0)
    return buf.getvalue()
