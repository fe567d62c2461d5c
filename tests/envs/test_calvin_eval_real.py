"""CALVIN evaluation on the real simulator: skipped unless calvin_env is importable (never in CI).

Renderer: ``ROBODUAL_CALVIN_RENDERER`` (egl by default, as ``eval calvin``; ``tiny`` for pybullet's
TinyRenderer). The end-to-end tests train tiny policies on the converted validation split of
``tests/data/calvin_sample`` (a specialist, and a dual policy with a tiny generalist) and run
``robodual eval calvin`` as a user does, in a fresh process: with EGL, a policy stack imported after the
simulator's GL context segfaulted there (a conftest that imports torch first would hide that).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("calvin_env")

from robodual_envs.calvin import protocol
from robodual_envs.calvin.env import CalvinEnv
from robodual_envs.calvin.evaluate import EvalOptions, EvalSpec, evaluate

pytestmark = pytest.mark.calvin
SAMPLE = Path(__file__).resolve().parents[1] / "data" / "calvin_sample"
REPO = Path(__file__).resolve().parents[2]
RENDERER = os.environ.get("ROBODUAL_CALVIN_RENDERER", "egl")
IMAGE_SIZE = 64  # the store is converted at this size; eval resizes the cameras the same way
SENSOR = {"backbone": "vit", "image_size": 32, "width": 32, "depth": 1, "heads": 2, "head_dim": 16, "out_dim": 32,
          "num_queries": 2, "resampler_heads": 2, "resampler_head_dim": 16}
TINY_GENERALIST = ["--set", "trainer.num_workers=0", "--set", "trainer.batch_size=4", "--set", "model.k_g=4",
                   "--set", "model.tiny.image_size=32", "--set", "model.tiny.hidden_size=64",
                   "--set", "model.tiny.num_heads=2", "--set", "model.tiny.intermediate_size=128",
                   "--set", "trainer.ckpt_every=2"]


class RandomPolicy:
    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)

    def reset(self) -> None:
        pass

    def step(self, obs, instruction):
        return np.r_[self.rng.uniform(-1, 1, 3), np.zeros(3), self.rng.choice([-1.0, 1.0])]


class LateTorchStackPolicy(RandomPolicy):
    """Imports torch when built and the rest of a diffusion policy's stack (triton through torch._dynamo)
    only at its first step, after the simulator exists: what crashed with EGL."""

    def __init__(self, seed: int = 0):
        import torch  # noqa: F401

        super().__init__(seed)

    def step(self, obs, instruction):
        import diffusers  # noqa: F401

        return super().step(obs, instruction)


@pytest.fixture(scope="module")
def env():
    e = CalvinEnv(scene="D", renderer=RENDERER)
    yield e
    e.close()


@pytest.fixture(scope="module")
def sample_store(tmp_path_factory):
    from robodual_envs.calvin.convert import CalvinConverter

    dst = tmp_path_factory.mktemp("calvin") / "sample.zarr"
    CalvinConverter().convert(SAMPLE, dst, split="validation", progress=False)
    from robodual_core.data import open_dataset

    return open_dataset(dst)


def test_reset_to_official_initial_states(env):
    for chain in protocol.chains(0, 3):
        obs = env.reset_to(np.asarray(chain.robot_obs), np.asarray(chain.scene_obs))
        np.testing.assert_allclose(obs["robot_obs"][7:14], chain.robot_obs[7:14], atol=1e-3)  # joint angles
        np.testing.assert_allclose(obs["scene_obs"][:6], chain.scene_obs[:6], atol=1e-2)  # doors, button, lights
        np.testing.assert_allclose(obs["scene_obs"][6:], chain.scene_obs[6:], atol=2e-2)  # blocks may settle


def test_observations_match_the_converted_sample(env, sample_store):
    chain = protocol.chains(0, 1)[0]
    obs = env.reset_to(np.asarray(chain.robot_obs), np.asarray(chain.scene_obs))
    for key in ("rgb_static", "rgb_gripper", "depth_static", "depth_gripper", "proprio", "robot_obs", "scene_obs"):
        stored = sample_store.array(key)
        assert obs[key].shape == tuple(stored.shape[1:]), key
        assert obs[key].dtype == np.dtype(stored.dtype), key
    assert set(env.spec.observation_keys) >= {"rgb_static", "rgb_gripper", "proprio"}


def test_relative_actions_move_the_arm_and_gripper(env):
    chain = protocol.chains(1, 1)[0]
    obs = env.reset_to(np.asarray(chain.robot_obs), np.asarray(chain.scene_obs))
    z0 = obs["robot_obs"][2]
    for _ in range(10):
        obs = env.step_obs(np.array([0, 0, 1.0, 0, 0, 0, -0.3]))
    assert obs["robot_obs"][2] > z0 + 0.05  # 10 steps of up to 2 cm
    assert obs["robot_obs"][-1] == -1.0 and obs["proprio"][-1] == -1.0


def test_oracle_detects_the_recorded_drawer_opening(env):
    frames = [np.load(SAMPLE / "validation" / f"episode_{i:07d}.npz") for i in (48, 95)]
    infos = []
    for f in frames:
        env.reset_to(f["robot_obs"], f["scene_obs"])
        infos.append(env.info())
    assert env.solved("open_drawer", infos[0], infos[1])
    assert not env.solved("close_drawer", infos[0], infos[1])


def test_dataset_merged_config_builds_the_same_env(tmp_path):
    import calvin_env
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    root = Path(calvin_env.__file__).resolve().parents[1]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(root / "conf"), version_base=None):
        cfg = compose("config_data_collection", overrides=["cameras=static_and_gripper", "scene=calvin_scene_D"])
    (tmp_path / "validation" / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, tmp_path / "validation" / ".hydra" / "merged_config.yaml")
    e = CalvinEnv(dataset_config=tmp_path, scene=None, renderer=RENDERER)
    try:
        assert e.spec.observation_keys["rgb_static"] == ((200, 200, 3), "uint8")
    finally:
        e.close()


@pytest.mark.slow
def test_two_chains_end_to_end_with_a_late_torch_stack(tmp_path):
    spec = EvalSpec(policy_kwargs={"seed": 0}, policy_factory=f"{__name__}:LateTorchStackPolicy",
                    env_kwargs={"simulator": "calvin", "scene": "D", "renderer": RENDERER}, max_steps=10)
    report = evaluate(spec, tmp_path / "eval", EvalOptions(chains=2, workers=1, videos=1, progress=False))
    lines = (tmp_path / "eval" / "chains.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["chain"] for line in lines) == [0, 1]
    assert report["num_chains"] == 2 and report["errors"] == []  # a worker killed by SIGSEGV is an error here
    assert report["performance"]["sim_steps_per_s"] > 0
    assert (tmp_path / "eval" / "videos" / "chain_0000.mp4").stat().st_size > 1000


# -- trained tiny policies through the command line ---------------------------------------------------------
def _robodual(*args, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "robodual_cli.app", *map(str, args)], cwd=cwd or REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"robodual {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A specialist and a dual policy (tiny generalist, cached), each trained 2 steps on the sample."""
    import yaml

    root = tmp_path_factory.mktemp("trained")
    store = root / "val.zarr"
    _robodual("dataset", "convert", "calvin", SAMPLE, store, "--split", "validation", "--keys",
              "rgb_static,rgb_gripper", "--image-size", IMAGE_SIZE)
    (root / "spec.yaml").write_text(yaml.safe_dump({
        "model": {"hidden": 32, "depth": 1, "heads": 4,
                  "sensors": [{"name": key, "options": SENSOR} for key in ("rgb_static", "rgb_gripper")]},
        "data": {"image_size": None},
        "trainer": {"batch_size": 4, "num_workers": 0, "warmup_steps": 1, "ckpt_every": 2, "log_every": 1}}))
    _robodual("train", "specialist", "--dataset", store, "--out", root / "specialist", "--config", root / "spec.yaml",
              "--steps", 2)
    _robodual("train", "generalist", "--dataset", store, "--out", root / "generalist", "--base", "tiny", "--steps", 2,
              *TINY_GENERALIST)
    _robodual("generalist", "cache", "--policy", root / "generalist", "--dataset", store)
    _robodual("train", "specialist", "--dataset", store, "--out", root / "dual", "--config", root / "spec.yaml",
              "--steps", 2, "--generalist-cache", "auto")
    assert (root / "dual" / "checkpoints" / "2" / "generalist.json").is_file()
    return root


