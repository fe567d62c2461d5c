"""Loader throughput: samples/s of :class:`WindowDataset` through the trainer's loader
(:func:`robodual_core.data.loader.build_loader`).

The paper-setting window is 2 RGB views at 224x224, 2 depth views, proprio and an 8-step action chunk.
:func:`synthetic_store` writes such a store (smooth images, so compression is realistic rather than
worst-case noise); :func:`demo_like_store` one shaped like the demo's Meta-World store (2 RGB views at
128x128, 30 episodes of about 80 steps). :func:`loader_throughput` measures one ``num_workers`` setting. The
report leaves ``consumption_samples_per_s`` for the specialist-training side of the ratio (the issue's target:
the loader with 2 workers delivers at least 2x what training consumes); pass it in, or let a caller that
can measure training fill it, and ``ratio_workers2_over_consumption`` is computed.

:func:`loader_comparison` is issue 33's side-by-side: worker settings (``0``, ``1``, ``2``, ``auto``) timed in
turn on one store, quiet and beside a busy core (a busy-loop process), with two baselines of the loader before
it: a 0-worker ``DataLoader`` with torch's default threads, and the time to the first batch when each worker
reads the store itself.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from robodual_core.data.writer import DatasetWriter

BENCH_KEYS = ["rgb_static", "rgb_gripper", "depth_static", "depth_gripper"]


def synthetic_store(path: str | Path, episodes: int = 8, steps: int = 64, size: int = 224, seed: int = 0) -> Path:
    """A store with the paper-setting keys: 2 RGB + 2 depth views (size x size), proprio [7], action [7]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    modalities = {"rgb_static": "rgb", "rgb_gripper": "rgb", "depth_static": "depth", "depth_gripper": "depth",
                  "proprio": "proprio", "action": "action"}
    with DatasetWriter(path, fps=30, modalities=modalities, overwrite=True,
                       action_space={"type": "relative_ee", "dim": 7}) as writer:
        for _ in range(episodes):
            phase = rng.uniform(0, 6.28, size=(steps, 1, 1)).astype(np.float32)
            wave = np.sin(8 * xx[None] + phase) * np.cos(6 * yy[None] - phase)  # [T, H, W]
            rgb = ((wave[..., None] * [0.5, 0.3, 0.2] + 0.5) * 255).astype(np.uint8)
            noise = rng.integers(0, 8, size=rgb.shape, dtype=np.uint8)
            depth = (1.0 + 0.5 * wave).astype(np.float32)
            writer.add_episode({
                "rgb_static": rgb + noise, "rgb_gripper": rgb[:, ::-1] + noise,
                "depth_static": depth, "depth_gripper": depth[:, :, ::-1].copy(),
                "proprio": rng.normal(size=(steps, 7)).astype(np.float32),
                "action": rng.uniform(-1, 1, size=(steps, 7)).astype(np.float32),
            }, instruction="bench", task="bench")
    return Path(path)


def loader_throughput(path: str | Path, num_workers: int, batch_size: int = 32, seconds: float = 10.0,
                      image_size: int | None = 224, horizon: int = 8, warmup_batches: int = 2) -> dict[str, Any]:
    """Samples/s of a shuffled ``DataLoader`` over a :class:`WindowDataset` (after ``warmup_batches``)."""
    import torch

    from robodual_core.data.loader import build_loader
    from robodual_core.data.sampler import WindowDataset
    from robodual_core.data.store import open_dataset

    obs_keys = [k for k in BENCH_KEYS if k in open_dataset(path).keys]
    ds = WindowDataset(path, obs_keys=obs_keys, horizon=horizon, image_size=image_size, split="all")
    # as the trainer: frames shared before workers start, workers live across epochs, one thread per worker
    loader = build_loader(ds, num_workers, batch_size=batch_size, shuffle=True, drop_last=True,
                          generator=torch.Generator().manual_seed(0))
    samples = batches = 0
    start = None
    while start is None or time.perf_counter() - start < seconds:
        for batch in loader:
            if batches == warmup_batches:
                start = time.perf_counter()
            elif batches > warmup_batches:
                samples += batch["action"].shape[0]
            batches += 1
            if start is not None and time.perf_counter() - start >= seconds:
                break
    elapsed = time.perf_counter() - start
    return {"num_workers": num_workers, "obs_keys": obs_keys, "batch_size": batch_size, "samples": samples, "seconds": elapsed,
            "samples_per_s": samples / elapsed if elapsed > 0 else 0.0}


