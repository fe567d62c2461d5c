"""The one video writer of the envs package (PyAV): codec choice, an appending MP4 file, whole episode videos.

- :class:`VideoFile`: an MP4 that frames are appended to (the LeRobot export's video files);
- :func:`write_video`: one episode's frames as an mp4 (H.264 when available), or a gif when PyAV or an
  mp4 encoder is missing (evaluation videos of Meta-World and CALVIN).

SVT-AV1 (``libsvtav1``, PyAV's AV1 encoder), run as root, switches the thread that opens it and the ~40 threads
it starts to real-time scheduling (SCHED_FIFO, priority 99) and prints a banner on stderr. An export as root
would then leave the command's own process real-time, and its encoding threads could starve every other process
on the machine (a test suite hung on exactly that). So a :class:`VideoFile` puts every thread of the process back
to the scheduling the caller had once the encoder is open, and asks SVT for errors only (``SVT_LOG=1`` unless the
environment sets it).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from robodual_core.errors import RobodualError
from robodual_core.scheduling import Scheduling, current_scheduling, restore_realtime_threads

# encoder -> (codec name LeRobot records in info.json, encoder options)
ENCODERS: dict[str, tuple[str, dict[str, str]]] = {
    "libx264": ("h264", {"crf": "18", "preset": "medium"}),
    "libopenh264": ("h264", {}),
    "libsvtav1": ("av1", {"crf": "30", "preset": "8"}),
    "libaom-av1": ("av1", {"crf": "30", "cpu-used": "6"}),
    "mpeg4": ("mpeg4", {"qscale": "2"}),
}
ALIASES = {"h264": ("libx264", "libopenh264"), "av1": ("libsvtav1", "libaom-av1")}
EPISODE_ENCODERS = ("libx264", "libopenh264", "mpeg4")  # write_video's preference


def _can_encode(name: str) -> bool:
    import av

    try:
        av.codec.Codec(name, "w")
    except Exception:  # UnknownCodecError or a codec built without an encoder
        return False
    return True


def pick_encoder(requested: str | None) -> str:
    """The encoder for ``--codec`` (``h264``, ``av1``, an encoder name, or None for the best available)."""
    candidates = ALIASES.get(requested, (requested,)) if requested else tuple(ENCODERS)
    for name in candidates:
        if name and _can_encode(name):
            return name
    if requested:
        raise RobodualError(f"--codec '{requested}': PyAV has no encoder for it here; available: "
                            f"{', '.join(n for n in ENCODERS if _can_encode(n)) or 'none'}")
    raise RobodualError(f"PyAV has none of the encoders {', '.join(ENCODERS)}; install an FFmpeg build with libx264")


def codec_name(encoder: str) -> str:
    return ENCODERS.get(encoder, (encoder, {}))[0]


class VideoFile:
    """One MP4 (a file, or a binary buffer) that frames are appended to; frame ``n`` is shown at ``n / fps``.

    ``gop`` is the keyframe interval (None: the encoder's default).
    """

    def __init__(self, path: Path | io.BytesIO, fps: float, height: int, width: int, encoder: str,
                 gop: int | None = 2, crf: int | None = None):
        import av

        odd = height % 2 or width % 2
        if odd and encoder != "libx264":
            raise RobodualError(f"frames of {height}x{width} have an odd side, which {encoder} cannot encode in "
                                "yuv420p; use --codec libx264 (it writes yuv444p for odd sizes)")
        self._scheduling = _before_encoding()
        if isinstance(path, Path):
            path.parent.mkdir(parents=True, exist_ok=True)
            self.container = av.open(str(path), mode="w")
        else:
            self.container = av.open(path, mode="w", format="mp4")
        self.path = path
        self.pix_fmt = "yuv444p" if odd else "yuv420p"
        rate = Fraction(fps).limit_denominator(1001)
        self.stream = self.container.add_stream(encoder, rate=rate)
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, self.pix_fmt
        options = dict(ENCODERS.get(encoder, ("", {}))[1])
        if crf is not None and "crf" in options:
            options["crf"] = str(crf)
        if gop is not None:
            options["g"] = str(gop)
        self.stream.options = options
        self.frames = 0
        self.bytes = 0

    def write(self, frames: np.ndarray) -> None:
        """Append ``[N, H, W, 3]`` uint8 frames."""
        import av

        for img in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = self.frames
            self.frames += 1
            self._mux(self.stream.encode(frame))
            if self.frames == 1:  # the first frame opened the encoder (and started its threads)
                restore_realtime_threads(self._scheduling)
        restore_realtime_threads(self._scheduling)  # and any thread it started since

    def _mux(self, packets: Any) -> None:
        for packet in packets:
            self.bytes += packet.size
            self.container.mux(packet)

    def close(self) -> None:
        self._mux(self.stream.encode())
        self.container.close()
        restore_realtime_threads(self._scheduling)


def _before_encoding() -> Scheduling | None:
    """The caller's scheduling, to restore once an encoder has started its threads; SVT-AV1 told to print errors
    only (no banner on the user's terminal) unless the environment says otherwise."""
    os.environ.setdefault("SVT_LOG", "1")
    return current_scheduling()


@contextmanager
def keep_scheduling() -> Iterator[None]:
    """Encode with PyAV directly inside this and the process leaves with the scheduling it came in with."""
    saved = _before_encoding()
    try:
        yield
    finally:
        restore_realtime_threads(saved)


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
    encoder = next(name for name in EPISODE_ENCODERS if _can_encode(name))  # StopIteration: none, a gif then
    h, w = video.shape[1] // 2 * 2, video.shape[2] // 2 * 2  # yuv420p wants even sizes
    buf = io.BytesIO()
    out = VideoFile(buf, fps, h, w, encoder, gop=None)
    out.write(video[:, :h, :w])
    out.close()
    return buf.getvalue()


def _gif(video: np.ndarray, fps: float) -> bytes:
    from PIL import Image

    images = [Image.fromarray(frame) for frame in video]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=round(1000.0 / fps), loop=0)
    return buf.getvalue()
