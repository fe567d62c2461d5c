"""Tiny stores for the dataset tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from robodual_core.data import DatasetWriter

MODALITIES = {"rgb_static": "rgb", "depth_static": "depth", "proprio": "proprio", "action": "action"}
LENGTHS = (5, 3, 7, 4)


def episode(e: int, length: int, size: int = 8) -> dict[str, np.ndarray]:
    """Values encode (episode, step) so windows can be checked by value: action[t] = [100 e + t, -t, e]."""
    t = np.arange(length)
    rgb = np.zeros((length, size, size, 3), np.uint8)
    rgb[..., 0] = (10 * e + t)[:, None, None]
    rgb[..., 1] = 255
    return {
        "rgb_static": rgb,
        "depth_static": np.broadcast_to((1.0 + e + 0.1 * t)[:, None, None], (length, size, size)).astype(np.float32),
        "proprio": np.stack([t, np.full(length, e)], axis=1).astype(np.float32),
        "action": np.stack([100 * e + t, -t, np.full(length, e)], axis=1).astype(np.float32),
    }


def make_store(path: Path, lengths=LENGTHS, **kwargs) -> Path:
    with DatasetWriter(path, fps=10, modalities=MODALITIES, action_space={"dim": 3}, **kwargs) as w:
        for e, n in enumerate(lengths):
            w.add_episode(episode(e, n), instruction=f"instruction {e % 2}", task=f"task{e}")
    return path
