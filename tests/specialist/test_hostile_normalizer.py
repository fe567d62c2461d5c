"""Hostile checkpoints (issue 28): a specialist whose normalizer.json lacks the action entry would hand out actions
in normalized units, silently off by the dataset's scale; it is refused in one line when the policy is loaded."""

from __future__ import annotations

import json

import pytest
from specialist_helpers import register_fake_sensor, write_tiny_store

from robodual_core.errors import RobodualError
from robodual_specialist.model import DiTSpecialist
from robodual_specialist.train import train

pytestmark = pytest.mark.hostile

CONFIG = """
model:
  hidden: 32
  depth: 1
  heads: 4
  k_s: 4
  k_g: 4
  sensors:
    - {name: fake_rgb, options: {out_dim: 32, tokens: 2}}
  guidance: {null_tokens: 2}
data: {image_size: 16}
trainer: {batch_size: 8, num_workers: 0, warmup_steps: 1, ckpt_every: 2, log_every: 2, lr: 1e-3, steps: 2}
"""


def test_a_normalizer_without_the_action_entry_is_refused(tmp_path, run):
    register_fake_sensor()
    store = write_tiny_store(tmp_path / "s.zarr")
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG)
    train(store, tmp_path / "run", config=config, show_progress=False)
    DiTSpecialist.load_runner(tmp_path / "run")  # whole, it loads
    path = tmp_path / "run" / "checkpoints" / "2" / "normalizer.json"
    entries = json.loads(path.read_text())
    assert "action" in entries
    del entries["action"]
    path.write_text(json.dumps(entries))
    with pytest.raises(RobodualError, match="no 'action' entry") as info:
        DiTSpecialist.load_runner(tmp_path / "run")
    assert "\n" not in str(info.value) and "proprio" in str(info.value)
    code, cap = run("eval", "offline", "--policy", tmp_path / "run", "--dataset", store, "--split", "all")
    assert code == 1 and "no 'action' entry" in cap.err and "Traceback" not in cap.err
    assert not (tmp_path / "run" / "eval" / "offline" / "results.json").exists()


def test_a_generalist_normalizer_without_the_action_entry_is_refused(tmp_path):
    """The generalist's runner (any family) checks the same when it loads, not at the first step."""
    from robodual_core.runtime.runners import GeneralistModelRunner

    class Model:
        image_key = "rgb_static"

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "normalizer.json").write_text(json.dumps({"proprio": {"mode": "none"}}))
    with pytest.raises(RobodualError, match="no 'action' entry") as info:
        GeneralistModelRunner.load(ckpt, lambda path, device: Model())
    assert "\n" not in str(info.value) and "proprio" in str(info.value)
