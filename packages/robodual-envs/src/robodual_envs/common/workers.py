"""Threads of simulator worker processes (and of ``--workers 0`` loops).

Each worker gets ``threads`` BLAS/OpenMP/torch threads, set before it imports torch. The default is one:
a worker shares the cores with its simulator (with EGL on Mesa's llvmpipe, the renderer runs its own
threads) and with the other workers, and OpenMP spin-waiting on oversubscribed cores makes two threads
many times slower than one. Measured with ``eval calvin`` on a 2-core machine, a tiny trained specialist,
3 chains of the real simulator: a policy step took 475 ms in a worker with 2 threads (the old
``cpu_count // workers``), 14 ms with 1; in-process, 118 ms with torch's default 2 threads, 23 ms with 1.
Pass more (``--threads``) when a worker has cores to itself and a policy large enough to use them.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def worker_threads(requested: int = 0) -> int:
    """Threads per worker: ``requested`` when above 0, else 1 (see the module docstring)."""
    return requested if requested > 0 else 1


def set_thread_env(threads: int) -> None:
    """In a fresh worker process, before torch or numpy's BLAS start their pools."""
    for var in THREAD_VARS:
        os.environ[var] = str(threads)
    if "torch" in sys.modules:  # already imported (an initializer that imported it)
        sys.modules["torch"].set_num_threads(threads)


@contextlib.contextmanager
def torch_threads(requested: int = 0) -> Iterator[None]:
    """torch's intra-op threads set to :func:`worker_threads` within the block (this process), then restored."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(worker_threads(requested))
    try:
        yield
    finally:
        torch.set_num_threads(before)
