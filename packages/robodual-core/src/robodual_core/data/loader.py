"""The training ``DataLoader``: its worker count (a number or ``auto``), threads that cannot oversubscribe the
cores, and frames shared with the workers instead of read again by each (issue 33).

What it answers, measured on a shared 2-core machine (``robodual bench loader``; reports in
``bench/results/cpu-2core-2026-12-06/``):

- **Frames.** A worker used to read the whole store into its own memory first (1.6-2.0 s before its first batch
  on 30 Meta-World episodes, against 0.24-0.45 s in-process, and again in every new worker).
  :func:`build_loader` calls the dataset's ``share_memory()`` (``WindowDataset.share_memory``) before any worker
  starts: the frames are read once, into shared memory, and every worker maps those pages.
- **Threads.** OpenMP threads spin-wait at every parallel region; when another process holds a core, torch's
  default of one thread per core made a 0-worker loader 9-26x slower than one thread (the batch's collation
  runs in the main process; measured side by side on both stores, quiet and busy). The loader's own work runs with one thread wherever it runs: in each worker
  (:func:`worker_init`: torch, BLAS/OpenMP pools through threadpoolctl when installed, and the ``*_NUM_THREADS``
  variables), and in the main process around each batch of a 0-worker loader. The main process keeps at most
  ``cores - workers - busy`` threads for the model (:func:`main_threads`), never more than it had, where
  ``busy`` is the cores other processes kept busy over a quarter second at start-up (:func:`busy_cores`).
- **Worker count.** ``auto`` (:func:`choose_num_workers`) times the candidate counts side by side on the
  dataset itself at start-up (5-30 s on the shared 2-core machine) and takes the fastest, preferring fewer
  workers within 5%. It times the loader alone, not the training step beside it. On that machine, with the
  frames in memory and one thread, no workers was fastest on both measured stores (the demo's and the
  paper-setting one): a worker's batch costs the main process its transfer, and the cores are shared.

:func:`available_cores` is what this process may use: ``os.sched_getaffinity`` shared among the ranks that
torchrun started on this node (``LOCAL_WORLD_SIZE``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from robodual_core.errors import RobodualError

AUTO = "auto"
MAX_WORKERS = 256  # a config value above this is refused (a typo, not a loader)
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
               "NUMEXPR_NUM_THREADS")
AUTO_TOLERANCE = 0.05  # auto takes the fewest workers within this fraction of the fastest measured count
# auto's measurement: rounds, and an epoch per candidate and round of about this many seconds in-process, capped
AUTO_ROUNDS, AUTO_ROUND_SECONDS, AUTO_MAX_BATCHES = 5, 0.4, 50


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), divided among torchrun's ranks on this node."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    try:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    except ValueError:
        local = 1
    return max(1, cores // max(1, local))


def check_num_workers(value: Any, where: str = "trainer.num_workers") -> int | str:
    """``value`` as a worker count or ``'auto'``; anything else is one line naming ``where``."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == AUTO:
            return AUTO
        if text.lstrip("-").isdigit():
            value = int(text)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_WORKERS:
        raise RobodualError(f"{where} is {value!r}; expected 'auto' or an integer in [0, {MAX_WORKERS}]")
    return value


