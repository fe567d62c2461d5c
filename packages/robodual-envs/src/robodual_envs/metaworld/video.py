"""Write episode videos: mp4 (H.264 through PyAV) when available, else an animated gif."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_video(path: str | Path, frames: list[np.ndarray] | np.ndarray, fps: float = 30.0) -> Path:
    """Write ``frames`` ([T, H, W, 3] uint8) to ``path`` with suffix ``.mp4``, or ``.gif`` if mp4 cannot be
    written here; returns the path written. The file appears complete or not at all."""
    import imageio.v3 as iio

    from robodual_core.io import atomic_write_bytes

    video = np.asarray(frames, dtype=np.uint8)
    path = Path(path)
    try:
        # H.264 wants even sizes
        h, w = video.shape[1] // 2 * 2, video.shape[2] // 2 * 2
        data = iio.imwrite("<bytes>", video[:, :h, :w], extension=".mp4", plugin="pyav", fps=fps, codec="libx264")
        target = path.with_suffix(".mp4")
    except Exception:  # no PyAV or no H.264 encoder: gif needs only pillow
        data = iio.imwrite("<bytes>", video, extension=".gif", duration=1000.0 / fps, loop=0)
        target = path.with_suffix(".gif")
    atomic_write_bytes(target, data)
    return target
