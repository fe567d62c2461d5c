"""Tiny fakes for specialist tests: a sensor, generalist outputs, a batch, a store."""

from __future__ import annotations

import sys
import types

import numpy as np
import torch
from torch import nn

from robodual_core.hookspecs import hookimpl
from robodual_core.interfaces import GeneralistOutput
from robodual_specialist.config import DiffusionConfig, GuidanceConfig, SensorConfig, SpecialistConfig


class FakeImageSensor(nn.Module):
    """Pools an image into ``tokens`` tokens of width ``out_dim`` (stands in for a ViT + resampler)."""

    def __init__(self, key: str = "rgb_static", out_dim: int = 32, tokens: int = 2, history: int = 0,
                 in_chans: int = 3, name: str = "fake_rgb"):
        super().__init__()
        self.name, self.keys, self.out_dim, self.history = name, (key,), out_dim, history
        self.tokens, self.in_chans = tokens, in_chans
        self.proj = nn.Linear(in_chans * 16, out_dim * tokens)

    def config_dict(self):
        return {"key": self.keys[0], "out_dim": self.out_dim, "tokens": self.tokens, "history": self.history,
                "in_chans": self.in_chans, "name": self.name}

    def preprocess(self, arr, normalizer=None, device=None):
        x = torch.as_tensor(np.asarray(arr)).float() / 255.0
        x = x.movedim(-1, -3)
        return x.unsqueeze(0) if x.dim() == 3 else x

    def forward(self, x):
        if x.dim() == 5:
            x = x[:, -1]
        pooled = nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)
        return self.proj(pooled).unflatten(-1, (self.tokens, self.out_dim))


def register_fake_sensor() -> None:
    """Register ``fake_rgb`` in the process-wide sensors registry (idempotent)."""
    from robodual_core.plugins import get_plugin_manager

    pm = get_plugin_manager()
    if "fake-sensors" in pm.infos:
        return
    mod = types.ModuleType("fake_sensor_plugin")

    @hookimpl
    def robodual_register_sensors(registry):
        registry.register("fake_rgb", FakeImageSensor, "test sensor")

    mod.robodual_register_sensors = robodual_register_sensors
    sys.modules[mod.__name__] = mod
    pm.register_module(mod, "fake-sensors")


def randomized(model, seed=0):
    """Every parameter random (zero-initialised layers would make outputs trivially equal)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def tiny_config(**kw) -> SpecialistConfig:
    # generalist_inputs: the paper's sources, so the latent path is exercised (the default, "actions", has its
    # own tests); inference_autocast off: exact comparisons (autocast has its own test)
    base = dict(action_dim=4, proprio_dim=3, k_s=4, k_g=4, generalist_dim=12, hidden=32, depth=2, heads=4,
                sensors=[SensorConfig("fake_rgb", {"out_dim": 32, "tokens": 2})],
                diffusion=DiffusionConfig(), guidance=GuidanceConfig(null_tokens=2),
                inference_autocast="off", generalist_inputs="both")
    base.update(kw)
    return SpecialistConfig(**base)


def fake_generalist(B: int, k_g: int = 4, D: int = 4, H: int = 12, nt: int = 5, na: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    task_mask = torch.ones(B, nt, dtype=torch.bool)
    task_mask[:, -1] = False  # one padding token
    return GeneralistOutput(
        actions=torch.rand(B, k_g, D, generator=g) * 2 - 1,
        task_latents=torch.randn(B, nt, H, generator=g),
        action_latents=torch.randn(B, na, H, generator=g),
        task_mask=task_mask,
        action_mask=torch.ones(B, na, dtype=torch.bool),
    )


def fake_batch(B: int = 3, k: int = 4, D: int = 4, P: int = 3, seed: int = 0, tau=None):
    g = torch.Generator().manual_seed(seed)
    return {
        "obs": {"rgb_static": torch.rand(B, 3, 16, 16, generator=g)},
        "proprio": torch.rand(B, P, generator=g) * 2 - 1,
        "action": torch.rand(B, k, D, generator=g) * 2 - 1,
        "action_is_pad": torch.zeros(B, k, dtype=torch.bool),
        "tau": torch.zeros(B, dtype=torch.long) if tau is None else torch.as_tensor(tau),
    }


def write_tiny_store(path, episodes: int = 4, T: int = 12, D: int = 4, P: int = 3, seed: int = 0):
    """A small store with rgb_static / proprio / action whose actions depend on the image."""
    from robodual_core.data import DatasetWriter

    rng = np.random.default_rng(seed)
    w = DatasetWriter(path, fps=10, modalities={"rgb_static": "rgb", "proprio": "proprio", "action": "action"},
                      action_space={"type": "test", "dim": D})
    for e in range(episodes):
        level = rng.uniform(0, 1)
        img = np.full((T, 16, 16, 3), int(level * 255), dtype=np.uint8)
        t = np.linspace(0, 1, T, dtype=np.float32)[:, None]
        action = np.concatenate([np.sin(3 * t + level * 3), np.cos(2 * t) * level, t - level, np.sign(level - 0.5) * np.ones_like(t)], axis=1)[:, :D].astype(np.float32)
        proprio = np.concatenate([t, np.full_like(t, level), np.full_like(t, 1 - level)], axis=1)[:, :P]
        w.add_episode({"rgb_static": img, "proprio": proprio, "action": action}, instruction=f"task {e % 2}", task=f"t{e % 2}")
    return w.finalize()
