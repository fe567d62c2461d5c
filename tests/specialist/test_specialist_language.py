"""Issue 11: instruction embeddings let a specialist-only policy tell apart tasks that look the same."""

import numpy as np
import pytest
import torch
from specialist_helpers import register_fake_sensor, tiny_config

from robodual_core.data import DatasetWriter, WindowDataset
from robodual_core.training import Trainer, TrainerConfig
from robodual_specialist.config import SensorConfig
from robodual_specialist.model import DiTSpecialist

INSTRUCTIONS = {"press the red button": 0.6, "open the green drawer": -0.6}


def write_store(path):
    """Identical observations; the action's sign depends only on the instruction."""
    w = DatasetWriter(path, fps=10, modalities={"rgb_static": "rgb", "proprio": "proprio", "action": "action"},
                      action_space={"type": "test", "dim": 2})
    for e in range(8):
        instruction = list(INSTRUCTIONS)[e % 2]
        T = 10
        w.add_episode({"rgb_static": np.full((T, 16, 16, 3), 128, np.uint8),
                       "proprio": np.zeros((T, 3), np.float32),
                       "action": np.full((T, 2), INSTRUCTIONS[instruction], np.float32)},
                      instruction=instruction, task=instruction.split()[-1])
    return w.finalize()


def train_and_sample(tmp_path, language: bool) -> dict[str, float]:
    register_fake_sensor()
    store = write_store(tmp_path / f"store_{language}.zarr")
    sensors = [SensorConfig("fake_rgb", {"out_dim": 32, "tokens": 2})]
    if language:
        sensors.append(SensorConfig("language", {"out_dim": 32, "store": None}))
    cfg = tiny_config(action_dim=2, k_s=4, k_g=4, generalist_dim=0, sensors=sensors)
    model = DiTSpecialist(cfg)
    ds = WindowDataset(store, obs_keys=["rgb_static"], horizon=4, k_g=4, split="all",
                       normalization={"action": "min_max", "proprio": "none"})
    torch.manual_seed(0)
    trainer = Trainer(model, ds, TrainerConfig(steps=150, batch_size=16, num_workers=0, lr=2e-3, warmup_steps=10,
                                               ema=False, ckpt_every=10**6, log_every=50),
                      tmp_path / f"run_{language}", show_progress=False)
    trainer.fit()
    model.eval()
    right = {}
    n = 32
    for instruction, target in INSTRUCTIONS.items():
        batch = {"obs": {"rgb_static": torch.full((n, 3, 16, 16), 128 / 255)}, "proprio": torch.zeros(n, 3),
                 "instruction": [instruction] * n, "tau": torch.zeros(n, dtype=torch.long)}
        with torch.no_grad():
            normalized = model.sample(batch, None)
        actions = ds.normalizer.unnormalize("action", normalized.numpy())  # [n, k, 2]
        # share of sampled chunks that move the way the instruction asks, and close to it
        right[instruction] = float((np.abs(actions.mean(axis=(1, 2)) - target) < 0.3).mean())
    return right


@pytest.mark.slow
def test_language_tokens_make_actions_follow_the_instruction(tmp_path):
    with_language = train_and_sample(tmp_path, language=True)
    assert min(with_language.values()) >= 0.9, with_language
    # without them the same observation gets the same action distribution whatever the instruction says:
    # at best a coin flip between the two tasks' actions
    without = train_and_sample(tmp_path, language=False)
    assert sum(without.values()) / 2 <= 0.75, without
