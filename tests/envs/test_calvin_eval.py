"""CALVIN evaluation protocol bookkeeping, with the deterministic stand-in simulator (no calvin_env needed).

The scripted policies below are also built inside spawned worker processes (by "module:attr" name).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from importlib import resources

import numpy as np
import pytest

from robodual_core.errors import RobodualError
from robodual_envs.calvin import protocol
from robodual_envs.calvin.env import StandInCalvinEnv, preprocess, to_env_action
from robodual_envs.calvin.evaluate import ChainLog, EvalOptions, EvalSpec, evaluate

POLICY = f"{__name__}:ScriptedPolicy"
TASK_OF = {t["validation_instruction"]: name for name, t in protocol.tasks().items()}


class ScriptedPolicy:
    """Moves along the stand-in direction of the instructed task; optional faults per task name."""

    def __init__(self, hang: tuple = (), crash: tuple = (), raise_on: tuple = (), gripper: float = 0.7):
        self.hang, self.crash, self.raise_on, self.gripper = set(hang), set(crash), set(raise_on), gripper
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1

    def step(self, obs: dict, instruction: str) -> np.ndarray:
        task = TASK_OF.get(instruction, instruction)
        if task in self.hang:
            time.sleep(3600)
        if task in self.crash:
            os._exit(7)
        if task in self.raise_on:
            raise ValueError(f"cannot do {task}")
        return np.concatenate([StandInCalvinEnv.direction(task), np.zeros(3), [self.gripper]])


def spec(unsolvable=(), max_steps: int = 20, **policy_kwargs) -> EvalSpec:
    return EvalSpec(policy_kwargs=policy_kwargs, env_kwargs={"simulator": "standin", "unsolvable": list(unsolvable)},
                    policy_factory=POLICY, max_steps=max_steps)


def read_log(out) -> list[dict]:
    return [json.loads(line) for line in (out / "chains.jsonl").read_text().splitlines()]


# -- package data ---------------------------------------------------------------------------------------
def test_package_data_is_the_official_protocol():
    data = resources.files("robodual_envs.calvin").joinpath("data")
    assert hashlib.sha256(data.joinpath("eval_sequences_1000.json").read_bytes()).hexdigest() == \
        "c730714c38fca46404e5002c610642f74fb58a960371c404568b96d2fda37a1a"
    assert hashlib.sha256(data.joinpath("eval_initial_states_1000.json").read_bytes()).hexdigest() == \
        "80cdb6da09706ae1b3dd7ceb3fbc1ae2b9fd1646ba8439b2999a8376977f23ed"
    assert "MIT License" in data.joinpath("NOTICE").read_text()
    chains = protocol.chains()
    assert len(chains) == 1000 and all(len(c.subtasks) == 5 for c in chains)
    assert chains[0].subtasks == ("rotate_blue_block_right", "move_slider_right", "lift_red_block_slider",
                                  "place_in_slider", "turn_off_lightbulb")
    assert len(chains[0].robot_obs) == 15 and len(chains[0].scene_obs) == 24
    assert len(protocol.tasks()) == 34 and {t for c in chains for t in c.subtasks} == set(protocol.tasks())
    assert protocol.oracle_specs()["rotate_red_block_right"] == ["rotate_object", "block_red", -60]
    assert [c.index for c in protocol.chains(998, 5)] == [998, 999]
    with pytest.raises(RobodualError, match="--start"):
        protocol.chains(1000)


# -- adapter pieces that need no simulator ------------------------------------------------------------------
def test_preprocess_and_action_mapping_match_the_converter():
    rng = np.random.default_rng(0)
    robot_obs = rng.normal(size=15)
    raw = {"rgb_obs": {"rgb_static": rng.integers(0, 255, (200, 200, 3), dtype=np.uint8),
                       "rgb_gripper": rng.integers(0, 255, (84, 84, 3), dtype=np.uint8),
                       "rgb_tactile": np.zeros((160, 120, 6), np.uint8)},
           "depth_obs": {"depth_static": rng.random((200, 200)), "depth_gripper": rng.random((84, 84)),
                         "depth_tactile": np.zeros((160, 120, 2))},
           "robot_obs": robot_obs, "scene_obs": rng.normal(size=24)}
    obs = preprocess(raw)
    assert obs["rgb_static"].shape == (200, 200, 3) and obs["rgb_static"].dtype == np.uint8
    assert obs["depth_gripper"].dtype == np.float32 and obs["tactile"].shape == (160, 120, 6)
    assert obs["depth_tactile"].shape == (160, 120, 2) and obs["robot_obs"].dtype == np.float64
    np.testing.assert_array_equal(obs["proprio"], np.r_[robot_obs[:6], robot_obs[-1:]].astype(np.float32))
    small = preprocess(raw, image_size=64)
    assert small["rgb_static"].shape == (64, 64, 3) and small["depth_static"].shape == (64, 64)
    assert small["tactile"].shape == (160, 120, 6)  # the converter never resizes tactile

    a = to_env_action([2.0, -0.5, 0.1, 0, 0, -3, 0.2])
    assert a.tolist() == [1.0, -0.5, 0.1, 0, 0, -1.0, 1.0]
    assert to_env_action(np.r_[np.zeros(6), -1e-6])[-1] == -1.0
    assert to_env_action(np.zeros(7))[-1] == -1.0
    with pytest.raises(RobodualError, match="7 values"):
        to_env_action(np.zeros(6))
    with pytest.raises(RobodualError, match="non-finite"):
        to_env_action([np.nan] * 7)


def test_standin_has_the_real_observation_keys_and_environment_api():
    env = StandInCalvinEnv(tactile=True)
    keys = env.spec.observation_keys
    assert keys["rgb_static"] == ((200, 200, 3), "uint8") and keys["rgb_gripper"] == ((84, 84, 3), "uint8")
    assert keys["proprio"] == ((7,), "float32") and keys["tactile"] == ((160, 120, 6), "uint8")
    first = env.reset(seed=0)
    assert first.instruction == protocol.tasks()["rotate_blue_block_right"]["validation_instruction"]
    direction = np.r_[StandInCalvinEnv.direction("rotate_blue_block_right"), np.zeros(3), 1.0]
    done = [env.step(direction)[2] for _ in range(5)]
    assert done == [False] * 4 + [True] and env.success()


# -- the chain loop -------------------------------------------------------------------------------------
def test_chain_runs_all_subtasks_and_resets_the_policy_before_each():
    env, policy = StandInCalvinEnv(), ScriptedPolicy()
    chain = protocol.chains(0, 1)[0]
    record = protocol.run_chain(env, policy, chain, protocol.Instructions.official())
    assert record["completed"] == 5 and record["error"] is None
    assert [r["steps"] for r in record["subtask_results"]] == [5] * 5  # 0.1 m at 0.02 m per step
    assert policy.resets == 5 and record["steps"] == 25
    assert record["subtask_results"][0]["instruction"] == "take the blue block and rotate it to the right"
    assert record["sim_s"] > 0 and record["policy_s"] > 0


def test_chain_stops_at_the_first_failed_subtask():
    chain = protocol.chains(0, 1)[0]
    env, policy = StandInCalvinEnv(unsolvable=[chain.subtasks[2]]), ScriptedPolicy()
    record = protocol.run_chain(env, policy, chain, protocol.Instructions.official(), max_steps=30)
    assert record["completed"] == 2
    assert [r["success"] for r in record["subtask_results"]] == [True, True, False]
    assert record["subtask_results"][-1]["steps"] == 30 and record["steps"] == 5 + 5 + 30
    assert policy.resets == 3


def test_a_wrong_policy_fails_the_first_subtask():
    chain = protocol.chains(3, 1)[0]
    wrong = ScriptedPolicy()
    wrong.step = lambda obs, instruction: np.r_[-StandInCalvinEnv.direction(TASK_OF[instruction]), 0, 0, 0, 1]
    record = protocol.run_chain(StandInCalvinEnv(), wrong, chain, protocol.Instructions.official(), max_steps=10)
    assert record["completed"] == 0 and len(record["subtask_results"]) == 1


def official_count_success(results):  # calvin_agent.evaluation.utils.count_success
    count = Counter(results)
    return [sum(count[j] for j in reversed(range(i, 6))) / len(results) for i in range(1, 6)]


def test_aggregate_matches_the_official_formulas():
    rng = np.random.default_rng(1)
    chains = protocol.chains(0, 50)
    completed = rng.integers(0, 6, size=50).tolist()
    records = [{"chain": c.index, "subtasks": list(c.subtasks), "completed": n} for c, n in zip(chains, completed, strict=True)]
    agg = protocol.aggregate(records[::-1])
    assert [agg["chain_sr"][str(i)] for i in range(1, 6)] == pytest.approx(official_count_success(completed))
    assert agg["avg_len"] == pytest.approx(np.mean(completed)) and agg["num_chains"] == 50
    ok, fail = Counter(), Counter()
    for c, n in zip(chains, completed, strict=True):
        ok.update(c.subtasks[:n])
        if n < 5:
            fail[c.subtasks[n]] += 1
    for task, info in agg["task_info"].items():
        assert info["success"] == ok[task] and info["total"] == ok[task] + fail[task]
    assert agg["errors"] == []


def test_instructions_official_and_paraphrases(tmp_path):
    official = protocol.Instructions.official()
    assert official("open_drawer", 0, 0) == protocol.tasks()["open_drawer"]["validation_instruction"]
    phrases = {name: t["training_phrases"] for name, t in protocol.tasks().items()}
    phrases["open_drawer"] = "pull the drawer open"
    path = tmp_path / "para.json"
    path.write_text(json.dumps(phrases))
    para = protocol.Instructions.from_file(path, seed=3)
    assert para("open_drawer", 5, 1) == "pull the drawer open"
    picks = [para("rotate_red_block_right", chain, 0) for chain in range(40)]
    assert set(picks) <= set(phrases["rotate_red_block_right"]) and len(set(picks)) > 3
    assert picks == [protocol.Instructions.from_file(path, seed=3)("rotate_red_block_right", c, 0) for c in range(40)]
    del phrases["open_drawer"]
    path.write_text(json.dumps({**phrases, "fly": "x"}))
    with pytest.raises(RobodualError, match="unknown task"):
        protocol.Instructions.from_file(path)
    path.write_text(json.dumps(phrases))
    with pytest.raises(RobodualError, match="open_drawer"):
        protocol.Instructions.from_file(path)


# -- the evaluation: results file, resume, workers, faults --------------------------------------------------
def test_evaluate_in_process_writes_results_and_resumes(tmp_path):
    out = tmp_path / "eval"
    unsolvable = ["move_slider_right"]
    s = spec(unsolvable=unsolvable)
    first = evaluate(s, out, EvalOptions(chains=6, workers=0, progress=False))
    assert first["num_chains"] == 6 and first["performance"]["chains_run"] == 6
    expected = [next((i for i, t in enumerate(c.subtasks) if t in unsolvable), 5) for c in protocol.chains(0, 6)]
    assert [r["completed"] for r in read_log(out)] == expected
    assert first["avg_len"] == pytest.approx(np.mean(expected))
    assert json.loads((out / "results.json").read_text())["chain_sr"] == first["chain_sr"]

    with pytest.raises(RobodualError, match="--resume"):
        evaluate(s, out, EvalOptions(chains=6, workers=0, progress=False))
    with (out / "chains.jsonl").open("ab") as f:
        f.write(b'{"chain": 6, "subt')  # a crash in the middle of a write
    again = evaluate(s, out, EvalOptions(chains=9, workers=0, resume=True, progress=False))
    assert again["num_chains"] == 9 and again["performance"]["chains_run"] == 3
    assert sorted(r["chain"] for r in read_log(out)) == list(range(9))
    assert len(ChainLog(out / "chains.jsonl").read()) == 9

    with pytest.raises(RobodualError, match="max_steps"):
        evaluate(spec(unsolvable=unsolvable, max_steps=50), out, EvalOptions(chains=9, workers=0, resume=True,
                                                                              progress=False))
    fresh = evaluate(s, out, EvalOptions(start=2, chains=2, workers=0, overwrite=True, progress=False))
    assert fresh["chains"] == [2, 3] and [r["chain"] for r in read_log(out)] == [2, 3]


def test_workers_cover_every_chain_exactly_once_and_write_videos(tmp_path):
    out = tmp_path / "eval"
    report = evaluate(spec(), out, EvalOptions(chains=10, workers=3, videos=2, progress=False))
    records = read_log(out)
    assert sorted(r["chain"] for r in records) == list(range(10))  # 10 % 3 != 0
    assert report["num_chains"] == 10 and report["avg_len"] == 5.0 and report["errors"] == []
    perf = report["performance"]
    assert perf["workers"] == 3 and perf["sim_steps_per_s"] > 0 and perf["policy_steps_per_s"] > 0
    assert perf["sim_share"] + perf["policy_share"] == pytest.approx(1.0)
    videos = sorted(p.name for p in (out / "videos").iterdir())
    assert videos == ["chain_0000.mp4", "chain_0001.mp4"]
    assert (out / "videos" / "chain_0000.mp4").stat().st_size > 1000


@pytest.mark.hostile
@pytest.mark.slow
def test_hung_and_crashed_workers_are_retried_once_then_recorded(tmp_path):
    chains = protocol.chains(0, 6)
    anywhere = Counter(t for c in chains for t in set(c.subtasks))
    unique = [c for c in chains if anywhere[c.subtasks[0]] == 1]  # a fault on its first task hits one chain only
    hang_chain, crash_chain, raise_chain = unique[:3]
    s = spec(hang=[hang_chain.subtasks[0]], crash=[crash_chain.subtasks[0]], raise_on=[raise_chain.subtasks[0]])
    out = tmp_path / "eval"
    report = evaluate(s, out, EvalOptions(chains=6, workers=2, timeout=2.0, progress=False))
    by_chain = {r["chain"]: r for r in read_log(out)}
    assert sorted(by_chain) == list(range(6))
    assert "no progress" in by_chain[hang_chain.index]["error"] and by_chain[hang_chain.index]["attempts"] == 2
    assert "died" in by_chain[crash_chain.index]["error"] and by_chain[crash_chain.index]["attempts"] == 2
    assert "ValueError" in by_chain[raise_chain.index]["error"] and by_chain[raise_chain.index]["attempts"] == 1
    faulty = {hang_chain.index, crash_chain.index, raise_chain.index}
    assert all(r["completed"] == 0 for i, r in by_chain.items() if i in faulty)
    assert all(r["completed"] == 5 and r["error"] is None for i, r in by_chain.items() if i not in faulty)
    assert len(report["errors"]) == 3 and report["avg_len"] == pytest.approx(5 * 3 / 6)


@pytest.mark.hostile
def test_worker_setup_failure_is_one_error(tmp_path):
    s = spec()
    s.policy_kwargs = {"no_such_option": 1}
    with pytest.raises(RobodualError, match="could not start.*no_such_option"):
        evaluate(s, tmp_path / "eval", EvalOptions(chains=2, workers=1, progress=False))


@pytest.mark.hostile
def test_cli_without_calvin_env_says_how_to_install(tmp_path, capsys):
    try:
        import calvin_env  # noqa: F401
        pytest.skip("calvin_env is installed")
    except ImportError:
        pass
    from robodual_cli.app import main

    with pytest.raises(SystemExit) as exc:
        main(["eval", "calvin", "--policy", str(tmp_path)])
    assert exc.value.code == 1
    message = capsys.readouterr().err.strip()
    assert "calvin_env is not installed" in message and "github.com/mees/calvin_env" in message
    assert len(message.splitlines()) == 1
