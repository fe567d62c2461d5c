"""Tiny stores and models for the generalist tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

INSTRUCTIONS = ("open the drawer", "push the red block left", "lift the blue block")


def make_store(path: Path, episodes: int = 3, steps: int = 10, size: int = 32, action_dim: int = 7,
               seed: int = 0) -> Path:
    """Episodes with one instruction and one colour each; actions depend on the episode (learnable)."""
    from robodual_core.data import DatasetWriter

    rng = np.random.default_rng(seed)
    w = DatasetWriter(path, fps=10, modalities={"rgb_static": "rgb", "proprio": "proprio", "action": "action"},
                      action_space={"dim": action_dim})
    for e in range(episodes):
        colour = np.zeros((steps, size, size, 3), np.uint8)
        colour[..., e % 3] = 200
        colour += rng.integers(0, 30, colour.shape, dtype=np.uint8)
        base = rng.uniform(-0.8, 0.8, action_dim).astype(np.float32)
        actions = np.repeat(base[None], steps, 0)
        actions[:, -1] = 1.0 if e % 2 == 0 else -1.0
        w.add_episode({"rgb_static": colour, "proprio": rng.normal(size=(steps, 4)).astype(np.float32),
                       "action": actions}, instruction=INSTRUCTIONS[e % len(INSTRUCTIONS)], task=f"task{e}")
    return w.finalize()


def tiny_cfg(**kw):
    """A GeneralistConfig for the smallest useful native model (4 patches, 2 LLaMA layers of width 64)."""
    from robodual_generalist.config import GeneralistConfig, TinyConfig

    tiny = TinyConfig(image_size=32, patch_size=16, vision_dim=16, vision_depth=2, vision_heads=2, hidden_size=64,
                      num_layers=2, num_heads=2, intermediate_size=128)
    args = dict(base="tiny", lora=False, freeze_vision=False, k_g=4, tiny=tiny)
    args.update(kw)
    return GeneralistConfig(**args)


def batch_of(n: int, size: int = 32, seed: int = 0, action_dim: int = 3, k_g: int = 4):
    import torch

    g = torch.Generator().manual_seed(seed)
    return {"obs": {"rgb_static": torch.rand(n, 3, size, size, generator=g)},
            "instruction": [INSTRUCTIONS[i % len(INSTRUCTIONS)] + " now" * (2 * i) for i in range(n)],
            "action": torch.rand(n, k_g, action_dim, generator=g) * 2 - 1}