def _eval(policy: Path, out: Path, workers: int) -> dict:
    proc = _robodual("eval", "calvin", "--policy", policy, "--chains", 3, "--workers", workers, "--max-steps", 10,
                     "--image-size", IMAGE_SIZE, "--renderer", RENDERER, "--out", out, "--json")
    report = json.loads(proc.stdout)  # the simulator's own prints must not be on stdout
    assert report["num_chains"] == 3 and report["errors"] == [], report["errors"]
    assert len((out / "chains.jsonl").read_text().splitlines()) == 3
    return report["performance"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["specialist", "dual"])
def test_trained_policy_runs_three_chains_in_a_worker_and_in_process(trained, tmp_path, kind):
    here = _eval(trained / kind, tmp_path / "in_process", workers=0)
    worker = _eval(trained / kind, tmp_path / "worker", workers=1)
    policy = (worker["policy_s_per_step"], here["policy_s_per_step"])
    total = (worker["policy_s_per_step"] + worker["sim_s_per_step"], here["policy_s_per_step"] + here["sim_s_per_step"])
    print(f"{kind}: s per step, worker vs in process: policy {policy[0]:.4f} vs {policy[1]:.4f}, "
          f"policy + simulator {total[0]:.4f} vs {total[1]:.4f}")
    assert policy[0] <= 1.5 * policy[1] + 0.005, f"a policy step in a worker is slower than in-process: {policy}"
    assert total[0] <= 1.5 * total[1], f"a step in a worker is slower than in-process: {total}"
