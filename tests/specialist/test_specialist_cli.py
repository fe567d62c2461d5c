"""`robodual train specialist` end to end on a tiny store, with and without a generalist cache."""

import json

import numpy as np
import pytest
import torch
from specialist_helpers import register_fake_sensor, write_tiny_store

from robodual_core.checkpoint import load_model_state
from robodual_core.data.generalist_cache import GeneralistCacheWriter
from robodual_core.errors import RobodualError
from robodual_core.runtime import load_policy
from robodual_specialist.model import DiTSpecialist
from robodual_specialist.train import train

CONFIG = """
model:
  hidden: 32
  depth: 2
  heads: 4
  k_s: 4
  k_g: 4
  sensors:
    - {name: fake_rgb, options: {out_dim: 32, tokens: 2}}
  guidance: {null_tokens: 2}
data: {image_size: 16}
trainer: {batch_size: 8, num_workers: 0, warmup_steps: 2, ckpt_every: 4, log_every: 2, lr: 1e-3}
"""


@pytest.fixture(autouse=True)
def _fake_sensor():
    register_fake_sensor()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = write_tiny_store(tmp_path_factory.mktemp("cli") / "tiny.zarr")
    rng = np.random.default_rng(0)
    w = GeneralistCacheWriter(path, "abc123", num_steps=48, k_g=4, action_dim=4, num_task_tokens=5,
                              num_action_tokens=3, hidden_size=12, source="/ckpts/generalist")
    w.write(0, {"actions": rng.uniform(-1, 1, (48, 4, 4)), "task_latents": rng.normal(size=(48, 5, 12)),
                "action_latents": rng.normal(size=(48, 3, 12)), "task_mask": np.ones((48, 5), bool),
                "action_mask": np.ones((48, 3), bool)})
    w.finalize()
    return path


@pytest.fixture()
def config(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(CONFIG)
    return path


def test_cli_trains_resumes_and_reloads(store, config, tmp_path):
    from robodual_cli.app import main

    run = tmp_path / "run"
    main(["train", "specialist", "--dataset", str(store), "--out", str(run), "--config", str(config),
          "--steps", "4"])  # returns on success, exits non-zero on error
    resolved = json.loads((run / "config.json").read_text())
    assert resolved["model"]["action_dim"] == 4 and resolved["model"]["generalist_dim"] == 0
    assert (run / "checkpoints" / "4" / "normalizer.json").is_file()
    assert not (run / "checkpoints" / "4" / "generalist.json").exists()
    train(store, run, overrides=["trainer.steps=8"], resume=True, show_progress=False)  # reuses config.json
    assert (run / "checkpoints" / "8" / "model.safetensors").is_file()

    model = DiTSpecialist.from_checkpoint(run, ema=False)
    state = load_model_state(run, ema=False)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state[k])
    assert model.normalizer is not None and model.cfg.conditioner == "cross_attention"
    policy = load_policy(run)
    policy.reset()
    obs = {"rgb_static": np.zeros((16, 16, 3), np.uint8), "proprio": np.zeros(3, np.float32)}
    action = policy.step(obs, "task 0")
    assert action.shape == (4,) and np.isfinite(action).all()


def test_cli_with_generalist_cache(store, config, tmp_path):
    run = tmp_path / "dual"
    train(store, run, config=config, overrides=["trainer.steps=2", "trainer.ckpt_every=2"],
          generalist_cache="auto", show_progress=False)
    record = json.loads((run / "checkpoints" / "2" / "generalist.json").read_text())
    assert record["hash"] == "abc123" and record["checkpoint"] == "/ckpts/generalist"
    model = DiTSpecialist.from_checkpoint(run)
    assert model.cfg.generalist_dim == 12 and model.cfg.k_g == 4
    assert model.cfg.generalist_inputs == "actions"  # the default since issue 30


def test_a_run_saved_before_generalist_inputs_existed_resumes_and_reloads_with_both_sources(store, config, tmp_path):
    """Such a run trained on the generalist's latents and actions (the default is "actions" now): resuming it and
    loading its checkpoints keep "both" instead of silently switching its conditioning."""
    run = tmp_path / "old"
    train(store, run, config=config, overrides=["trainer.steps=2", "trainer.ckpt_every=2"],
          generalist_cache="auto", show_progress=False)
    for path in (run / "config.json", run / "checkpoints" / "2" / "model_config.json"):
        saved = json.loads(path.read_text())
        section = saved["model"] if "model" in saved else saved["specialist"]
        del section["generalist_inputs"]  # as saved before the key existed
        path.write_text(json.dumps(saved))
    assert DiTSpecialist.from_checkpoint(run).cfg.generalist_inputs == "both"
    train(store, run, overrides=["trainer.steps=4", "trainer.ckpt_every=2"], generalist_cache="auto", resume=True,
          show_progress=False)
    assert json.loads((run / "config.json").read_text())["model"]["generalist_inputs"] == "both"
    assert DiTSpecialist.from_checkpoint(run).cfg.generalist_inputs == "both"


def test_cli_errors_name_the_problem(store, config, tmp_path):
    with pytest.raises(RobodualError, match="no checkpoints"):
        train(store, tmp_path / "none", config=config, resume=True, show_progress=False)
    with pytest.raises(RobodualError, match="no generalist cache for checkpoint nope"):
        train(store, tmp_path / "x", config=config, generalist_cache="nope", show_progress=False)
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "notes.txt").write_text("mine")
    with pytest.raises(RobodualError, match="refuses to delete"):
        train(store, tmp_path / "keep", config=config, overwrite=True, show_progress=False)