def busy_cores(seconds: float = 0.25) -> int:
    """Cores other processes keep busy now, among those this process may run on: the busy CPU time of those cores
    over ``seconds`` (their ``cpuN`` lines of ``/proc/stat``) less this process's own (``/proc/self/stat``), in
    cores, rounded. 0 where ``/proc`` is not readable (not Linux).

    OpenMP threads spin-wait, so a thread pool sized to every core runs many times slower beside one busy
    process (issue 33: 9-26x for the loader, 10-30x for a training step on the shared 2-core machine). Only the
    cores of this process's affinity count: a busy host outside them takes no thread away."""
    try:
        mine = {f"cpu{c}" for c in os.sched_getaffinity(0)}
    except (AttributeError, OSError):
        mine = None

    def machine() -> tuple[float, float]:  # (busy, total) jiffies over this process's cores
        busy = total = 0.0
        with open("/proc/stat") as f:
            for line in f:
                name, *rest = line.split()
                if not name.startswith("cpu") or name == "cpu" or (mine is not None and name not in mine):
                    continue
                fields = [float(x) for x in rest]
                idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
                busy, total = busy + sum(fields) - idle, total + sum(fields)
        return busy, total

    def own() -> float:
        with open("/proc/self/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return float(rest[11]) + float(rest[12])  # utime + stime (jiffies, every thread)

    try:
        (b0, t0), o0 = machine(), own()
        time.sleep(seconds)
        (b1, t1), o1 = machine(), own()
    except (OSError, ValueError, IndexError):
        return 0
    if t1 <= t0:
        return 0
    cores = len(mine) if mine else (os.cpu_count() or 1)
    busy = (b1 - b0 - (o1 - o0)) / (t1 - t0) * cores  # a fraction of those cores' time, in cores
    return max(0, int(busy + 0.5))


def main_threads(num_workers: int, cores: int | None = None, current: int | None = None,
                 busy: int = 0) -> int:
    """torch threads the main process keeps beside ``num_workers`` loader workers and ``busy`` cores other
    processes hold: ``cores - num_workers - busy`` (at least 1), and never more than it has now (an explicit
    ``OMP_NUM_THREADS`` or ``--threads`` stands)."""
    cores = available_cores() if cores is None else cores
    current = torch.get_num_threads() if current is None else current
    return max(1, min(current, cores - num_workers - busy))


def limit_threads(threads: int) -> None:
    """torch's intra-op threads, and the BLAS/OpenMP pools threadpoolctl finds (when it is installed), of
    this process set to ``threads``."""
    torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(limits=threads)


def worker_threads_env() -> dict[str, str]:
    """The thread variables a loader worker runs with (for libraries it loads later, and its children)."""
    return {var: "1" for var in THREAD_VARS}


class _WorkerInit:
    """``worker_init_fn``: one thread for everything in a loader worker, then the caller's own init."""

    def __init__(self, then: Callable[[int], None] | None = None):
        self.then = then

    def __call__(self, worker_id: int) -> None:
        os.environ.update(worker_threads_env())
        limit_threads(1)
        if self.then is not None:
            self.then(worker_id)


def worker_init(worker_id: int) -> None:
    """A loader worker's init: one torch thread, BLAS/OpenMP pools limited to one, ``*_NUM_THREADS=1``."""
    _WorkerInit()(worker_id)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch at one intra-op thread within the block (this process), then as it was."""
    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Loader(DataLoader):
    """A ``DataLoader`` whose in-process batches (``num_workers=0``) are read and collated with one torch thread,
    whatever the model uses between them (see the module docstring: 10-25x under load)."""

    def __iter__(self) -> Any:
        it = super().__iter__()
        if self.num_workers > 0:
            return it
        return _one_thread_batches(it)


def _one_thread_batches(it: Any) -> Iterator[Any]:
    while True:
        with one_thread():
            try:
                batch = next(it)
            except StopIteration:
                return
        yield batch


def share_dataset_memory(dataset: Any) -> None:
    """Read what the dataset holds in memory into shared memory now (``share_memory()``, when it has one), so
    that workers started after this map it instead of reading it again."""
    share = getattr(dataset, "share_memory", None)
    if callable(share):
        share()


def build_loader(dataset: Any, num_workers: int, *, batch_sampler: Any = None, batch_size: int | None = None,
                 shuffle: bool = False, drop_last: bool = False, collate_fn: Callable | None = None,
                 pin_memory: bool = False, generator: torch.Generator | None = None, persistent_workers: bool = True,
                 prefetch_factor: int = 4, worker_init_fn: Callable[[int], None] | None = None) -> Loader:
    """A :class:`Loader` over ``dataset``: frames shared before workers start, one thread per worker, workers
    kept across epochs (``persistent_workers``)."""
    num_workers = check_num_workers(num_workers, "num_workers")
    if num_workers == AUTO:
        raise RobodualError("build_loader takes a worker count; resolve 'auto' with choose_num_workers first")
    share_dataset_memory(dataset)
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs = {"num_workers": num_workers, "persistent_workers": persistent_workers,
                  "prefetch_factor": prefetch_factor, "worker_init_fn": _WorkerInit(worker_init_fn)}
    if batch_sampler is not None:
        kwargs["batch_sampler"] = batch_sampler
    else:
        kwargs.update(batch_size=batch_size or 1, shuffle=shuffle, drop_last=drop_last)
    return Loader(dataset, collate_fn=collate_fn, pin_memory=pin_memory, generator=generator, **kwargs)


class RandomBatches(Sampler[list[int]]):
    """Random batches of ``batch_size`` indices from one seeded stream (the measurement draws no global RNG):
    ``per_epoch`` batches per iteration, or without end when it is None."""

    def __init__(self, n: int, batch_size: int, seed: int, per_epoch: int | None = None):
        self.n, self.batch_size, self.per_epoch = n, max(1, min(batch_size, n)), per_epoch
        self._gen = torch.Generator().manual_seed(seed)
        self._perm: list[int] = []

    def __len__(self) -> int:
        return self.per_epoch if self.per_epoch is not None else 1 << 30

    def _batch(self) -> list[int]:
        if len(self._perm) < self.batch_size:
            self._perm = torch.randperm(self.n, generator=self._gen).tolist()
        out, self._perm = self._perm[:self.batch_size], self._perm[self.batch_size:]
        return out

    def __iter__(self) -> Iterator[list[int]]:
        count = 0
        while self.per_epoch is None or count < self.per_epoch:
            yield self._batch()
            count += 1


def time_in_turn(loaders: dict[Any, Any], rounds: int, samples: Callable[[Any], int]) -> dict[Any, list[float]]:
    """Samples/s of each loader in each of ``rounds`` rounds: one whole epoch of each in turn (the order rotated
    every round), so load from other processes hits them alike, and a loader's workers have delivered all they
    were sent before the next loader's clock starts (a worker still finishing a prefetched batch would slow the
    next one down). ``samples(batch)`` counts a batch."""
    names = list(loaders)
    rates: dict[Any, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            n, t0 = 0, time.perf_counter()
            for batch in loaders[name]:
                n += samples(batch)
            rates[name].append(n / (time.perf_counter() - t0))
    return rates


def shutdown_workers(loader: Any) -> None:
    """Stop a loader's persistent worker processes now (instead of when it is collected)."""
    it = getattr(loader, "_iterator", None)
    shutdown = getattr(it, "_shutdown_workers", None)
    if callable(shutdown):
        shutdown()


