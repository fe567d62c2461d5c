"""Meta-World's scripted experts (``metaworld.policies``) behind robodual's Policy interface."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from robodual_core.errors import RobodualError
from robodual_envs.metaworld.tasks import task_of_instruction


def expert_for(task: str) -> Any:
    """The scripted expert of ``task`` (an object with ``get_action(state_39d) -> [4]``)."""
    from metaworld.policies import ENV_POLICY_MAP

    if task not in ENV_POLICY_MAP:
        raise RobodualError(f"no scripted Meta-World expert for task '{task}'; "
                            f"experts exist for: {', '.join(sorted(ENV_POLICY_MAP))}")
    return ENV_POLICY_MAP[task]()


def expert_action(expert: Any, state: np.ndarray) -> np.ndarray:
    """The expert's action for a 39-D state, clipped to the action space [-1, 1], float32 [4]."""
    with warnings.catch_warnings():  # the experts warn when their gains exceed the action bounds
        warnings.simplefilter("ignore")
        action = expert.get_action(np.asarray(state, dtype=np.float64))
    return np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)


class ScriptedExpertPolicy:
    """A :class:`~robodual_core.interfaces.Policy` that reads the ``state`` observation key.

    With ``task=None`` the task is recovered from the instruction (every paraphrase names one task), so one
    policy object serves a multi-task evaluation. Useful as an upper bound and to test evaluation code.
    """

    def __init__(self, task: str | None = None):
        self.task = task
        self._experts: dict[str, Any] = {}

    def reset(self) -> None:
        pass

    def step(self, observation: dict[str, np.ndarray], instruction: str) -> np.ndarray:
        task = self.task or task_of_instruction(instruction)
        if task is None:
            raise RobodualError(f"ScriptedExpertPolicy: cannot tell the task from the instruction '{instruction}'; "
                                "pass task=...")
        if "state" not in observation:
            raise RobodualError("ScriptedExpertPolicy: the observation has no 'state' key (Meta-World's 39-D state); "
                                f"found keys {sorted(observation)}")
        if task not in self._experts:
            self._experts[task] = expert_for(task)
        return expert_action(self._experts[task], observation["state"])


class RandomPolicy:
    """Uniform random actions in [-1, 1]^4, reproducible after ``reset`` (a baseline and a test fixture)."""

    def __init__(self, seed: int = 0, action_dim: int = 4):
        self.seed = seed
        self.action_dim = action_dim
        self._rng = np.random.default_rng(seed)

    def reset(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def step(self, observation: dict[str, np.ndarray], instruction: str) -> np.ndarray:
        return self._rng.uniform(-1.0, 1.0, self.action_dim).astype(np.float32)


def scripted_expert_factory() -> ScriptedExpertPolicy:
    return ScriptedExpertPolicy()


def random_policy_factory(seed: int = 0) -> RandomPolicy:
    return RandomPolicy(seed)
