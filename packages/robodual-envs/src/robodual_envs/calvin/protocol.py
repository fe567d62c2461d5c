"""The official CALVIN long-horizon protocol (Mees et al. 2022; RoboDual paper 4.1, Table 1).

1000 fixed chains of 5 subtasks. Each chain starts from its own simulator state; the subtasks run one
after another without resetting the simulator in between; each subtask gets at most 360 control steps;
after every step the task oracle compares the simulator's info at the start of the subtask with the
current one; the first failed subtask ends the chain. The policy is reset before every subtask, as
``calvin_agent/evaluation/evaluate_policy.py`` does. Reported: the share of chains whose first ``i``
subtasks all succeeded (i = 1..5) and the average number of subtasks completed in a row.

The chains, their initial states and the 34 tasks ship as package data (``data/``, MIT, see
``data/NOTICE``), so CALVIN's evaluation package is not needed. Nothing here imports calvin_env: an
environment is anything with the :class:`ChainEnv` methods (the real one is
:class:`robodual_envs.calvin.env.CalvinEnv`).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from robodual_core.errors import RobodualError

NUM_CHAINS = 1000
CHAIN_LENGTH = 5
EP_LEN = 360  # control steps per subtask (evaluate_policy.EP_LEN)


class ChainEnv(Protocol):
    """What the protocol needs from a simulator (observations are dicts of numpy arrays by dataset key)."""

    def reset_to(self, robot_obs: np.ndarray, scene_obs: np.ndarray) -> dict[str, np.ndarray]: ...

    def step_obs(self, action: np.ndarray) -> dict[str, np.ndarray]: ...

    def info(self) -> Any: ...

    def solved(self, task: str, start_info: Any, info: Any) -> bool: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Chain:
    """One evaluation chain: its index in the official list, its 5 subtasks and its start state."""

    index: int
    subtasks: tuple[str, ...]
    robot_obs: tuple[float, ...]
    scene_obs: tuple[float, ...]


def _data(name: str) -> Any:
    return json.loads(resources.files("robodual_envs.calvin").joinpath("data", name).read_text())


@cache
def tasks() -> dict[str, dict[str, Any]]:
    """The 34 tasks by name: ``validation_instruction``, ``training_phrases``, ``oracle_spec``, ``task_category``."""
    return {t["name"]: t for t in _data("tasks.json")["tasks"]}


def oracle_specs() -> dict[str, list[Any]]:
    """``{task: [Tasks method, *args]}``: what ``calvin_env.envs.tasks.Tasks(...)`` is built from."""
    return {name: list(t["oracle_spec"]) for name, t in tasks().items()}


@cache
def _all_chains() -> tuple[Chain, ...]:
    sequences, states = _data("eval_sequences_1000.json"), _data("eval_initial_states_1000.json")
    return tuple(Chain(i, tuple(seq["subtasks"]), tuple(st["robot_obs"]), tuple(st["scene_obs"]))
                 for i, (seq, st) in enumerate(zip(sequences, states, strict=True)))


def chains(start: int = 0, count: int | None = None) -> list[Chain]:
    """The official chains ``start .. start + count - 1`` (all remaining ones when ``count`` is None)."""
    if not 0 <= start < NUM_CHAINS:
        raise RobodualError(f"--start is {start}; expected 0 <= start < {NUM_CHAINS} (the official chain list)")
    if count is not None and count < 1:
        raise RobodualError(f"--chains is {count}; expected at least 1")
    end = NUM_CHAINS if count is None else min(NUM_CHAINS, start + count)
    return list(_all_chains()[start:end])


class Instructions:
    """The sentence given to the policy for each subtask.

    By default the official one (``validation_instruction``, what ``val_annotations[subtask][0]`` returns).
    With a paraphrase file, each task maps to one sentence or a list; from a list, the sentence for subtask
    ``position`` of chain ``chain`` is drawn with a generator seeded by ``(seed, chain, position)``, so the
    choice does not depend on sharding or resuming.
    """

    def __init__(self, phrases: Mapping[str, list[str]], seed: int = 0, source: str = "validation"):
        self.phrases, self.seed, self.source = dict(phrases), seed, source

    @classmethod
    def official(cls) -> Instructions:
        return cls({name: [t["validation_instruction"]] for name, t in tasks().items()})

    @classmethod
    def from_file(cls, path: str | Path, seed: int = 0) -> Instructions:
        """A JSON or YAML mapping ``{task: sentence | [sentences]}`` covering all 34 tasks."""
        path = Path(path)
        if not path.is_file():
            raise RobodualError(f"--instructions '{path}' does not exist; expected a JSON or YAML file "
                                "mapping each CALVIN task to a sentence or a list of sentences")
        text = path.read_text()
        try:
            if path.suffix.lower() in (".yaml", ".yml"):
                import yaml

                raw = yaml.safe_load(text)
            else:
                raw = json.loads(text)
        except Exception as exc:
            raise RobodualError(f"--instructions '{path}' could not be parsed: {exc}") from None
        if not isinstance(raw, dict):
            raise RobodualError(f"--instructions '{path}': expected a mapping {{task: sentence(s)}}, "
                                f"found {type(raw).__name__}")
        known = tasks()
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise RobodualError(f"--instructions '{path}' names unknown task(s) {unknown}; the CALVIN tasks are "
                                f"{', '.join(known)}")
        missing = sorted(set(known) - set(raw))
        if missing:
            raise RobodualError(f"--instructions '{path}' has no sentence for task(s) {missing}; every one of the "
                                f"{len(known)} tasks needs one")
        phrases: dict[str, list[str]] = {}
        for task, value in raw.items():
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, list) or not items or not all(isinstance(s, str) and s.strip() for s in items):
                raise RobodualError(f"--instructions '{path}' key '{task}': expected a non-empty sentence or list "
                                    f"of sentences, found {value!r}")
            phrases[task] = items
        return cls(phrases, seed=seed, source=str(path))

    def __call__(self, task: str, chain: int, position: int) -> str:
        options = self.phrases[task]
        if len(options) == 1:
            return options[0]
        return options[int(np.random.default_rng([self.seed, chain, position]).integers(len(options)))]

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "seed": self.seed}


class StepTimer:
    """Seconds spent in the simulator and in the policy, and steps of each."""

    def __init__(self) -> None:
        self.sim_s = self.policy_s = 0.0
        self.sim_steps = self.policy_steps = 0


def run_chain(env: ChainEnv, policy: Any, chain: Chain, instructions: Instructions, max_steps: int = EP_LEN,
              on_step: Callable[[], None] | None = None,
              on_frame: Callable[[dict[str, np.ndarray], str], None] | None = None) -> dict[str, Any]:
    """Run one chain (the official ``evaluate_sequence``) and return its JSON-able record.

    ``on_step`` is called after every control step (a heartbeat); ``on_frame(obs, instruction)`` sees every
    observation (for videos). Exceptions propagate: the caller records them.
    """
    timer = StepTimer()
    t0 = time.perf_counter()
    obs = env.reset_to(np.asarray(chain.robot_obs), np.asarray(chain.scene_obs))
    timer.sim_s += time.perf_counter() - t0
    results: list[dict[str, Any]] = []
    for position, task in enumerate(chain.subtasks):
        instruction = instructions(task, chain.index, position)
        policy.reset()
        start_info = env.info()
        success, steps = False, 0
        if on_frame is not None:
            on_frame(obs, instruction)
        while steps < max_steps:
            t1 = time.perf_counter()
            action = policy.step(obs, instruction)
            t2 = time.perf_counter()
            obs = env.step_obs(action)
            steps += 1
            success = env.solved(task, start_info, env.info())
            t3 = time.perf_counter()
            timer.policy_s += t2 - t1
            timer.sim_s += t3 - t2
            if on_frame is not None:
                on_frame(obs, instruction)
            if on_step is not None:
                on_step()
            if success:
                break
        timer.sim_steps += steps
        results.append({"task": task, "success": success, "steps": steps, "instruction": instruction})
        if not success:
            break
    completed = sum(r["success"] for r in results)
    return {"chain": chain.index, "subtasks": list(chain.subtasks), "completed": completed, "subtask_results": results,
            "error": None, "steps": timer.sim_steps, "sim_s": timer.sim_s, "policy_s": timer.policy_s,
            "wall_s": time.perf_counter() - t0}


def failed_record(chain: Chain, error: str, attempts: int) -> dict[str, Any]:
    """The record of a chain that could not be run (crash, hang, exception): it counts as 0 completed."""
    return {"chain": chain.index, "subtasks": list(chain.subtasks), "completed": 0, "subtask_results": [],
            "error": error, "attempts": attempts, "steps": 0, "sim_s": 0.0, "policy_s": 0.0, "wall_s": 0.0}


def chain_success_rates(completed: list[int]) -> dict[str, float]:
    """``{"1": ..., "5": ...}``: the share of chains whose first i subtasks all succeeded (``count_success``)."""
    n = max(len(completed), 1)
    return {str(i): sum(c >= i for c in completed) / n for i in range(1, CHAIN_LENGTH + 1)}


def aggregate(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Success per chain length, average length and per-task success, as ``print_and_save`` computes them.

    A task counts as attempted in every chain that reached it: succeeded when it is among the first
    ``completed`` subtasks, failed when it is the subtask the chain stopped at. Chains recorded with an
    error count as 0 completed, and their first subtask as failed.
    """
    records = sorted(records, key=lambda r: r["chain"])
    completed = [int(r["completed"]) for r in records]
    ok, fail = Counter(), Counter()
    for r in records:
        seq = r["subtasks"]
        ok.update(seq[: r["completed"]])
        if r["completed"] < len(seq):
            fail[seq[r["completed"]]] += 1
    task_info = {task: {"success": ok[task], "total": ok[task] + fail[task],
                        "success_rate": ok[task] / (ok[task] + fail[task])}
                 for task in sorted(ok.keys() | fail.keys())}
    steps = sum(r.get("steps", 0) for r in records)
    sim_s = sum(r.get("sim_s", 0.0) for r in records)
    policy_s = sum(r.get("policy_s", 0.0) for r in records)
    return {
        "num_chains": len(records),
        "avg_len": float(np.mean(completed)) if completed else 0.0,
        "chain_sr": chain_success_rates(completed),
        "task_info": task_info,
        "errors": [{"chain": r["chain"], "error": r["error"]} for r in records if r.get("error")],
        "timing": {
            "steps": steps, "sim_s": sim_s, "policy_s": policy_s,
            "sim_steps_per_s": steps / sim_s if sim_s > 0 else None,
            "policy_steps_per_s": steps / policy_s if policy_s > 0 else None,
            "sim_share": sim_s / (sim_s + policy_s) if sim_s + policy_s > 0 else None,
            "policy_share": policy_s / (sim_s + policy_s) if sim_s + policy_s > 0 else None,
        },
    }
