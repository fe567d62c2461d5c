"""Keep simulators' C-level prints (pybullet, EGL, calvin_env) off stdout, which ``--json`` commands own."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator


def _flush_c_stdio() -> None:
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)  # libc's own stdout buffer: flushed to the fd it was written for
    except Exception:
        pass


def redirect_stdout_fd(target_fd: int = 2) -> int:
    """Point file descriptor 1 at ``target_fd`` for the rest of the process; returns a duplicate of the old
    stdout (write results there with :func:`write_fd`). Python's ``print`` goes the same way."""
    sys.stdout.flush()
    _flush_c_stdio()
    saved = os.dup(1)
    os.dup2(target_fd, 1)
    return saved


def write_fd(fd: int, text: str) -> None:
    data = text.encode()
    while data:
        data = data[os.write(fd, data):]


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Within the block, whatever is written to fd 1 (by C code too) goes to stderr."""
    try:
        saved = redirect_stdout_fd(2)
    except (OSError, ValueError, AttributeError):  # no real fd 1 (an embedding host): nothing to protect
        yield
        return
    try:
        yield
    finally:
        sys.stdout.flush()
        _flush_c_stdio()
        os.dup2(saved, 1)
        os.close(saved)
