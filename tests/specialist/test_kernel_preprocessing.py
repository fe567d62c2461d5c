"""The kernel owns preprocessing (issue 28, part 2): an encoder receives the same tensor for the same stored frame
through the training loader and through a policy's ``step``, bit for bit, whether or not the sensor plugin does
any preprocessing of its own.

Each case trains a tiny specialist for one step on a store whose frames are far from what an encoder expects
(depth in metres, image sizes other than the sensor's), records what the sensor's ``forward`` received in that
step (every sample of the store in one batch), then loads the checkpoint as a policy, steps through every episode
and records what ``forward`` received at each control step."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

from robodual_core.data import DatasetWriter
from robodual_core.hookspecs import hookimpl
from robodual_core.interfaces import SensorEncoder
from robodual_core.plugins import get_plugin_manager, registry

EPISODES, T = 2, 5
H, W = 24, 28  # stored size: neither the sensors' 16x16 nor square
SMALL_VIT = "{backbone: vit, image_size: 16, patch_size: 8, width: 32, depth: 1, heads: 2, head_dim: 16, history: 1}"


class RawDepthCNN(nn.Module, SensorEncoder):
    """A third-party sensor as its author wrote it: a 1-channel CNN over ``depth_static`` that does no
    preprocessing at all (no ``preprocess``, no normalization, no resize): it relies on the kernel."""

    def __init__(self, out_dim: int = 16, **_):
        super().__init__()
        self.name, self.keys, self.out_dim, self.trainable = "raw_depth_cnn", ("depth_static",), out_dim, True
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.proj = nn.Linear(4 * 4, 2 * out_dim)

    def forward(self, x):
        pooled = nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 2).flatten(1)
        return self.proj(pooled).unflatten(-1, (2, self.out_dim))


class RawWrenchMLP(nn.Module, SensorEncoder):
    """A third-party low-dimensional sensor (a force/torque reading) without preprocessing of its own."""

    def __init__(self, out_dim: int = 16, **_):
        super().__init__()
        self.name, self.keys, self.out_dim, self.trainable = "raw_wrench_mlp", ("force_torque",), out_dim, True
        self.mlp = nn.Linear(6, 2 * out_dim)

    def forward(self, x):
        return self.mlp(x).unflatten(-1, (2, self.out_dim))


PLUGIN_SENSORS = ("raw_depth_cnn", "raw_wrench_mlp")


@pytest.fixture(scope="module", autouse=True)
def _third_party_sensor():
    """Registered exactly as an installed plugin's entry point would register it."""
    pm = get_plugin_manager()
    if "test-raw-depth-cnn" not in pm.infos:
        mod = types.ModuleType("test_raw_depth_cnn_plugin")

        @hookimpl
        def robodual_register_sensors(registry):
            registry.register("raw_depth_cnn", RawDepthCNN, "a third-party depth CNN without preprocessing")
            registry.register("raw_wrench_mlp", RawWrenchMLP, "a third-party wrench MLP without preprocessing")

        mod.robodual_register_sensors = robodual_register_sensors
        sys.modules[mod.__name__] = mod
        pm.register_module(mod, "test-raw-depth-cnn")
    yield


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("kernel_pre") / "s.zarr"
    mods = {"rgb_static": "rgb", "rgb_gripper": "rgb", "depth_static": "depth", "depth_gripper": "depth",
            "tactile": "tactile", "force_torque": "lowdim", "proprio": "proprio", "action": "action"}
    with DatasetWriter(path, fps=10, modalities=mods, action_space={"type": "test", "dim": 4}) as w:
        for e in range(EPISODES):
            w.add_episode({
                "rgb_static": rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8),
                "rgb_gripper": rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8),
                # metres, mean ~2.4: far from the normalized N(0, 1) the loader serves
                "depth_static": rng.uniform(1.0, 4.0, (T, H, W)).astype(np.float32),
                "depth_gripper": rng.uniform(0.2, 1.5, (T, H, W)).astype(np.float32),
                "tactile": rng.integers(0, 256, (T, 20, 16, 6), dtype=np.uint8),
                "force_torque": rng.normal(5.0, 3.0, (T, 6)).astype(np.float32),  # newtons: far from N(0, 1)
                "proprio": rng.normal(size=(T, 3)).astype(np.float32),
                "action": rng.uniform(-1, 1, (T, 4)).astype(np.float32),
            }, instruction=f"task {e}", task=f"t{e}")
    return path


def _config(tmp_path, sensor: str, image_size) -> object:
    spec = sensor if sensor in PLUGIN_SENSORS else f"{{name: {sensor}, options: {SMALL_VIT}}}"
    path = tmp_path / "cfg.yaml"
    path.write_text(f"""
model: {{hidden: 32, depth: 1, heads: 4, k_s: 4, k_g: 4, sensors: [{spec}], guidance: {{null_tokens: 2}}}}
data: {{image_size: {'null' if image_size is None else image_size}, val_ratio: 0.0,
        normalization: {{force_torque: mean_std}}}}
trainer: {{batch_size: {EPISODES * T}, num_workers: 0, warmup_steps: 1, steps: 1, ckpt_every: 1, log_every: 1}}
""")
    return path