def loader_report(path: str | Path, workers: tuple[int, ...] = (0, 2), batch_size: int = 32, seconds: float = 10.0,
                  consumption_samples_per_s: float | None = None) -> dict[str, Any]:
    """Throughput for each worker count, and the loader/training ratio when the training rate is known."""
    from robodual_core.data.store import open_dataset

    ds = open_dataset(path)
    runs = [loader_throughput(path, w, batch_size=batch_size, seconds=seconds) for w in workers]
    by_workers = {r["num_workers"]: r["samples_per_s"] for r in runs}
    ratio = None
    if consumption_samples_per_s and 2 in by_workers:
        ratio = by_workers[2] / consumption_samples_per_s
    return {
        "store": str(path),
        "episodes": ds.num_episodes,
        "steps": ds.num_steps,
        "window": {"obs_keys": runs[0]["obs_keys"] if runs else [], "image_size": 224, "proprio": True, "action_chunk": 8},
        "runs": runs,
        "samples_per_s": {str(k): v for k, v in by_workers.items()},
        # filled by the specialist-training benchmark (or --consumption-samples-per-s); target ratio >= 2
        "consumption_samples_per_s": consumption_samples_per_s,
        "ratio_workers2_over_consumption": ratio,
    }


def demo_like_store(path: str | Path, episodes: int = 30, steps: int = 80, size: int = 128, seed: int = 0) -> Path:
    """A store shaped like the demo's Meta-World store (``dataset generate metaworld``): 2 RGB views at
    ``size`` (``rgb_static``, ``rgb_gripper``), proprio [4], action [4]; smooth moving images with a little noise.
    Pass the real store with ``--data`` where MuJoCo is installed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    modalities = {"rgb_static": "rgb", "rgb_gripper": "rgb", "proprio": "proprio", "action": "action"}
    with DatasetWriter(path, fps=80, modalities=modalities, overwrite=True,
                       action_space={"type": "continuous", "dim": 4}) as writer:
        for _ in range(episodes):
            phase = np.linspace(0, 3, steps, dtype=np.float32)[:, None, None] + rng.uniform(0, 6.28)
            wave = np.sin(5 * xx[None] + phase) * np.cos(4 * yy[None] - phase)
            rgb = ((wave[..., None] * [0.4, 0.3, 0.2] + 0.5) * 255).astype(np.uint8)
            noise = rng.integers(0, 4, size=rgb.shape, dtype=np.uint8)
            writer.add_episode({
                "rgb_static": rgb + noise, "rgb_gripper": rgb[:, ::-1] + noise,
                "proprio": rng.normal(size=(steps, 4)).astype(np.float32),
                "action": rng.uniform(-1, 1, size=(steps, 4)).astype(np.float32),
            }, instruction="bench", task="bench")
    return Path(path)


def busy_core() -> subprocess.Popen:
    """A process that keeps one core busy (a Python busy loop) until it is killed."""
    # at the normal policy whatever this process runs at: a busy loop inheriting a real-time policy (SCHED_FIFO, set
    # by a control loop) would starve every other process on its core instead of sharing it
    loop = ("import os\ntry:\n    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))\nexcept (AttributeError, "
            "OSError):\n    pass\nwhile True:\n    pass\n")
    return subprocess.Popen([sys.executable, "-c", loop], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def first_batch_seconds(path: Path, obs_keys: list[str], image_size: int | None, batch_size: int, workers: int,
                         shared: bool) -> float:
    """Seconds from a new dataset to its first batch: ``shared`` the trainer's loader (frames read once, in
    this process, before workers start), else a plain ``DataLoader`` whose workers read the store each."""
    import torch
    from torch.utils.data import DataLoader

    from robodual_core.data.loader import build_loader
    from robodual_core.data.sampler import WindowDataset

    t0 = time.perf_counter()
    ds = WindowDataset(path, obs_keys=obs_keys, horizon=8, image_size=image_size, split="all")
    gen = torch.Generator().manual_seed(0)
    if shared:
        loader = build_loader(ds, workers, batch_size=batch_size, shuffle=True, drop_last=True, generator=gen,
                              persistent_workers=False)
    else:
        loader = DataLoader(ds, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers,
                            generator=gen)
    it = iter(loader)
    next(it)
    seconds = time.perf_counter() - t0
    shutdown = getattr(it, "_shutdown_workers", None)
    if callable(shutdown):
        shutdown()
    return seconds


def loader_comparison(path: str | Path, settings: tuple[str, ...] = ("0", "1", "2", "auto"),
                      conditions: tuple[str, ...] = ("quiet", "busy"), batch_size: int = 32,
                      image_size: int | None = None, rounds: int = 5, round_seconds: float = 1.0,
                      baselines: bool = True, progress: Any = None) -> dict[str, Any]:
    """Samples/s of each worker setting on one store, timed in turn (``rounds`` rounds of one epoch each, as
    many batches as about ``round_seconds`` take in-process; :func:`robodual_core.data.loader.time_in_turn`; the
    median is reported), under each condition (``quiet``; ``busy``: beside a busy-loop process), the conditions
    alternating round by round. ``auto`` is chosen under each condition by its start-up measurement (recorded)
    and then timed as a loader of its own beside the fixed settings. With ``baselines``: the loader before issue 33 side by side (a plain
    0-worker ``DataLoader`` at torch's default threads), frames read from the store's chunks on demand instead of
    from shared memory (0 and 2 workers), and seconds to the first batch (quiet) for each setting and for 2 workers
    that each read the store."""
    import torch

    from robodual_core.data.loader import (
        RandomBatches,
        available_cores,
        build_loader,
        check_num_workers,
        choose_num_workers,
        median,
        shutdown_workers,
        time_in_turn,
    )
    from robodual_core.data.sampler import WindowDataset
    from robodual_core.data.store import open_dataset

    path = Path(path)
    store = open_dataset(path)
    obs_keys = [k for k in BENCH_KEYS if k in store.keys]
    say = progress or (lambda text: None)
    cores = available_cores()
    default_threads = torch.get_num_threads()
    fixed = [int(s) for s in settings if s != "auto"]
    for s in settings:
        check_num_workers(s, "--workers")
    out: dict[str, Any] = {
        "store": str(path), "episodes": store.num_episodes, "steps": store.num_steps,
        "window": {"obs_keys": obs_keys, "frame_shapes": {k: list(store.array(k).shape[1:]) for k in obs_keys},
                   "image_size": image_size, "proprio": True, "action_chunk": 8, "batch_size": batch_size},
        "cores": cores, "torch_default_threads": default_threads, "rounds": rounds, "round_seconds": round_seconds,
        "conditions": {},
    }
    if baselines:
        say(f"{path.name}: seconds to the first batch")
        first = {str(w): first_batch_seconds(path, obs_keys, image_size, batch_size, w, shared=True)
                 for w in sorted({0, *fixed})}
        if 2 in fixed:
            first["2_each_worker_reads_the_store"] = first_batch_seconds(path, obs_keys, image_size, batch_size, 2,
                                                                          shared=False)
        out["first_batch_s"] = first
    for condition in conditions:
        if condition not in ("quiet", "busy"):
            raise ValueError(f"condition '{condition}'; expected quiet or busy")
    ds = WindowDataset(path, obs_keys=obs_keys, horizon=8, image_size=image_size, split="all").share_memory()
    # one epoch per setting and round: as many batches as about round_seconds take in this process
    probe = iter(build_loader(ds, 0, batch_size=batch_size, shuffle=True, drop_last=True,
                              generator=torch.Generator().manual_seed(0)))
    next(probe)
    t0 = time.perf_counter()
    next(probe)
    next(probe)
    per_round = max(4 * max([*fixed, 1]), int(round_seconds / max((time.perf_counter() - t0) / 2, 1e-6)))
    autos: dict[str, Any] = {}
    loaders: dict[str, dict[str, Any]] = {}
    shared: dict[str, Any] = {}  # the fixed settings' loaders serve every condition
    for s in settings:
        if s != "auto":
            shared[s] = build_loader(ds, int(s), batch_sampler=RandomBatches(len(ds), batch_size, 1, per_round),
                                     generator=torch.Generator().manual_seed(0))
    if baselines:
        from torch.utils.data import DataLoader

        shared["0_plain_default_threads"] = DataLoader(ds, batch_sampler=RandomBatches(len(ds), batch_size, 1,
                                                                                       per_round),
                                                       generator=torch.Generator().manual_seed(0))
        # the alternative to frames in shared memory: every sample's frames read from the store's chunks on
        # demand (what a store larger than ROBODUAL_IMAGE_CACHE_MB gets), in-process and with 2 workers
        on_demand = WindowDataset(path, obs_keys=obs_keys, horizon=8, image_size=image_size, split="all",
                                  image_cache_bytes=0)
        for w in sorted({0, *[w for w in fixed if w == 2]}):
            shared[f"{w}_on_demand_chunk_reads"] = build_loader(
                on_demand, w, batch_sampler=RandomBatches(len(ds), batch_size, 1, per_round),
                generator=torch.Generator().manual_seed(0))
    baseline_names = [k for k in shared if k not in settings]  # timed under every condition beside the settings
    count = lambda batch: batch["action"].shape[0]  # noqa: E731
    try:
        for condition in conditions:
            with _condition(condition):
                say(f"{path.name}, {condition}: auto's start-up measurement")
                loaders[condition] = {}
                for s in settings:
                    if s == "auto":
                        autos[condition] = choose_num_workers(ds, batch_size)
                        loaders[condition][s] = build_loader(
                            ds, autos[condition]["num_workers"],
                            batch_sampler=RandomBatches(len(ds), batch_size, 1, per_round),
                            generator=torch.Generator().manual_seed(0))
                    else:
                        loaders[condition][s] = shared[s]
                for k in baseline_names:
                    loaders[condition][k] = shared[k]
                time_in_turn(loaders[condition], 1, count)  # warm-up: workers started
        # the conditions alternate round by round (the busy loop started and stopped each time), so the load
        # of the machine's other users drifts over both alike
        rates: dict[str, dict[str, list[float]]] = {c: {k: [] for k in loaders[c]} for c in conditions}
        for r in range(rounds):
            say(f"{path.name}: round {r + 1}/{rounds} of {', '.join(loaders[conditions[0]])} in turn, "
                f"{' and '.join(conditions)}")
            for condition in conditions[r % len(conditions):] + conditions[:r % len(conditions)]:
                names = list(loaders[condition])
                names = names[r % len(names):] + names[:r % len(names)]
                with _condition(condition):
                    got = time_in_turn({k: loaders[condition][k] for k in names}, 1, count)
                for k, v in got.items():
                    rates[condition][k].extend(v)
    finally:
        for group in (shared, *loaders.values()):
            for loader in group.values():
                shutdown_workers(loader)
    for condition in conditions:
        out["conditions"][condition] = {
            "samples_per_s": {k: round(median(v), 1) for k, v in rates[condition].items()},
            "batches_per_round": per_round,
            "per_round": {k: [round(x, 1) for x in v] for k, v in rates[condition].items()},
            "auto": autos.get(condition),
        }
    out["goals"] = _goals(out, fixed)
    return out


class _condition:
    """``quiet``: nothing; ``busy``: a busy-loop process for the block (started half a second before it)."""

    def __init__(self, condition: str):
        self.condition, self.proc = condition, None

    def __enter__(self) -> None:
        if self.condition == "busy":
            self.proc = busy_core()
            time.sleep(0.5)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


def _goals(out: dict[str, Any], fixed: list[int]) -> dict[str, Any]:
    """Issue 33's targets, computed from one store's side-by-side rates."""
    goals: dict[str, Any] = {}
    conds = out["conditions"]
    for condition, c in conds.items():
        rates = c["samples_per_s"]
        g: dict[str, Any] = {}
        if "auto" in rates and fixed:
            best = max(rates[str(w)] for w in fixed)
            chosen = c["auto"]["num_workers"]
            g.update(auto_over_best_fixed=rates["auto"] / best if best else None, auto_workers=chosen)
            picked = rates.get(str(chosen))  # the fixed setting auto chose, timed side by side with the others
            if picked is not None:
                # auto's own loader is that setting timed again: their ratio is the run's noise, not the choice's cost
                g["auto_choice_over_best_fixed"] = picked / best if best else None
                g["auto_timed_over_same_fixed"] = rates["auto"] / picked if picked else None
            if "0" in rates and chosen > 0:
                g["auto_over_0_workers"] = rates["auto"] / rates["0"] if rates["0"] else None
                if picked is not None:
                    g["auto_choice_over_0_workers"] = picked / rates["0"] if rates["0"] else None
        for w in ("0", "2"):
            if f"{w}_on_demand_chunk_reads" in rates and w in rates:
                g[f"{w}_workers_shared_frames_over_on_demand_chunk_reads"] = \
                    rates[w] / max(rates[f"{w}_on_demand_chunk_reads"], 1e-9)
        if "0_plain_default_threads" in rates and "0" in rates:
            g["0_workers_over_plain_default_threads"] = rates["0"] / max(rates["0_plain_default_threads"], 1e-9)
        if g:
            goals[condition] = g
    if "quiet" in conds and "busy" in conds:
        q, b = conds["quiet"]["samples_per_s"], conds["busy"]["samples_per_s"]
        goals["busy_over_quiet"] = {k: round(b[k] / q[k], 3) for k in q if k in b and q[k]}
    return goals


def model_step_comparison(conditions: tuple[str, ...] = ("quiet", "busy"), rounds: int = 3,
                          round_seconds: float = 1.0, progress: Any = None) -> dict[str, Any]:
    """Training steps/s of a small transformer (4 layers, width 256, batch 32 x 32 tokens) in this process at
    torch's default of one thread per core (``all_cores``) and at the loader's choice (``load_aware``:
    :func:`robodual_core.data.loader.main_threads` with the cores other processes keep busy, measured at the start
    of each block), side by side, quiet and beside a busy core: issue 33's "threads never oversubscribed" for the
    model's own work, which the loader's one-thread batches do not cover."""
    import torch

    from robodual_core.data.loader import available_cores, busy_cores, main_threads

    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(256, 4, 512, batch_first=True, dropout=0.0)
    model = torch.nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(32, 32, 256)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        opt.step()

    cores = available_cores()
    before = torch.get_num_threads()
    rates: dict[str, dict[str, list[float]]] = {c: {"all_cores": [], "load_aware": []} for c in conditions}
    chosen: dict[str, list[int]] = {c: [] for c in conditions}
    try:
        for r in range(rounds):
            for condition in conditions:
                with _condition(condition):
                    busy = busy_cores()
                    threads = {"all_cores": cores, "load_aware": main_threads(0, cores, cores, busy)}
                    chosen[condition].append(threads["load_aware"])
                    for name, n in threads.items():
                        if progress is not None:
                            progress(f"model step: {condition}, {name} ({n} threads), round {r + 1}/{rounds}")
                        torch.set_num_threads(n)
                        step()  # warm-up at this thread count
                        done, t0 = 0, time.perf_counter()
                        while time.perf_counter() - t0 < round_seconds:
                            step()
                            done += 1
                        rates[condition][name].append(done / (time.perf_counter() - t0))
    finally:
        torch.set_num_threads(before)
    out: dict[str, Any] = {"cores": cores, "model": "TransformerEncoder 4 x 256, batch 32 x 32 tokens, AdamW",
                           "rounds": rounds, "round_seconds": round_seconds, "conditions": {}}
    for condition in conditions:
        med = {k: float(np.median(v)) for k, v in rates[condition].items()}
        out["conditions"][condition] = {"steps_per_s": {k: round(v, 2) for k, v in med.items()},
                                        "per_round": {k: [round(x, 2) for x in v] for k, v in rates[condition].items()},
                                        "load_aware_threads": chosen[condition]}
    if "quiet" in conditions and "busy" in conditions:
        q, b = out["conditions"]["quiet"]["steps_per_s"], out["conditions"]["busy"]["steps_per_s"]
        out["busy_over_quiet"] = {k: round(b[k] / q[k], 3) for k in q if q[k]}
    return out
