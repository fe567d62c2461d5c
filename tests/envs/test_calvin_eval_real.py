"""CALVIN evaluation on the real simulator: skipped unless calvin_env is importable.

Renderer: ``ROBODUAL_CALVIN_RENDERER`` (egl by default; ``tiny`` for pybullet's TinyRenderer).
``ROBODUAL_CALVIN_TEST_POLICY``: a trained run folder to drive the end-to-end chains with; without it a
seeded random policy drives them (the bookkeeping is the same).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("calvin_env")

from robodual_envs.calvin import protocol
from robodual_envs.calvin.env import CalvinEnv
from robodual_envs.calvin.evaluate import EvalOptions, EvalSpec, evaluate

pytestmark = pytest.mark.calvin
SAMPLE = Path("/work/shared/calvin/sample_raw")
RENDERER = os.environ.get("ROBODUAL_CALVIN_RENDERER", "egl")


class RandomPolicy:
    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)

    def reset(self) -> None:
        pass

    def step(self, obs, instruction):
        return np.r_[self.rng.uniform(-1, 1, 3), np.zeros(3), self.rng.choice([-1.0, 1.0])]


@pytest.fixture(scope="module")
def env():
    e = CalvinEnv(scene="D", renderer=RENDERER)
    yield e
    e.close()


@pytest.fixture(scope="module")
def sample_store(tmp_path_factory):
    if not SAMPLE.is_dir():
        pytest.skip(f"{SAMPLE} is not here")
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


def test_two_chains_end_to_end(tmp_path):
    policy = os.environ.get("ROBODUAL_CALVIN_TEST_POLICY")
    spec = EvalSpec(policy_kwargs={"path": policy} if policy else {"seed": 0},
                    policy_factory="robodual_envs.calvin.evaluate:load_run_policy" if policy
                    else f"{__name__}:RandomPolicy",
                    env_kwargs={"simulator": "calvin", "scene": "D", "renderer": RENDERER}, max_steps=30)
    report = evaluate(spec, tmp_path / "eval", EvalOptions(chains=2, workers=1, videos=1, progress=False))
    lines = (tmp_path / "eval" / "chains.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["chain"] for line in lines) == [0, 1]
    assert report["num_chains"] == 2 and report["errors"] == []
    assert report["performance"]["sim_steps_per_s"] > 0
    assert (tmp_path / "eval" / "videos" / "chain_0000.mp4").stat().st_size > 1000