def test_default_sensors_fit_a_store_without_depth(tmp_path):
    from robodual_specialist.config import SensorConfig, SpecialistTrainConfig
    from robodual_specialist.train import _fit_default_sensors

    cfg = SpecialistTrainConfig()
    fitted = _fit_default_sensors(cfg, ["rgb_static", "rgb_gripper", "proprio", "action"], tmp_path, rank=1)
    assert [s.name for s in fitted.model.sensors] == ["rgb_static", "rgb_gripper"]
    assert fitted.model.sensors[0].options == {"history": 1}
    mine = SpecialistTrainConfig()
    mine.model.sensors = [SensorConfig("depth_static")]
    assert _fit_default_sensors(mine, ["rgb_static"], tmp_path, rank=1) is mine  # user choice: kept as is


def test_runs_with_the_same_seed_give_the_same_weights(store, config, tmp_path):
    """The model's fresh weights follow trainer.seed too (they are drawn before the trainer seeds the rest)."""
    torch.manual_seed(1)
    train(store, tmp_path / "a", config=config, overrides=["trainer.steps=2", "trainer.ckpt_every=2"],
          show_progress=False)
    torch.manual_seed(2)  # another process state
    train(store, tmp_path / "b", config=config, overrides=["trainer.steps=2", "trainer.ckpt_every=2"],
          show_progress=False)
    a, b = (load_model_state(tmp_path / r, ema=False) for r in "ab")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_runner_refuses_a_checkpoint_without_normalizer(store, config, tmp_path):
    run = tmp_path / "run"
    train(store, run, config=config, overrides=["trainer.steps=2", "trainer.ckpt_every=2"], show_progress=False)
    (run / "checkpoints" / "2" / "normalizer.json").unlink()
    with pytest.raises(RobodualError, match="has no normalizer.json"):
        DiTSpecialist.load_runner(run)


def test_sensor_size_other_than_the_loaders_is_refused(store, tmp_path):
    """data.image_size 16 with a 32x32 ViT sensor: training would resize twice, control time once."""
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG.replace("{name: fake_rgb, options: {out_dim: 32, tokens: 2}}",
                                     "{name: rgb_static, options: {backbone: vit, image_size: 32, width: 32, depth: 1, "
                                     "heads: 2, head_dim: 16}}"))
    with pytest.raises(RobodualError, match="sensor 'rgb_static' encodes 32x32 frames but data.image_size is 16"):
        train(store, tmp_path / "run", config=config, show_progress=False)
    config.write_text(config.read_text().replace("data: {image_size: 16}", "data: {image_size: null}"))
    train(store, tmp_path / "ok", config=config, overrides=["trainer.steps=2"], show_progress=False)


def test_device_images_train_the_same_weights(store, config, tmp_path):
    """``data.device_images: on`` (uint8 frames converted after the transfer, the CUDA default) trains exactly
    what the loader-side conversion trains, generalist cache included."""
    for name, setting in (("on", "on"), ("off", "off")):
        train(store, tmp_path / name, config=config, generalist_cache="auto",
              overrides=["trainer.steps=3", "trainer.ckpt_every=3", f"data.device_images={setting}"],
              show_progress=False)
    a, b = (load_model_state(tmp_path / r, ema=False) for r in ("on", "off"))
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.hostile
def test_full_check_refuses_a_damaged_shard_before_training(config, tmp_path):
    """``data.full_check``: every chunk is decoded before training starts (as ``dataset validate``), so a damaged
    image shard is named before any step, not at the batch that reads it."""
    store = write_tiny_store(tmp_path / "damaged.zarr")
    shards = sorted(p for p in (store / "data" / "rgb_static").rglob("*") if p.is_file() and p.name != "zarr.json")
    victim = shards[-1]
    victim.write_bytes(np.random.default_rng(0).integers(0, 256, victim.stat().st_size, dtype=np.uint8).tobytes())
    with pytest.raises(RobodualError, match="rgb_static") as info:
        train(store, tmp_path / "run", config=config, overrides=["trainer.steps=2", "data.full_check=true"],
              show_progress=False)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # refused before the first step


def test_execute_plans_a_new_chunk_every_n_steps_and_is_bounded_by_the_chunk(store, config, tmp_path):
    from robodual_core.runtime import AggregationConfig

    run = tmp_path / "run"
    train(store, run, config=config, overrides=["trainer.steps=2", "trainer.ckpt_every=2"], show_progress=False)
    obs = {"rgb_static": np.zeros((16, 16, 3), np.uint8), "proprio": np.zeros(3, np.float32)}
    off = AggregationConfig(enabled=False)
    for execute, calls in ((None, 6), (1, 6), (2, 3), (4, 2)):  # six control steps, chunks of k_s = 4
        policy = load_policy(run, aggregation=off, **({"execute": execute} if execute else {}))
        policy.reset()
        actions = [policy.step(obs, "task 0") for _ in range(6)]
        assert policy.stats["specialist_calls"] == calls, execute
        assert all(np.isfinite(a).all() for a in actions)
    from robodual_envs.calvin.spec import load_run_policy  # eval calvin --execute reaches the same loader

    assert load_run_policy(str(run), execute=3).specialist_every == 3
    for bad, needle in ((5, "chunks hold 4 actions"), (0, ">= 1"), (True, ">= 1")):
        with pytest.raises(RobodualError, match="--execute") as exc:
            load_policy(run, execute=bad)
        assert needle in str(exc.value)
