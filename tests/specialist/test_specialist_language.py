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
    means = {}
    for instruction in INSTRUCTIONS:
        batch = {"obs": {"rgb_static": torch.full((8, 3, 16, 16), 128 / 255)}, "proprio": torch.zeros(8, 3),
                 "instruction": [instruction] * 8, "tau": torch.zeros(8, dtype=torch.long)}
        with torch.no_grad():
            normalized = model.sample(batch, None)
        means[instruction] = float(ds.normalizer.unnormalize("action", normalized.numpy()).mean())
    return means


@pytest.mark.slow
def test_language_tokens_make_actions_follow_the_instruction(tmp_path):
    with_language = train_and_sample(tmp_path, language=True)
    for instruction, target in INSTRUCTIONS.items():
        assert abs(with_language[instruction] - target) < 0.25, with_language
    without = train_and_sample(tmp_path, language=False)
    # the same observation gets the same (averaged) action, whatever the instruction says
    assert abs(without["press the red button"] - without["open the green drawer"]) < 0.3, without
