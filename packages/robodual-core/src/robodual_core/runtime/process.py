"""A generalist runner in its own process."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from robodual_core.errors import RobodualError
from robodual_core.interfaces import GeneralistOutput
from robodual_core.runtime.runners import load_runner

_OUTPUT_FIELDS = ("actions", "task_latents", "action_latents", "task_mask", "action_mask")


def _generalist_process(conn: Any, path: str, options: dict[str, Any]) -> None:
    import torch

    torch.set_num_threads(1)
    try:
        runner = load_runner("generalist", path, **options)
        conn.send(("ready", runner.k_g))
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    while True:
        message = conn.recv()
        if message is None:
            return
        try:
            out = runner.predict(*message)
            conn.send(("ok", {f: getattr(out, f).detach().cpu().numpy() for f in _OUTPUT_FIELDS}))
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class ProcessGeneralist:
    """A generalist runner in its own process, so its decoding never holds the specialist's GIL.

    In asynchronous mode the background thread only waits on a pipe; the generalist's Python-heavy
    token-by-token decoding runs in parallel with the specialist on another core. Messages go over a
    local pipe between two processes of the same program.
    """

    def __init__(self, path: str | Path, **options: Any):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_generalist_process, args=(child, str(path), options), daemon=True,
                                 name="robodual-generalist")
        self._proc.start()
        child.close()  # only the child holds its end now: if the child dies, recv() here ends instead of hanging
        self._path = str(path)
        self._lock = threading.Lock()
        status, payload = self._receive()
        if status != "ready":
            self.close()
            raise RobodualError(f"the generalist process could not load '{path}': {payload}")
        self.k_g = payload

    def _receive(self) -> tuple[str, Any]:
        """The child's next message; a child that died (killed, out of memory, crashed) is an error naming the
        checkpoint and its exit code, not a wait forever."""
        while not self._conn.poll(1.0):
            if not self._proc.is_alive():
                break
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            self._proc.join(timeout=1)
            raise RobodualError(f"the generalist process for '{self._path}' died (exit code "
                                f"{self._proc.exitcode}); it may have run out of memory") from None

    def predict(self, observation: dict[str, np.ndarray], instruction: str) -> GeneralistOutput:
        import torch

        with self._lock:
            try:
                self._conn.send((observation, instruction))
            except (OSError, ValueError):
                pass  # a dead child: _receive names it
            status, payload = self._receive()
        if status != "ok":
            raise RobodualError(f"the generalist process failed: {payload}")
        return GeneralistOutput(**{f: torch.from_numpy(payload[f]) for f in _OUTPUT_FIELDS})

    def close(self) -> None:
        try:
            self._conn.send(None)
        except (OSError, ValueError):
            pass
        self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.kill()
