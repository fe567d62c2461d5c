"""Loader throughput: samples/s of :class:`WindowDataset` through a ``DataLoader``.

The paper-setting window is 2 RGB views at 224x224, 2 depth views, proprio and an 8-step action chunk.
:func:`synthetic_store` writes such a store (smooth images, so compression is realistic rather than
worst-case noise); :func:`loader_throughput` measures one ``num_workers`` setting. The report leaves
``consumption_samples_per_s`` for the specialist-training side of the ratio (the issue's target: the
loader with 2 workers delivers at least 2x what training consumes); pass it in, or let a caller that
can measure training fill it, and ``ratio_workers2_over_consumption`` is computed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from robodual_core.data.writer import DatasetWriter

BENCH_KEYS = ["rgb_static", "rgb_gripper", "depth_static", "depth_gripper"]


def synthetic_store(path: str | Path, episodes: int = 8, steps: int = 64, size: int = 224, seed: int = 0) -> Path:
    """A store with the paper-setting keys: 2 RGB + 2 depth views (size x size), proprio [7], action [7]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    modalities = {"rgb_static": "rgb", "rgb_gripper": "rgb", "depth_static": "depth", "depth_gripper": "depth",
                  "proprio": "proprio", "action": "action"}
    with DatasetWriter(path, fps=30, modalities=modalities, overwrite=True,
                       action_space={"type": "relative_ee", "dim": 7}) as writer:
        for _ in range(episodes):
            phase = rng.uniform(0, 6.28, size=(steps, 1, 1)).astype(np.float32)
            wave = np.sin(8 * xx[None] + phase) * np.cos(6 * yy[None] - phase)  # [T, H, W]
            rgb = ((wave[..., None] * [0.5, 0.3, 0.2] + 0.5) * 255).astype(np.uint8)
            noise = rng.integers(0, 8, size=rgb.shape, dtype=np.uint8)
            depth = (1.0 + 0.5 * wave).astype(np.float32)
            writer.add_episode({
                "rgb_static": rgb + noise, "rgb_gripper": rgb[:, ::-1] + noise,
                "depth_static": depth, "depth_gripper": depth[:, :, ::-1].copy(),
                "proprio": rng.normal(size=(steps, 7)).astype(np.float32),
                "action": rng.uniform(-1, 1, size=(steps, 7)).astype(np.float32),
            }, instruction="bench", task="bench")
    return Path(path)


def loader_throughput(path: str | Path, num_workers: int, batch_size: int = 32, seconds: float = 10.0,
                      image_size: int | None = 224, horizon: int = 8, warmup_batches: int = 2) -> dict[str, Any]:
    """Samples/s of a shuffled ``DataLoader`` over a :class:`WindowDataset` (after ``warmup_batches``)."""
    import torch
    from torch.utils.data import DataLoader

    from robodual_core.data.sampler import WindowDataset
    from robodual_core.data.store import open_dataset

    obs_keys = [k for k in BENCH_KEYS if k in open_dataset(path).keys]
    ds = WindowDataset(path, obs_keys=obs_keys, horizon=horizon, image_size=image_size, split="all")
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=num_workers, drop_last=True,
                        persistent_workers=num_workers > 0,  # as the trainer: workers live across epochs
                        generator=torch.Generator().manual_seed(0))
    samples = batches = 0
    start = None
    while start is None or time.perf_counter() - start < seconds:
        for batch in loader:
            if batches == warmup_batches:
                start = time.perf_counter()
            elif batches > warmup_batches:
                samples += batch["action"].shape[0]
            batches += 1
            if start is not None and time.perf_counter() - start >= seconds:
                break
    elapsed = time.perf_counter() - start
    return {"num_workers": num_workers, "obs_keys": obs_keys, "batch_size": batch_size, "samples": samples, "seconds": elapsed,
            "samples_per_s": samples / elapsed if elapsed > 0 else 0.0}


def loader_report(path: str | Path, workers: tuple[int, ...] = (0, 2), batch_size: int = 32, seconds: float = 10.0,
                  consumption_samples_per_s: float | None = None) -> dict[str, Any]:
    """Throughput for each worker count, and the loader/training ratio when the training rate is known."""
    from robodual_core.data.store import open_dataset

    ds = open_dataset(path)
    runs = [loader_throughput(path, w, batch_size=batch_size, seconds=seconds) for w in workers]
    by_workers = {r["num_workers"]: r["samples_per_s"] for r in runs}
    ratio = None
    if consumption_samples_per_s and 2 in by_workers:
        ratio = by_workers[2] / consumption_samples_per_s
    return {
        "store": str(path),
        "episodes": ds.num_episodes,
        "steps": ds.num_steps,
        "window": {"obs_keys": runs[0]["obs_keys"] if runs else [], "image_size": 224, "proprio": True, "action_chunk": 8},
        "runs": runs,
        "samples_per_s": {str(k): v for k, v in by_workers.items()},
        # filled by the specialist-training benchmark (or --consumption-samples-per-s); target ratio >= 2
        "consumption_samples_per_s": consumption_samples_per_s,
        "ratio_workers2_over_consumption": ratio,
    }
