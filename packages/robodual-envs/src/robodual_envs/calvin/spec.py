"""What ``robodual eval calvin`` evaluates (:class:`EvalSpec`, sent to every worker) and how (:class:`EvalOptions`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from robodual_core.errors import RobodualError

DEFAULT_POLICY_FACTORY = "robodual_envs.calvin.spec:load_run_policy"
LEGACY_NAMES = {"robodual_envs.calvin.evaluate:load_run_policy": DEFAULT_POLICY_FACTORY}  # in older run.json files
ENV_FACTORY = "robodual_envs.calvin.env:make_chain_env"
KINDS = ("auto", "dual", "specialist", "generalist")
MODES = ("sync", "async")


@dataclass
class EvalSpec:
    """Everything a worker needs to rebuild the simulator and the policy (it must pickle)."""

    policy_kwargs: dict[str, Any]
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    policy_factory: str = DEFAULT_POLICY_FACTORY
    instructions: str | None = None  # paraphrase file; None = the official validation instructions
    seed: int = 0
    max_steps: int = 360
    video_dir: str | None = None

    def identity(self) -> dict[str, Any]:
        """What must match for results to be merged on ``--resume`` (as it reads back from JSON)."""
        d = asdict(self)
        d.pop("video_dir")
        return json.loads(json.dumps(d))


@dataclass
class EvalOptions:
    start: int = 0
    chains: int | None = None
    workers: int = 1
    threads: int = 0  # per worker; 0: robodual_envs.common.workers.worker_threads decides
    videos: int = 0
    timeout: float = 600.0
    setup_timeout: float = 1800.0
    resume: bool = False
    overwrite: bool = False
    progress: bool = True

    def check(self) -> None:
        """Refuse values that cannot mean anything, naming the flag (chains/start: ``protocol.chains``)."""
        import math

        for flag, value, low in (("--workers", self.workers, 0), ("--threads", self.threads, 0),
                                 ("--videos", self.videos, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise RobodualError(f"{flag} is {value!r}; expected a whole number >= {low}")
        for flag, value in (("--timeout", self.timeout), ("--setup-timeout", self.setup_timeout)):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise RobodualError(f"{flag} is {value!r}; expected a number of seconds > 0")


def load_run_policy(path: str, kind: str = "auto", mode: str = "sync", latency: str | None = None,
                    execute: int | None = None) -> Any:
    from robodual_core.runtime import load_policy

    return load_policy(path, kind=kind, mode=mode, latency=latency, execute=execute)


def target(spec: str) -> Any:
    """``"module:attr"`` -> the object."""
    import importlib

    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)
