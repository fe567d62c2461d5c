"""Benchmark harness used by every ``robodual bench ...`` command.

``measure`` runs warm-up calls, then timed repeats, and reports median and spread; ``interleaved`` times
several paths in turn when they are compared with each other; ``write_report``
writes one JSON per run with the environment, so ratios measured side by side stay comparable.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from robodual_core.io import atomic_write_json


def measure(fn: Callable[[], Any], warmup: int = 2, repeats: int = 10, min_time: float = 0.0) -> dict[str, float]:
    """Time ``fn()``: ``warmup`` untimed calls, then at least ``repeats`` timed calls (and ``min_time`` seconds).

    Returns seconds: median, mean, min, max, iqr (spread), and n.
    """
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start) < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    q1 = times[len(times) // 4]
    q3 = times[(3 * len(times)) // 4]
    return {
        "median_s": statistics.median(times),
        "mean_s": statistics.fmean(times),
        "min_s": times[0],
        "max_s": times[-1],
        "iqr_s": q3 - q1,
        "n": len(times),
    }


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, dict[str, list[float]]]:
    """Time several paths in turn (A B C A B C ...), so drift and load from other processes on a shared
    machine hit them alike. ``warmup`` untimed rounds first. A path that returns a dict of seconds it timed
    itself (e.g. ``{"encoders": ..., "denoising": ...}``) has those recorded; otherwise its wall time is
    recorded as ``"total"``. Returns ``{path: {key: [seconds per round]}}``."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, dict[str, list[float]]] = {k: {} for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            got = fn()
            wall = time.perf_counter() - t0
            for key, value in (got if isinstance(got, dict) else {"total": wall}).items():
                samples[name].setdefault(key, []).append(float(value))
    return samples


def environment() -> dict[str, Any]:
    """What a reader needs to compare two reports."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        import os

        import torch

        env.update(torch=torch.__version__, threads=torch.get_num_threads(), cpus=os.cpu_count(),
                   cuda=torch.cuda.is_available())
    except ImportError:
        pass
    return env


def write_report(path: str | Path, name: str, results: dict[str, Any]) -> dict[str, Any]:
    """Write ``{"bench": name, "environment": ..., "results": ...}`` atomically and return it."""
    report = {"bench": name, "environment": environment(), "results": results}
    atomic_write_json(path, report)
    return report
