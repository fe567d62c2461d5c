"""Steady-state control rate of a policy (the runtime benches)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np


def measure_rate(policy: Any, observation: dict[str, np.ndarray], instruction: str, steps: int,
                 warmup: int = 8) -> float:
    """Steady-state control steps per second of ``policy`` on a fixed observation.

    The first ``warmup`` steps after ``reset`` are not timed: an asynchronous policy awaits its very first
    generalist chunk there, which is a start-up cost, not a control rate.
    """
    policy.reset()
    for _ in range(warmup):
        policy.step(observation, instruction)
    t0 = time.perf_counter()
    for _ in range(steps):
        policy.step(observation, instruction)
    return steps / max(time.perf_counter() - t0, 1e-9)


def lockstep_rate(policy: Any, observation: dict[str, np.ndarray], instruction: str, sessions: int, steps: int,
                  warmup: int = 8) -> dict[str, Any]:
    """Control steps per second of ``sessions`` sessions of ``policy`` (``new_session(wrap=...)``) stepping in
    lockstep, their model calls batched (:mod:`robodual_core.runtime.lockstep`): what a batched evaluation gains
    on this machine, without the simulator. Session ``i`` starts ``i`` steps late, so sessions ask the generalist
    on different steps, as episodes of other lengths do. Returns ``{"sessions", "steps_per_s", "mean_batch"}``
    (the mean size of the timed model calls)."""
    from robodual_core.runtime.lockstep import Lockstep

    lockstep = Lockstep()
    runs = [policy.new_session(wrap=lockstep.wrapper(i)) for i in range(sessions)]
    for run in runs:
        run.reset()
    period = max(1, int(getattr(policy, "k_g", 1)))

    def run_all(count: Any) -> None:
        def body(i: int) -> None:
            for _ in range(count(i)):
                runs[i].step(observation, instruction)

        errors = lockstep.run(sessions, body)
        if errors:
            raise errors[0]

    run_all(lambda i: warmup + i % period)  # not timed; leaves the sessions out of phase
    start = len(lockstep.batches)
    t0 = time.perf_counter()
    run_all(lambda i: steps)
    seconds = time.perf_counter() - t0
    sizes = [size for _, size in lockstep.batches[start:]]
    return {"sessions": sessions, "steps_per_s": sessions * steps / max(seconds, 1e-9),
            "mean_batch": float(np.mean(sizes)) if sizes else 0.0}
