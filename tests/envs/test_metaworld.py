"""Meta-World plugin: environment, instructions, expert dataset generation and closed-loop evaluation."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("metaworld")

from robodual_core.errors import RobodualError
from robodual_envs.metaworld.env import MetaWorldEnv
from robodual_envs.metaworld.tasks import (
    INSTRUCTIONS,
    MT10,
    all_tasks,
    episode_seed,
    instruction_for,
    instructions,
    resolve_tasks,
    task_of_instruction,
)


@pytest.fixture(scope="module")
def env():
    e = MetaWorldEnv("reach-v3", image_size=64, depth=True, max_steps=30)
    yield e
    e.close()


# -- tasks and instructions (no simulator) -------------------------------------------------------------
def test_resolve_tasks():
    assert resolve_tasks("mt10") == list(MT10)
    assert resolve_tasks("push,reach-v3,push-v3") == ["push-v3", "reach-v3"]
    assert resolve_tasks(["MT10", "hammer-v3"]) == [*MT10, "hammer-v3"]
    with pytest.raises(RobodualError, match="unknown Meta-World task 'jump'"):
        resolve_tasks("reach,jump")
    with pytest.raises(RobodualError, match="no task given"):
        resolve_tasks(" , ")


def test_instructions_cover_tasks_and_identify_them():
    tasks = all_tasks()
    assert set(INSTRUCTIONS) <= set(tasks)
    for task in MT10:
        assert len(set(INSTRUCTIONS[task])) >= 5
    for task in tasks:
        for text in instructions(task):
            assert task_of_instruction(text) == task, text
    assert instructions("not-a-task-v3")[0] == "not a task"
    chosen = {instruction_for("push-v3", s) for s in range(40)}
    assert chosen == set(INSTRUCTIONS["push-v3"])  # every paraphrase gets used
    assert instruction_for("push-v3", 7) == instruction_for("push-v3", 7)
    assert episode_seed(0, "push-v3", 3) == episode_seed(0, "push-v3", 3) != episode_seed(0, "push-v3", 3, salt=1)


# -- environment ---------------------------------------------------------------------------------------
def test_env_observation_keys_shapes_dtypes(env):
    obs = env.reset("reach-v3", seed=1)
    a = obs.arrays
    assert set(a) == {"rgb_static", "rgb_gripper", "depth_static", "depth_gripper", "proprio", "state"}
    assert set(a) == set(env.spec.observation_keys)
    for key, (shape, dtype) in env.spec.observation_keys.items():
        assert a[key].shape == shape and a[key].dtype == np.dtype(dtype), key
    assert a["rgb_static"].shape == (64, 64, 3) and a["rgb_static"].std() > 5  # a real image, not blank
    assert 0.0 < a["depth_static"].min() and a["depth_static"].max() <= env.depth_max
    np.testing.assert_allclose(a["proprio"][:4], a["state"][:4])  # hand xyz + gripper opening
    assert obs.instruction in INSTRUCTIONS["reach-v3"]
    assert env.spec.action_dim == 4 and env.fps == 80.0

    hand = a["proprio"][:3].copy()
    obs, reward, done, info = env.step(np.array([1.0, 0.0, 0.0, 0.0], np.float32))  # +x: 1 cm commanded
    assert obs.arrays["proprio"][0] > hand[0] and isinstance(reward, float)
    assert info["steps"] == 1 and info["success"] is False and not done
    with pytest.raises(RobodualError, match="4-D action"):
        env.step(np.zeros(3))


def test_env_episode_ends_at_max_steps(env):
    env.reset("reach-v3", seed=2)
    done, n = False, 0
    while not done:
        _, _, done, info = env.step(np.zeros(4))
        n += 1
    assert n == 30 and info["truncated"] and not env.success()
    with pytest.raises(RobodualError, match="call reset"):
        env.step(np.zeros(4))


def test_same_seed_same_placement(env):
    first = env.reset("push-v3", seed=11).arrays
    other = env.reset("push-v3", seed=12).arrays
    again = env.reset("push-v3", seed=11).arrays
    np.testing.assert_array_equal(first["state"], again["state"])
    np.testing.assert_array_equal(first["rgb_static"], again["rgb_static"])
    assert not np.allclose(first["state"][4:7], other["state"][4:7])  # the puck moved


def test_corner_camera_is_flipped(env):
    import mujoco

    env.reset("reach-v3", seed=3)
    renderer = mujoco.Renderer(env._env.model, 64, 64)
    try:
        for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION,
                     mujoco.mjtRndFlag.mjRND_SKYBOX):
            renderer.scene.flags[flag] = 0
        renderer.update_scene(env._env.data, camera="corner2")
        raw = renderer.render()
    finally:
        renderer.close()
    np.testing.assert_array_equal(env.render_camera("corner2"), raw[::-1, ::-1])


# -- expert dataset generation -------------------------------------------------------------------------
def _replay_succeeds(task: str, seed: int, actions: np.ndarray) -> bool:
    """Replaying the recorded actions from the recorded placement reaches success exactly at the last step."""
    with MetaWorldEnv(task, image_size=16, cameras=("corner2",), max_steps=len(actions)) as e:
        e.reset(task, seed)
        for t, action in enumerate(actions):
            _, _, done, info = e.step(action)
            if info["success"]:
                return t == len(actions) - 1
    return False


@pytest.mark.slow
def test_generate_cli_keeps_only_successful_episodes(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from robodual_cli.app import build_app
    from robodual_core.data import open_dataset
    from robodual_envs.metaworld import generate

    # the expert's first attempt at every slot is declared a failure: only the retries may be stored
    real, calls = generate.record_expert_episode, []

    def flaky(*args, **kwargs):
        result = real(*args, **kwargs)
        calls.append(result["steps"])
        if len(calls) % 2 == 1:
            result["success"] = False
        return result

    monkeypatch.setattr(generate, "record_expert_episode", flaky)
    out = tmp_path / "mw.zarr"
    args = ["dataset", "generate", "metaworld", str(out), "--tasks", "reach", "--episodes-per-task", "2",
            "--image-size", "64", "--seed", "5", "--max-steps", "120"]
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    assert len(calls) == 4

    ds = open_dataset(out)
    assert ds.num_episodes == 2 and ds.tasks == ["reach-v3", "reach-v3"]
    assert all(text in INSTRUCTIONS["reach-v3"] for text in ds.instructions)
    assert set(ds.keys) == {"rgb_static", "rgb_gripper", "proprio", "state", "action"}
    assert ds.fps == 80.0 and ds.modalities["rgb_static"] == "rgb" and ds.modalities["action"] == "action"
    assert ds.action_space["dim"] == 4
    action = ds.array("action")[:]
    assert action.shape == (ds.num_steps, 4) and action.dtype == np.float32 and np.abs(action).max() <= 1.0
    assert ds.array("rgb_static").shape == (ds.num_steps, 64, 64, 3)
    assert ds.array("proprio").shape == (ds.num_steps, 11)
    lengths = np.diff(np.concatenate([[0], ds.episode_ends]))
    assert list(lengths) == [calls[1], calls[3]]  # the retried (second) attempts were stored
    generation = ds.attrs["generation"]
    assert generation["attempts"] == 4 and generation["failed_slots"] == []
    seeds = generation["episode_seeds"]
    assert seeds == [episode_seed(5, "reach-v3", i, salt=0, attempt=1) for i in range(2)]
    starts = np.concatenate([[0], ds.episode_ends[:-1]])
    for seed, start, end in zip(seeds, starts, ds.episode_ends, strict=True):
        assert _replay_succeeds("reach-v3", seed, action[start:end])

    again = CliRunner().invoke(build_app(), args)  # an existing store is never silently replaced
    assert again.exit_code != 0 and "--overwrite" in str(again.exception)


# -- closed-loop evaluation ----------------------------------------------------------------------------
@pytest.mark.slow
def test_evaluate_scripted_expert_succeeds(tmp_path):
    from robodual_envs.metaworld.evaluate import evaluate
    from robodual_envs.metaworld.expert import ScriptedExpertPolicy

    results = evaluate(ScriptedExpertPolicy(), tasks="reach-v3", episodes_per_task=2, seed=0, max_steps=150,
                       image_size=64, video_dir=tmp_path / "videos", n_videos=1, progress=False)
    assert results["success_rate"] == 1.0 and results["tasks"]["reach-v3"]["successes"] == 2
    assert [e["index"] for e in results["episodes"]] == [0, 1]
    assert results["mean_episode_length"] == np.mean([e["length"] for e in results["episodes"]]) < 150
    assert results["control_rate_hz"] > 0 and results["policy_rate_hz"] > results["control_rate_hz"]
    assert len(results["videos"]) == 1
    import imageio.v3 as iio

    frames = iio.imread(results["videos"][0], **({"plugin": "pyav"} if results["videos"][0].endswith("mp4") else {}))
    assert frames.shape[0] == results["episodes"][0]["length"] + 1 and frames.shape[2] >= 128  # two cameras


def test_evaluate_random_policy_sharded_like_serial():
    from robodual_envs.metaworld.evaluate import PolicyFactory, evaluate

    factory = PolicyFactory("robodual_envs.metaworld.expert:random_policy_factory", kwargs={"seed": 3})
    kwargs = dict(tasks="reach-v3,push-v3", episodes_per_task=1, seed=1, max_steps=15, image_size=32,
                  cameras=("corner2",), progress=False)
    serial = evaluate(factory, workers=1, **kwargs)
    sharded = evaluate(factory, workers=2, **kwargs)
    keys = ("episode", "task", "index", "seed", "instruction", "success", "length")
    assert [{k: e[k] for k in keys} for e in serial["episodes"]] == [{k: e[k] for k in keys} for e in sharded["episodes"]]
    assert [e["task"] for e in serial["episodes"]] == ["reach-v3", "push-v3"]
    assert len({e["seed"] for e in serial["episodes"]}) == 2
    for e in serial["episodes"]:
        assert e["length"] == 15 or e["success"]
    assert serial["tasks"]["push-v3"]["episodes"] == 1
    assert serial["success_rate"] == np.mean([e["success"] for e in serial["episodes"]])
    assert serial["steps"] == sum(e["length"] for e in serial["episodes"])
    with pytest.raises(RobodualError, match="factory"):
        from robodual_envs.metaworld.expert import RandomPolicy

        evaluate(RandomPolicy(), workers=2, **kwargs)


def test_batched_slots_keep_to_their_tasks():
    """A lockstep slot takes the first queued episode of a task its simulator already has, else the first; the
    evaluation counts the simulators it built."""
    from collections import deque

    from robodual_envs.metaworld.evaluate import _next_job, summarize

    class Built:
        def __init__(self, *tasks):
            self.tasks = set(tasks)

        def has_simulator(self, task):
            return task in self.tasks

    jobs = [(i, task, i // 3, 100 + i, False) for i, task in enumerate(["a", "b", "c"] * 3)]
    queue = deque(jobs)
    assert _next_job(queue, None) == jobs[0]  # a new slot: the first
    assert _next_job(queue, Built("c")) == jobs[2]
    assert _next_job(queue, Built("a")) == jobs[3]
    assert _next_job(queue, Built("z")) == jobs[1]  # nothing of its tasks queued: the first
    assert list(queue) == [jobs[4], jobs[5], jobs[6], jobs[7], jobs[8]]
    episodes = [{"task": "a", "success": True, "length": 3, "policy_s": 1.0, "env_s": 1.0, "new_simulator": new}
                for new in (True, False, True)]
    assert summarize(episodes, {"tasks": ["a"]}, 1.0)["simulators_built"] == 2


def test_eval_cli_writes_results(tmp_path):
    import json

    from typer.testing import CliRunner

    from robodual_cli.app import build_app

    out = tmp_path / "eval"
    result = CliRunner().invoke(build_app(), ["eval", "metaworld", "--policy", "random", "--tasks", "reach-v3",
                                              "--episodes", "1", "--max-steps", "5", "--image-size", "32",
                                              "--videos", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "results.json").read_text())
    assert saved["policy"] == "random" and saved["steps"] == 5 and saved["episodes"][0]["length"] == 5
    assert saved["simulators_built"] == 1 and saved["episodes"][0]["new_simulator"] is True
    assert "reach-v3" in result.output
    bad = CliRunner().invoke(build_app(), ["eval", "metaworld", "--policy", str(tmp_path / "nope")])
    assert bad.exit_code != 0 and "is not a folder" in str(bad.exception)


@pytest.mark.slow
def test_generate_resume_matches_uninterrupted_run(tmp_path, monkeypatch):
    from robodual_core.data import open_dataset
    from robodual_envs.metaworld import generate

    options = dict(tasks=["reach-v3"], episodes_per_task=3, image_size=32, cameras=["corner2"], max_steps=120)
    generate.generate_dataset(tmp_path / "full.zarr", generate.GenerateOptions(**options), progress=False)

    real, calls = generate._generate_slot, []

    def crash_on_third(job):
        calls.append(job)
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        return real(job)

    monkeypatch.setattr(generate, "_generate_slot", crash_on_third)
    out = tmp_path / "resumed.zarr"
    with pytest.raises(RuntimeError, match="simulated crash"):
        generate.generate_dataset(out, generate.GenerateOptions(**options), progress=False)
    assert not out.exists()
    with pytest.raises(RobodualError, match="--resume"):
        generate.generate_dataset(out, generate.GenerateOptions(**options), progress=False)
    with pytest.raises(RobodualError, match="same options"):  # other options cannot continue this store
        generate.generate_dataset(out, generate.GenerateOptions(**{**options, "image_size": 48}), resume=True,
                                  progress=False)
    summary = generate.generate_dataset(out, generate.GenerateOptions(**options), resume=True, progress=False)
    assert calls[3:] == [("reach-v3", 2)]  # only the missing slot ran again
    assert summary["episodes"] == 3

    full, resumed = open_dataset(tmp_path / "full.zarr"), open_dataset(out)
    np.testing.assert_array_equal(full.episode_ends, resumed.episode_ends)
    np.testing.assert_array_equal(full.array("action")[:], resumed.array("action")[:])
    np.testing.assert_array_equal(full.array("rgb_static")[:], resumed.array("rgb_static")[:])
    assert full.instructions == resumed.instructions
    assert full.attrs["generation"]["episode_seeds"] == resumed.attrs["generation"]["episode_seeds"]


def test_registered_and_run_settings(tmp_path):
    import json

    from robodual_core.plugins import registry
    from robodual_envs.metaworld.commands import dataset_settings_of_run

    cls = registry("envs").get("metaworld")
    assert cls is MetaWorldEnv  # an Environment, nothing patched onto it
    assert not hasattr(cls, "evaluate") and not hasattr(cls, "generate_dataset")

    store = tmp_path / "mw.zarr"
    store.mkdir()
    generator = {"image_size": 64, "cameras": ["corner2"], "depth": True, "seed": 0}
    (store / "zarr.json").write_text(json.dumps({"attributes": {"source": "metaworld", "generator": generator}}))
    run = tmp_path / "run"
    run.mkdir()
    assert dataset_settings_of_run(run) == {}
    (run / "config.json").write_text(json.dumps({"data": {"dataset": str(store)}, "lr": 1e-4}))
    assert dataset_settings_of_run(run) == {"image_size": 64, "cameras": ["corner2"], "depth": True}


def _store_arrays(path):
    from robodual_core.data.zarr_io import zarr_module

    root = zarr_module().open_group(str(path), mode="r")
    return {f"{group}/{key}": root[group][key][:] for group in ("data", "meta") for key in root[group].array_keys()}


@pytest.mark.hostile
@pytest.mark.slow
def test_generate_killed_with_sigkill_resumes_bit_identical(tmp_path):
    """kill -9 after the first episodes commit, --resume: every array byte for byte, counters cumulative."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    from robodual_core.data import open_dataset
    from robodual_envs.metaworld import generate

    # two tasks, episode-major: reach 0, push 0, reach 1, push 1. The resumed process starts a fresh simulator
    # for slots the uninterrupted run played on a reused one (push 1 after push 0).
    flags = ["--tasks", "reach,push", "--episodes-per-task", "2", "--image-size", "32", "--max-steps", "150",
             "--seed", "3"]
    options = generate.GenerateOptions(tasks=["reach-v3", "push-v3"], episodes_per_task=2, image_size=32,
                                       max_steps=150, seed=3)
    full_summary = generate.generate_dataset(tmp_path / "full.zarr", options, progress=False)

    out = tmp_path / "killed.zarr"
    cmd = [sys.executable, "-m", "robodual_cli.app", "dataset", "generate", "metaworld", str(out), *flags]
    meta = tmp_path / "killed.zarr.partial" / "zarr.json"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    deadline = time.monotonic() + 300
    committed = 0
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                attrs = json.loads(meta.read_text()).get("attributes", {})
                committed = int((attrs.get("generator_progress") or {}).get("episodes", 0))
            except (OSError, ValueError):
                committed = 0
            if committed >= 2:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert committed >= 2 and not out.exists() and meta.parent.is_dir()

    resumed = subprocess.run([*cmd, "--resume", "--json"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads(resumed.stdout)
    for key in ("episodes", "steps", "attempts", "sim_steps", "failed_slots"):
        assert summary[key] == full_summary[key], key  # every segment counted, not only the last

    full, again = _store_arrays(tmp_path / "full.zarr"), _store_arrays(out)
    assert sorted(full) == sorted(again)
    for key, value in full.items():
        assert value.dtype == again[key].dtype and value.shape == again[key].shape, key
        assert value.tobytes() == again[key].tobytes(), f"{key} differs after kill -9 and --resume"
    a, b = open_dataset(tmp_path / "full.zarr").attrs, open_dataset(out).attrs
    timing = ("seconds", "sim_steps_per_s")
    assert {k: v for k, v in a["generation"].items() if k not in timing} == \
        {k: v for k, v in b["generation"].items() if k not in timing}
    assert a["stats"] == b["stats"]
    assert "generator_progress" not in b and "generator_pending" not in b