def _recorder(enc, seen: list):
    return enc.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))


def _first_party_image_sensors():
    return [n for n in registry("sensors").names() if n != "language"]


CASES = [(n, size) for n in _first_party_image_sensors() for size in (16, None)] + [
    ("raw_depth_cnn", 16), ("raw_depth_cnn", None), ("raw_wrench_mlp", 16)]


@pytest.mark.parametrize(("sensor", "image_size"), CASES)
def test_an_encoder_sees_the_same_tensor_in_training_and_in_a_policy_step(sensor, image_size, store, tmp_path):
    from robodual_core.data import open_dataset
    from robodual_core.runtime import load_policy
    from robodual_specialist.train import build_trainer

    run = tmp_path / "run"
    trainer = build_trainer(store, run, config=_config(tmp_path, sensor, image_size), show_progress=False)
    (name,) = trainer.model.sensors
    enc = trainer.model.sensors[name]
    key = enc.keys[0]
    trained: list[torch.Tensor] = []
    rows: list[tuple[int, int]] = []
    inner = trainer.batch_transform

    def note_rows(batch):
        rows.extend(zip(batch["episode"].tolist(), batch["index"].tolist(), strict=True))
        return inner(batch) if inner is not None else batch

    trainer.batch_transform = note_rows
    hook = _recorder(enc, trained)
    trainer.fit()
    hook.remove()
    assert len(trained) == 1 and trained[0].shape[0] == len(rows) == EPISODES * T  # every stored frame, once
    from_loader = {row: trained[0][i] for i, row in enumerate(rows)}

    policy = load_policy(run)
    stepped: list[torch.Tensor] = []
    hook = _recorder(policy.specialist.model.sensors[name], stepped)
    ds = open_dataset(store)
    frames, proprio = np.asarray(ds.array(key)[:]), np.asarray(ds.array("proprio")[:])
    at_control: dict[tuple[int, int], torch.Tensor] = {}
    for e in range(EPISODES):
        policy.reset()
        for t in range(int(ds.episode_starts[e]), int(ds.episode_ends[e])):
            n = len(stepped)
            policy.step({key: frames[t], "proprio": proprio[t]}, f"task {e}")
            assert len(stepped) == n + 1
            at_control[(e, t)] = stepped[-1][0]
    hook.remove()

    assert at_control.keys() == from_loader.keys()
    for row, served in from_loader.items():
        got = at_control[row]
        assert got.dtype == served.dtype == torch.float32
        assert got.shape == served.shape, (row, tuple(got.shape), tuple(served.shape))
        assert torch.equal(got, served), (row, float((got - served).abs().max()))
    if sensor.startswith("depth") or sensor in PLUGIN_SENSORS:  # normalized, never metres or newtons
        assert abs(float(trained[0].mean())) < 0.5
    if frames.ndim >= 3:  # images
        assert tuple(trained[0].shape[-2:]) == ((image_size,) * 2 if image_size else tuple(frames.shape[1:3]))


@pytest.mark.hostile
def test_preprocessing_names_a_key_it_lacks_and_a_bad_image_size():
    from robodual_core.data.preprocess import Preprocessing
    from robodual_core.errors import RobodualError

    with pytest.raises(RobodualError, match="expected a modality for observation key 'depth_static', found only "
                                            "rgb_static"):
        Preprocessing({"rgb_static": "rgb"}, 16).apply("depth_static", np.zeros((1, 4, 4), np.float32))
    with pytest.raises(RobodualError, match="'image_size' must be a positive int or null, found 0"):
        Preprocessing.from_dict({"modalities": {}, "image_size": 0})


def test_a_checkpoint_records_the_loaders_preprocessing_and_older_ones_get_it_from_the_run(store, tmp_path):
    import json

    from robodual_core.data.preprocess import Preprocessing
    from robodual_specialist.model import DiTSpecialist
    from robodual_specialist.train import train

    run = tmp_path / "run"
    train(store, run, config=_config(tmp_path, "raw_depth_cnn", 16), show_progress=False)
    ckpt = run / "checkpoints" / "1"
    assert json.loads((ckpt / "preprocessing.json").read_text()) == {"image_size": 16,
                                                                     "modalities": {"depth_static": "depth"}}
    expected = Preprocessing({"depth_static": "depth"}, 16)
    assert DiTSpecialist.from_checkpoint(ckpt).preprocessing == expected
    (ckpt / "preprocessing.json").unlink()  # written before preprocessing.json existed: the run's config says
    assert DiTSpecialist.from_checkpoint(ckpt).preprocessing == expected
