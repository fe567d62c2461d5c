"""Helpers for sensor tests: tiny stores and small encoder configs."""

from __future__ import annotations

import numpy as np

# A small trainable ViT: fast on CPU, same code path as the paper-size one.
SMALL_VIT = dict(width=32, depth=1, heads=2, head_dim=16, out_dim=32)


def write_store(path, episodes=3, steps=5, instructions=None, rgb_hw=(40, 40), depth_hw=(40, 40)):
    """A tiny complete store with rgb_static, depth_static, tactile, proprio and action."""
    from robodual_core.data import DatasetWriter

    rng = np.random.default_rng(0)
    instructions = instructions or [f"task {i % 2}" for i in range(episodes)]
    writer = DatasetWriter(path, fps=10, modalities={"rgb_static": "rgb", "depth_static": "depth",
                                                     "tactile": "tactile", "proprio": "proprio", "action": "action"})
    for ep in range(episodes):
        writer.add_episode({
            "rgb_static": rng.integers(0, 256, (steps, *rgb_hw, 3), dtype=np.uint8),
            "depth_static": rng.uniform(0.5, 3.0, (steps, *depth_hw)).astype(np.float32),
            "tactile": rng.integers(0, 256, (steps, 20, 16, 6), dtype=np.uint8),
            "proprio": rng.normal(size=(steps, 7)).astype(np.float32),
            "action": rng.uniform(-1, 1, (steps, 7)).astype(np.float32),
        }, instruction=instructions[ep], task=instructions[ep])
    return writer.finalize()
