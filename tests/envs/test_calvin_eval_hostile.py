"""Bad input to ``robodual eval calvin``: every case is refused in one line naming the flag or file, or (a
crashing, hanging or misbehaving policy) recorded per chain without losing the others. No calvin_env needed:
option checks run before the simulator is imported, and the runs use the stand-in simulator.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from robodual_core.errors import RobodualError
from robodual_envs.calvin import protocol
from robodual_envs.calvin.chainlog import ChainLog
from robodual_envs.calvin.env import StandInCalvinEnv
from robodual_envs.calvin.evaluate import EvalOptions, EvalSpec, evaluate

pytestmark = pytest.mark.hostile
TASK_OF = {t["validation_instruction"]: name for name, t in protocol.tasks().items()}
FIRST = protocol.chains(0, 1)[0].subtasks[0]


class Policy:
    """Solves stand-in tasks; misbehaves on request: ``crash_chain_task`` exits the process, ``action`` returns
    a fixed (bad) action, ``die_on_build`` exits while being built, ``noise`` writes to fd 1, ``delay`` sleeps."""

    def __init__(self, crash_task: str = "", action: list | None = None, die_on_build: bool = False,
                 noise: bool = False, delay: float = 0.0):
        if die_on_build:
            os._exit(3)
        self.crash_task, self.action, self.noise, self.delay = crash_task, action, noise, delay

    def reset(self) -> None:
        pass

    def step(self, obs: dict, instruction: str) -> np.ndarray:
        task = TASK_OF[instruction]
        if task == self.crash_task:
            os._exit(7)
        if self.noise:
            os.write(1, b"simulator noise on fd 1\n")
        if self.delay:
            time.sleep(self.delay)
        if self.action is not None:
            return np.asarray(self.action, dtype=float)
        return np.concatenate([StandInCalvinEnv.direction(task), np.zeros(3), [1.0]])


def spec(max_steps: int = 10, **policy_kwargs) -> EvalSpec:
    return EvalSpec(policy_kwargs=policy_kwargs, env_kwargs={"simulator": "standin"},
                    policy_factory=f"{__name__}:Policy", max_steps=max_steps)


def refused(capsys, args: list, *words: str) -> str:
    """``robodual eval calvin ARGS`` exits non-zero with one line on stderr holding ``words``."""
    from robodual_cli.app import main

    with pytest.raises(SystemExit) as exc:
        main(["eval", "calvin", *map(str, args)])
    assert exc.value.code not in (0, None)
    captured = capsys.readouterr()
    message = captured.err.strip()
    assert len(message.splitlines()) == 1, message
    assert "Traceback" not in message
    for word in words:
        assert word in message, message
    assert captured.out == ""
    return message


@pytest.fixture()
def not_a_policy(tmp_path):
    folder = tmp_path / "not_a_policy"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    return folder


# -- options: one line each, before anything is built ----------------------------------------------------------
@pytest.mark.parametrize("args, words", [
    (["--workers", "-1"], ["--workers", "-1"]),
    (["--chains", "0"], ["--chains", "0"]),
    (["--chains", "-3"], ["--chains", "-3"]),
    (["--start", "1000"], ["--start", "1000"]),
    (["--start", "-1"], ["--start", "-1"]),
    (["--max-steps", "0"], ["--max-steps", "0"]),
    (["--execute", "0"], ["--execute", "0"]),
    (["--timeout", "0"], ["--timeout", "0"]),
    (["--timeout", "nan"], ["--timeout", "nan"]),
    (["--videos", "-2"], ["--videos", "-2"]),
    (["--threads", "-1"], ["--threads", "-1"]),
    (["--image-size", "-64"], ["--image-size", "-64"]),
    (["--renderer", "vulkan"], ["--renderer", "vulkan", "egl"]),
    (["--simulator", "gazebo"], ["--simulator", "gazebo", "standin"]),
    (["--kind", "triple"], ["--kind", "triple", "specialist"]),
    (["--mode", "turbo"], ["--mode", "turbo", "async"]),
    (["--scene", "../../etc/passwd"], ["--scene"]),
    (["--resume", "--overwrite"], ["--resume", "--overwrite"]),
])
def test_bad_option_is_one_line(capsys, not_a_policy, args, words):
    refused(capsys, ["--policy", not_a_policy, *args], *words)


def test_workers_not_a_number_is_a_usage_error(capsys, not_a_policy):
    refused(capsys, ["--policy", not_a_policy, "--workers", "two"], "--workers")


# -- the policy folder ----------------------------------------------------------------------------------------
def test_policy_that_does_not_exist(capsys, tmp_path):
    refused(capsys, ["--policy", tmp_path / "nope", "--simulator", "standin"], "--policy", "does not exist")


def test_policy_that_is_a_file(capsys, tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 16)
    refused(capsys, ["--policy", tmp_path / "model.safetensors", "--simulator", "standin"], "--policy", "is a file")


def test_folder_that_is_not_a_policy(capsys, not_a_policy):
    refused(capsys, ["--policy", not_a_policy, "--simulator", "standin"], str(not_a_policy), "checkpoint")


def test_checkpoint_of_an_unknown_family(capsys, tmp_path):
    ckpt = tmp_path / "run" / "checkpoints" / "5"
    ckpt.mkdir(parents=True)
    (ckpt / "training_state.json").write_text("{}")
    (ckpt / "model.safetensors").write_bytes(b"not safetensors")
    (ckpt / "model_config.json").write_text(json.dumps({"family": "no_such_family"}))
    refused(capsys, ["--policy", tmp_path / "run", "--simulator", "standin"], "no_such_family")


# -- the dataset config (checked without calvin_env) --------------------------------------------------------
def _merged(tmp_path: Path, text: str) -> Path:
    hydra = tmp_path / "ds" / "validation" / ".hydra"
    hydra.mkdir(parents=True)
    (hydra / "merged_config.yaml").write_text(text)
    return tmp_path / "ds"


GOOD_SECTIONS = "env: {}\nscene: {}\nrobot: {}\n"


@pytest.mark.parametrize("text, words", [
    ("env: [unclosed\n  scene: {", ["not valid YAML"]),
    ("- just\n- a list\n", ["expected a mapping", "list"]),
    ("env: {}\ncameras: {static: {}, gripper: {}}\n", ["'scene'", "'robot'"]),
    (GOOD_SECTIONS + "cameras: {static: {}}\n", ["cameras", "gripper"]),
    (b"\xff\xfe\x00garbage".decode("latin-1"), ["--dataset-config"]),
])
def test_garbled_dataset_config(capsys, not_a_policy, tmp_path, text, words):
    refused(capsys, ["--policy", not_a_policy, "--dataset-config", _merged(tmp_path, text)], "--dataset-config", *words)


def test_dataset_config_folder_that_does_not_exist(capsys, not_a_policy, tmp_path):
    refused(capsys, ["--policy", not_a_policy, "--dataset-config", tmp_path / "missing"], "--dataset-config",
            "merged_config.yaml")


def test_dataset_folder_without_merged_config(capsys, not_a_policy, tmp_path):
    (tmp_path / "ds" / "validation").mkdir(parents=True)
    refused(capsys, ["--policy", not_a_policy, "--dataset-config", tmp_path / "ds"], "merged_config.yaml")


def test_tactile_without_a_tactile_camera(capsys, not_a_policy, tmp_path):
    ds = _merged(tmp_path, GOOD_SECTIONS + "cameras: {static: {}, gripper: {}}\n")
    refused(capsys, ["--policy", not_a_policy, "--dataset-config", ds, "--tactile"], "--tactile", "tactile")


# -- the instructions file ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, text, words", [
    ("bad.json", '{"open_drawer": "pull', ["could not be parsed"]),
    ("list.json", '["open the drawer"]', ["expected a mapping"]),
    ("unknown.json", '{"fly_to_the_moon": "go"}', ["unknown task", "fly_to_the_moon"]),
    ("empty.json", json.dumps({**{t: "do it" for t in protocol.tasks()}, "open_drawer": []}), ["open_drawer"]),
    ("blank.json", json.dumps({**{t: "do it" for t in protocol.tasks()}, "stack_block": "  "}), ["stack_block"]),
])
def test_bad_instructions_file(capsys, not_a_policy, tmp_path, name, text, words):
    path = tmp_path / name
    path.write_text(text)
    refused(capsys, ["--policy", not_a_policy, "--instructions", path], "--instructions", *words)


def test_instructions_file_that_does_not_exist(capsys, not_a_policy, tmp_path):
    refused(capsys, ["--policy", not_a_policy, "--instructions", tmp_path / "none.json"], "--instructions",
            "does not exist")


# -- damaged output folders and resume ---------------------------------------------------------------------
def test_out_that_is_a_file(tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(RobodualError, match="--out .* is a file"):
        evaluate(spec(), tmp_path / "out", EvalOptions(chains=1, workers=0, progress=False))


def test_garbled_line_in_the_chain_log_names_the_line(tmp_path):
    out = tmp_path / "eval"
    evaluate(spec(), out, EvalOptions(chains=2, workers=0, progress=False))
    lines = (out / "chains.jsonl").read_text().splitlines()
    (out / "chains.jsonl").write_text("\n".join([lines[0], "{{{ not json", lines[1]]) + "\n")
    with pytest.raises(RobodualError, match="line 2 is not a chain record"):
        evaluate(spec(), out, EvalOptions(chains=3, workers=0, resume=True, progress=False))


@pytest.mark.parametrize("record", [{"chain": 5000, "completed": 1, "subtasks": ["a"] * 5},
                                    {"chain": "zero", "completed": 1, "subtasks": ["a"] * 5},
                                    {"chain": 0, "completed": 9, "subtasks": ["a"] * 5},
                                    {"chain": 0}, [1, 2, 3]])
def test_chain_log_record_out_of_range_is_refused(tmp_path, record):
    path = tmp_path / "chains.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(RobodualError, match="line 1 is not a chain record"):
        ChainLog(path).read()


def test_chain_log_that_is_a_folder(tmp_path):
    (tmp_path / "eval" / "chains.jsonl").mkdir(parents=True)
    with pytest.raises(RobodualError, match="is not a file"):
        evaluate(spec(), tmp_path / "eval", EvalOptions(chains=1, workers=0, progress=False))


@pytest.mark.parametrize("content", ["{not json", '{"spec": 3}', "[]", ""])
def test_damaged_run_json_on_resume(tmp_path, content):
    out = tmp_path / "eval"
    evaluate(spec(), out, EvalOptions(chains=1, workers=0, progress=False))
    (out / "run.json").write_text(content)
    with pytest.raises(RobodualError, match="run.json' is damaged"):
        evaluate(spec(), out, EvalOptions(chains=2, workers=0, resume=True, progress=False))


def test_resume_with_another_policy_is_refused(tmp_path):
    out = tmp_path / "eval"
    evaluate(spec(), out, EvalOptions(chains=1, workers=0, progress=False))
    with pytest.raises(RobodualError, match="policy_kwargs"):
        evaluate(spec(delay=0.001), out, EvalOptions(chains=2, workers=0, resume=True, progress=False))


@pytest.mark.parametrize("field, value", [("workers", -1), ("threads", -1), ("videos", -1), ("workers", True),
                                          ("timeout", 0.0), ("timeout", float("inf")), ("setup_timeout", -5.0)])
def test_evaluate_refuses_bad_options(tmp_path, field, value):
    with pytest.raises(RobodualError, match=field.replace("_", "-")):
        evaluate(spec(), tmp_path / "eval", EvalOptions(chains=1, progress=False, **{field: value}))
    assert not (tmp_path / "eval").exists()


# -- misbehaving policies and workers ------------------------------------------------------------------------
@pytest.mark.parametrize("action, words", [([np.nan] * 7, "non-finite"), ([0.0] * 6, "7 values"),
                                           ([[0.0] * 7] * 2, "7 values")])
def test_bad_actions_fail_that_chain_only(tmp_path, action, words):
    report = evaluate(spec(action=action), tmp_path / "eval", EvalOptions(chains=2, workers=0, progress=False))
    assert report["num_chains"] == 2 and len(report["errors"]) == 2
    assert all(words in e["error"] for e in report["errors"])


def test_worker_that_crashes_names_the_chain_and_exit_code_and_resume_continues(tmp_path):
    out = tmp_path / "eval"
    s = spec(crash_task=FIRST)
    report = evaluate(s, out, EvalOptions(chains=2, workers=1, timeout=60, progress=False))
    crashed = next(e for e in report["errors"] if e["chain"] == 0)
    assert "chain 0" in crashed["error"] and "exit code 7" in crashed["error"]
    again = evaluate(s, out, EvalOptions(chains=4, workers=1, timeout=60, resume=True, progress=False))
    log = [json.loads(line)["chain"] for line in (out / "chains.jsonl").read_text().splitlines()]
    assert sorted(log) == [0, 1, 2, 3] and again["performance"]["chains_run"] == 2


def test_worker_that_dies_while_building_is_one_error(tmp_path):
    with pytest.raises(RobodualError, match=r"died \(exit code 3\) while building"):
        evaluate(spec(die_on_build=True), tmp_path / "eval", EvalOptions(chains=2, workers=1, progress=False))


def test_json_stdout_stays_json_when_the_policy_prints_to_fd_1(tmp_path, capfd):
    from robodual_envs.calvin.commands import _evaluate_json

    saved = os.dup(1)
    try:
        _evaluate_json(spec(noise=True), tmp_path / "eval", EvalOptions(chains=1, workers=0, progress=False))
        os.write(1, b"printed later, e.g. by pybullet at exit\n")
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
    captured = capfd.readouterr()
    assert json.loads(captured.out)["num_chains"] == 1
    assert "simulator noise on fd 1" in captured.err and "printed later" in captured.err


@pytest.mark.slow
def test_kill_9_of_the_evaluation_then_resume_runs_each_chain_once(tmp_path):
    out = tmp_path / "eval"
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); from {__name__} import spec; "
            "from robodual_envs.calvin.evaluate import EvalOptions, evaluate; "
            f"evaluate(spec(delay=0.05), {str(out)!r}, EvalOptions(chains=6, workers=1, progress=False))")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            log = out / "chains.jsonl"
            if log.is_file() and len(log.read_bytes().splitlines()) >= 1:
                break
            time.sleep(0.05)
        else:
            pytest.fail("no chain finished within 120 s")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the parent and its worker, like a machine going away
        proc.wait()
    before = len(ChainLog(out / "chains.jsonl").read())
    assert 1 <= before < 6
    report = evaluate(spec(delay=0.05), out, EvalOptions(chains=6, workers=1, resume=True, progress=False))
    chains = [json.loads(line)["chain"] for line in (out / "chains.jsonl").read_text().splitlines()]
    assert sorted(chains) == list(range(6)) and report["num_chains"] == 6 and report["errors"] == []
