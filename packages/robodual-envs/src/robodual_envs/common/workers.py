"""Thread pools of simulator worker processes.

Each worker gets ``threads`` BLAS/OpenMP/torch threads, set before it imports torch. The default is one:
a worker shares the cores with its simulator (and, with EGL on llvmpipe, the renderer's own threads) and
with the other workers, and OpenMP spin-waiting on oversubscribed cores makes two threads many times slower
than one (measured on a 2-core machine: a tiny policy step 1.07-1.45 s with 2 threads in a CALVIN worker,
29 ms with one). Pass more when a worker has cores to itself and a policy large enough to use them.
"""

from __future__ import annotations

import os

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def worker_threads(requested: int = 0) -> int:
    """Threads per worker: ``requested`` when above 0, else 1 (see the module docstring)."""
    return requested if requested > 0 else 1


def set_thread_env(threads: int) -> None:
    """In a fresh worker process, before torch or numpy's BLAS start their pools."""
    for var in THREAD_VARS:
        os.environ[var] = str(threads)
    if "torch" in __import__("sys").modules:  # already imported (a fork, or an initializer that imported it)
        import torch

        torch.set_num_threads(threads)
