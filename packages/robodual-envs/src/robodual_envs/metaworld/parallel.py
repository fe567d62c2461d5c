"""Run jobs in worker processes (spawn context) and get results back in submission order."""

from __future__ import annotations

import multiprocessing as mp
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from robodual_envs.common.workers import set_thread_env, worker_threads


def _worker_init(threads: int, initializer: Callable[..., None] | None, initargs: tuple,
                 finalizer: Callable[[], None] | None) -> None:
    set_thread_env(threads)  # several simulators on few cores: see robodual_envs.common.workers
    if finalizer is not None:  # pool workers exit through multiprocessing's finalizers, not atexit
        from multiprocessing.util import Finalize

        Finalize(None, finalizer, exitpriority=10)
    if initializer is not None:
        initializer(*initargs)


def ordered_map(fn: Callable[[Any], Any], jobs: Iterable[Any], workers: int = 1,
                initializer: Callable[..., None] | None = None, initargs: tuple = (),
                finalizer: Callable[[], None] | None = None, max_in_flight: int | None = None,
                threads: int = 0) -> Iterator[Any]:
    """``fn(job)`` for each job, yielded in the order of ``jobs``.

    ``workers <= 1`` runs in this process (``initializer`` is called here first, ``finalizer`` at the end).
    Otherwise ``workers`` spawned processes each run ``initializer(*initargs)`` once and ``finalizer()`` at
    exit; ``fn``, the jobs and results must pickle. At most ``max_in_flight`` jobs (default ``2 * workers``)
    are queued, so results do not pile up in memory. Each worker runs ``threads`` BLAS/torch threads
    (:func:`robodual_envs.common.workers.worker_threads`: 1 unless more are asked for).
    """
    if workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        try:
            for job in jobs:
                yield fn(job)
        finally:
            if finalizer is not None:
                finalizer()
        return
    threads = worker_threads(threads)
    limit = max_in_flight or 2 * workers
    pending: deque[Future] = deque()
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                             initargs=(threads, initializer, initargs, finalizer)) as pool:
        try:
            for job in jobs:
                pending.append(pool.submit(fn, job))
                if len(pending) >= limit:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