def median(values: list[float]) -> float:
    values = sorted(values)
    return values[len(values) // 2] if len(values) % 2 else (values[len(values) // 2 - 1] + values[len(values) // 2]) / 2


def auto_candidates(cores: int) -> list[int]:
    """Worker counts ``auto`` tries: 0, 1, 2, 4, ... up to the cores available (at most 8)."""
    out, w = [0], 1
    while w <= min(cores, 8):
        out.append(w)
        w *= 2
    return out if cores > 1 else [0]


def choose_num_workers(dataset: Any, batch_size: int, collate_fn: Callable | None = None, *,
                       cores: int | None = None, candidates: list[int] | None = None, rounds: int | None = None,
                       round_seconds: float | None = None, max_batches: int | None = None, pin_memory: bool = False,
                       prefetch_factor: int = 2, seed: int = 0) -> dict[str, Any]:
    """``num_workers: auto``: every candidate count (:func:`auto_candidates`) serves the same number of random
    batches of the dataset itself, one epoch each in turn (:func:`time_in_turn`: a warm-up epoch, then ``rounds``
    rounds; an epoch is as many batches as about ``round_seconds`` take in this process, at least 2 per worker of
    the largest candidate). Each count is scored by the median over rounds of its rate over 0 workers' rate in
    the same round (paired, so the drift of the machine's load between rounds cancels); the fewest workers within
    ``AUTO_TOLERANCE`` of the best score are taken (no workers unless they pay). One core: 0 without measuring.

    Returns the record the trainer logs: ``num_workers``, ``samples_per_s`` (median) and ``over_0_workers``
    (the score) per candidate, ``batches_per_round``,
    ``cores``, ``seconds`` spent."""
    t_start = time.perf_counter()
    rounds = AUTO_ROUNDS if rounds is None else rounds
    round_seconds = AUTO_ROUND_SECONDS if round_seconds is None else round_seconds
    max_batches = AUTO_MAX_BATCHES if max_batches is None else max_batches
    cores = available_cores() if cores is None else cores
    candidates = sorted(set(candidates if candidates is not None else auto_candidates(cores)))
    record: dict[str, Any] = {"setting": AUTO, "cores": cores, "candidates": candidates, "batch_size": batch_size}
    if len(dataset) < 1 or candidates == [0]:
        record.update(num_workers=0, reason="one core" if cores <= 1 else "one candidate",
                      samples_per_s={}, seconds=round(time.perf_counter() - t_start, 3))
        return record
    share_dataset_memory(dataset)  # before any worker starts, and outside the timing
    bs = max(1, min(batch_size, len(dataset)))
    # how many batches about round_seconds take in this process (the first batch untimed)
    probe = build_loader(dataset, 0, batch_sampler=RandomBatches(len(dataset), bs, seed, per_epoch=3),
                         collate_fn=collate_fn, pin_memory=pin_memory)
    it = iter(probe)
    next(it)
    t0 = time.perf_counter()
    for _ in it:
        pass
    per_batch = (time.perf_counter() - t0) / 2
    per_round = int(min(max_batches, max(2 * max(candidates), round_seconds / max(per_batch, 1e-6))))
    loaders = {w: build_loader(dataset, w, batch_sampler=RandomBatches(len(dataset), bs, seed + 1 + w,
                                                                      per_epoch=per_round),
                               collate_fn=collate_fn, pin_memory=pin_memory, prefetch_factor=prefetch_factor)
               for w in candidates}
    try:
        time_in_turn(loaders, 1, lambda batch: bs)  # warm-up: workers started
        rates = time_in_turn(loaders, rounds, lambda batch: bs)
    finally:
        for loader in loaders.values():
            shutdown_workers(loader)
    med = {w: median(v) for w, v in rates.items()}
    # each count judged against 0 workers timed in the same round (the median of those ratios): the load of the
    # machine's other users drifts between rounds far more than within one, and a round's drift cancels here
    ref = rates[candidates[0]]  # 0 workers, or the fewest candidates offered
    rel = {w: median([x / max(z, 1e-9) for x, z in zip(v, ref, strict=True)]) for w, v in rates.items()}
    best = max(rel.values())
    chosen = min(w for w in candidates if rel[w] >= (1 - AUTO_TOLERANCE) * best)
    record.update(num_workers=chosen, reason=f"fewest workers within {AUTO_TOLERANCE:.0%} of the fastest, "
                  "each timed against 0 workers in the same round",
                  samples_per_s={str(w): round(v, 1) for w, v in med.items()},
                  over_0_workers={str(w): round(v, 3) for w, v in rel.items()},
                  per_round={str(w): [round(x, 1) for x in v] for w, v in rates.items()},
                  batches_per_round=per_round, seconds=round(time.perf_counter() - t_start, 3))
    return record


def resolve_num_workers(setting: Any, dataset: Any, batch_size: int, collate_fn: Callable | None = None,
                        where: str = "trainer.num_workers", **kwargs: Any) -> dict[str, Any]:
    """The worker count for ``setting`` (a count or ``'auto'``) and what the main process keeps: a record with
    ``num_workers``, ``main_threads``, ``cores`` (and the measurement, for ``auto``)."""
    setting = check_num_workers(setting, where)
    if setting == AUTO:
        record = choose_num_workers(dataset, batch_size, collate_fn, **kwargs)
    else:
        record = {"setting": setting, "num_workers": setting, "cores": kwargs.get("cores") or available_cores()}
    current = torch.get_num_threads()
    # measured only where it can change the answer: more than one thread to give up
    record["busy_cores"] = busy_cores() if min(current, record["cores"] - record["num_workers"]) > 1 else 0
    record["main_threads"] = main_threads(record["num_workers"], record["cores"], current, record["busy_cores"])
    return record
