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
