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


def cpu_model() -> str:
    """The processor's model name (Linux: /proc/cpuinfo's first ``model name``), else what ``platform`` knows.
    Two CPU models can round the same float operations differently, so results that must repeat name it."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor().strip() or platform.machine() or "unknown"


def environment() -> dict[str, Any]:
    """What a reader needs to compare two reports."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_model": cpu_model(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        import os

        import torch

        env.update(torch=torch.__version__, threads=torch.get_num_threads(), cpus=os.cpu_count(),
                   cuda=torch.cuda.is_available())
        if torch.cuda.is_available():
            env["gpu"] = gpu_limits()
    except ImportError:
        pass
    return env


# Datasheet figures (dense, without sparsity): HBM bandwidth in TB/s, bf16 tensor-core peak in TFLOP/s.
GPU_DATASHEETS: dict[str, tuple[float, float]] = {
    "H200": (4.8, 989.0),
    "H100 SXM": (3.35, 989.0),
    "H100 PCIe": (2.0, 756.0),
    "H100": (3.35, 989.0),
    "A100": (2.0, 312.0),
    "L40S": (0.864, 362.0),
    "RTX 5000 Ada": (0.576, 261.0),
    "A5000": (0.768, 111.0),
    "RTX 4090": (1.008, 165.0),
}


def gpu_limits(device: Any = None) -> dict[str, Any] | None:
    """The card's name, its datasheet bandwidth and bf16 peak (None for a card not in GPU_DATASHEETS), and the
    device's own memory: what a bench needs to say how far a measurement is from the hardware's limit."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    props = torch.cuda.get_device_properties(device)
    match = next((k for k in GPU_DATASHEETS if k.lower() in name.lower()), None)
    bandwidth, peak = GPU_DATASHEETS[match] if match else (None, None)
    return {"name": name, "datasheet": match, "memory_gib": props.total_memory / 2**30,
            "sm_count": props.multi_processor_count, "bandwidth_tb_s": bandwidth, "bf16_tflop_s": peak,
            "cuda": torch.version.cuda}


def memory_floor_ms(bytes_read: float, limits: dict[str, Any] | None) -> float | None:
    """Milliseconds to read ``bytes_read`` once at the card's datasheet bandwidth (a memory-bound step's floor)."""
    if not limits or not limits.get("bandwidth_tb_s"):
        return None
    return 1e3 * bytes_read / (limits["bandwidth_tb_s"] * 1e12)


def compute_floor_ms(flop: float, limits: dict[str, Any] | None) -> float | None:
    """Milliseconds for ``flop`` at the card's bf16 peak (a compute-bound step's floor)."""
    if not limits or not limits.get("bf16_tflop_s"):
        return None
    return 1e3 * flop / (limits["bf16_tflop_s"] * 1e12)


def write_report(path: str | Path, name: str, results: dict[str, Any]) -> dict[str, Any]:
    """Write ``{"bench": name, "environment": ..., "results": ...}`` atomically and return it."""
    from robodual_core.outputs import check_output

    check_output(path, flag="--out", expect="file")  # a folder or a FIFO as the report path: one line, not raw text
    report = {"bench": name, "environment": environment(), "results": results}
    atomic_write_json(path, report)
    return report
