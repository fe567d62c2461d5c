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
    on different steps, as episodes of other lengths do. Returns ``{"sessions", "steps_per_s", "mean_batch"}`` (the mean size of the timed model calls)."""
    import threading

    from robodual_core.runtime.lockstep import Lockstep

    lockstep = Lockstep()
    barrier = threading.Barrier(sessions + 1)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        session = policy.new_session(wrap=lockstep.wrapper(i))
        session.reset()
        try:
            for _ in range(warmup + i % max(1, getattr(policy, "k_g", 1))):
                session.step(observation, instruction)
        except BaseException as exc:
            errors.append(exc)
        finally:
            lockstep.leave()
        barrier.wait()  # every session warmed up: the timed steps start together
        lockstep.enter()
        barrier.wait()
        try:
            for _ in range(steps):
                session.step(observation, instruction)
        except BaseException as exc:
            errors.append(exc)
        finally:
            lockstep.leave()

    for _ in range(sessions):
        lockstep.enter()
    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(sessions)]
    for t in threads:
        t.start()
    barrier.wait()
    start = len(lockstep.batches)  # between the barriers no session is in a call
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    if errors:
        raise errors[0]
    sizes = [size for _, size in lockstep.batches[start:]]
    return {"sessions": sessions, "steps_per_s": sessions * steps / max(seconds, 1e-9),
            "mean_batch": float(np.mean(sizes)) if sizes else 0.0}
