"""Encoding MP4 video with PyAV for the LeRobot export: codec choice and an appending writer."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from robodual_core.errors import RobodualError

# encoder -> (codec name LeRobot records in info.json, encoder options)
ENCODERS: dict[str, tuple[str, dict[str, str]]] = {
    "libx264": ("h264", {"crf": "18", "preset": "medium"}),
    "libopenh264": ("h264", {}),
    "libsvtav1": ("av1", {"crf": "30", "preset": "8"}),
    "libaom-av1": ("av1", {"crf": "30", "cpu-used": "6"}),
    "mpeg4": ("mpeg4", {"qscale": "2"}),
}
ALIASES = {"h264": ("libx264", "libopenh264"), "av1": ("libsvtav1", "libaom-av1")}


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
    """One MP4 file that episodes are appended to; frame ``n`` of the file is shown at ``n / fps``."""

    def __init__(self, path: Path, fps: float, height: int, width: int, encoder: str, gop: int = 2,
                 crf: int | None = None):
        import av

        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        odd = height % 2 or width % 2
        if odd and encoder != "libx264":
            raise RobodualError(f"frames of {height}x{width} have an odd side, which {encoder} cannot encode in "
                                "yuv420p; use --codec libx264 (it writes yuv444p for odd sizes)")
        self.pix_fmt = "yuv444p" if odd else "yuv420p"
        self.container = av.open(str(path), mode="w")
        rate = Fraction(fps).limit_denominator(1001)
        self.stream = self.container.add_stream(encoder, rate=rate)
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, self.pix_fmt
        options = dict(ENCODERS.get(encoder, ("", {}))[1])
        if crf is not None and "crf" in options:
            options["crf"] = str(crf)
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

    def _mux(self, packets: Any) -> None:
        for packet in packets:
            self.bytes += packet.size
            self.container.mux(packet)

    def close(self) -> None:
        self._mux(self.stream.encode())
        self.container.close()
