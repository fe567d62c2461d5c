"""``robodual bench lerobot``: frames/s of ``convert lerobot`` for several worker counts.

A synthetic store (smooth moving frames, state and action) is exported as a LeRobot v3.0 dataset
(H.264, keyframe every 2 frames as LeRobot records), then converted back once per worker count. The
report also times reading and decoding alone (the same worker pipeline, nothing written) to show how
much of a conversion the decoder takes.
"""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from robodual_core.data.zarr_io import zarr_module


def synthetic_store(path: Path, episodes: int, length: int, size: int) -> Path:
    from robodual_core.data import DatasetWriter

    y, x = np.mgrid[0:size, 0:size]
    rng = np.random.default_rng(0)
    with DatasetWriter(path, fps=30, modalities={"rgb_static": "rgb", "proprio": "proprio", "action": "action"},
                       overwrite=True) as writer:
        for ep in range(episodes):
            t = np.arange(length)[:, None, None]
            base = (x[None] + 3 * t + 17 * ep) % 256
            frames = np.stack([base, (y[None] + 2 * t) % 256, (x[None] + y[None] + t) % 256], axis=-1)
            writer.add_episode({"rgb_static": frames.astype(np.uint8),
                                "proprio": rng.standard_normal((length, 8)).astype(np.float32),
                                "action": rng.standard_normal((length, 7)).astype(np.float32)},
                               instruction=f"task {ep % 4}", task=f"task_{ep % 4}")
    return path


def conversion_report(workers: tuple[int, ...], episodes: int, length: int, size: int) -> dict[str, Any]:
    from robodual_envs.lerobot.convert import LeRobotConverter, _run
    from robodual_envs.lerobot.export import export_lerobot
    from robodual_envs.lerobot.layout import read_source

    with tempfile.TemporaryDirectory(prefix="robodual-bench-lerobot-") as tmp:
        store = synthetic_store(Path(tmp) / "src.zarr", episodes, length, size)
        exported = export_lerobot(store, Path(tmp) / "lerobot", progress=False)
        source = read_source(Path(tmp) / "lerobot")
        frames = source.num_frames
        runs = []
        for n in workers:
            jobs = [LeRobotConverter._job(source, ep, _plan(source), 1e-4, n) for ep in source.episodes]
            c0, t0 = _cpu_s(), time.perf_counter()
            for _, release in _run(jobs, n):
                release()
            decode_s, decode_cpu = time.perf_counter() - t0, _cpu_s() - c0
            conv = LeRobotConverter()
            c0 = _cpu_s()
            conv.convert(Path(tmp) / "lerobot", Path(tmp) / f"w{n}.zarr", workers=n, progress=False)
            convert_cpu = _cpu_s() - c0
            compress_cpu = _compress_cpu_s(Path(tmp) / f"w{n}.zarr")
            per_frame = {"decode": decode_cpu, "compress": compress_cpu,
                         "other": max(0.0, convert_cpu - decode_cpu - compress_cpu)}
            runs.append({"workers": n, "frames_per_s": conv.report["frames_per_s"],
                         "seconds": conv.report["convert_seconds"], "decode_only_frames_per_s": frames / decode_s,
                         "cpu_ms_per_frame": {k: 1e3 * v / frames for k, v in per_frame.items()},
                         "decoder_share_of_cpu": decode_cpu / convert_cpu if convert_cpu > 0 else None})
    return {"dataset": {"episodes": episodes, "frames": frames, "frame_size": [size, size, 3],
                        "encoder": exported["encoder"], "gop": 2},
            "zarr_codec_pipeline": zarr_module().config.get("codec_pipeline.path"),
            "runs": runs}


def _cpu_s() -> float:
    """CPU seconds of this process and of its finished children (the decode workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _compress_cpu_s(store: Path) -> float:
    """CPU seconds to compress every converted frame once with the store's own codec, one thread."""
    from numcodecs import Blosc

    arr = zarr_module().open_array(str(store / "data" / "rgb_static"), mode="r")
    codec = arr.compressors[0]
    blosc = Blosc(cname=codec.cname.value, clevel=codec.clevel, shuffle=Blosc.NOSHUFFLE, blocksize=0)
    total = 0.0
    for start in range(0, arr.shape[0], 256):
        frames = arr[start:start + 256]
        c0 = time.process_time()
        for frame in frames:
            blosc.encode(frame)
        total += time.process_time() - c0
    return total


def _plan(source: Any) -> Any:
    from robodual_envs.lerobot.convert import plan_features

    return plan_features(source.features, {})[0]

