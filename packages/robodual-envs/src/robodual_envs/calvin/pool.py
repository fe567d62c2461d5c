"""The worker pool of ``eval calvin``: chains handed out one at a time, dead and hung workers replaced.

Each worker process (spawn context) builds its policy and simulator once (:class:`ChainRunner`), then runs
the chains the parent sends. A worker that dies or makes no progress for ``timeout`` seconds is killed;
its chain is retried once on a fresh worker and then recorded as failed with the reason (chain index,
exit code), never lost. A worker's stdout goes to stderr: the simulator prints there, and ``--json`` owns
the parent's stdout.
"""

from __future__ import annotations

import multiprocessing as mp
import queue as queue_mod
import signal
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from robodual_core.errors import RobodualError
from robodual_envs.calvin import protocol
from robodual_envs.calvin.spec import EvalSpec
from robodual_envs.common.workers import set_thread_env, worker_threads


def _worker_main(wid: int, spec: EvalSpec, threads: int, inbox: Any, outbox: Any, beat: Any) -> None:
    """Worker process: build once, then run the chains the parent sends until it sends None."""
    from robodual_envs.calvin.runner import ChainRunner
    from robodual_envs.common.stdio import redirect_stdout_fd

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    set_thread_env(threads)
    try:
        redirect_stdout_fd(2)
    except (OSError, ValueError, AttributeError):
        pass
    try:
        runner = ChainRunner(spec)
    except BaseException as exc:
        outbox.put(("setup_error", wid, f"{type(exc).__name__}: {exc}"))
        return
    outbox.put(("ready", wid, None))

    def on_step() -> None:
        beat.value = time.time()

    while True:
        job = inbox.get()
        if job is None:
            break
        index, video = job
        beat.value = time.time()
        outbox.put(("done", wid, runner.run(index, video, on_step)))
    runner.close()


@dataclass
class _Worker:
    wid: int
    proc: Any
    inbox: Any
    outbox: Any  # one per worker: killing a worker mid-write can only break its own pipe
    beat: Any
    started: float
    ready: bool = False
    job: tuple[int, bool] | None = None


class Scheduler:
    """Hands chains to worker processes one at a time, watches them, restarts dead or hung ones."""

    def __init__(self, spec: EvalSpec, workers: int, timeout: float, setup_timeout: float, retries: int = 1,
                 threads: int = 0):
        if workers < 1:
            raise RobodualError(f"--workers is {workers}; the pool needs at least 1 (0 runs in this process)")
        self.spec, self.n, self.timeout, self.setup_timeout, self.retries = spec, workers, timeout, setup_timeout, retries
        self.ctx = mp.get_context("spawn")
        self.threads = worker_threads(threads)
        self.workers: dict[int, _Worker] = {}
        self._next_id = 0

    def _start(self) -> None:
        wid, self._next_id = self._next_id, self._next_id + 1
        inbox, outbox, beat = self.ctx.Queue(), self.ctx.Queue(), self.ctx.Value("d", time.time(), lock=False)
        proc = self.ctx.Process(target=_worker_main, args=(wid, self.spec, self.threads, inbox, outbox, beat),
                                name=f"robodual-calvin-{wid}", daemon=True)
        proc.start()
        self.workers[wid] = _Worker(wid, proc, inbox, outbox, beat, time.time())

    def _stop(self, w: _Worker, kill: bool) -> None:
        if kill:
            w.proc.kill()
        else:
            w.inbox.put(None)
        w.proc.join(timeout=30)
        if w.proc.is_alive():
            w.proc.kill()
            w.proc.join(timeout=10)
        self.workers.pop(w.wid, None)

    def run(self, jobs: list[tuple[int, bool]], on_record: Any) -> None:
        """Run ``jobs`` ((chain index, record video)); ``on_record(record)`` is called in this process."""
        queue = deque(jobs)
        attempts: dict[int, int] = {}
        finished: set[int] = set()

        def finish(record: dict[str, Any]) -> None:
            if record["chain"] not in finished:
                finished.add(record["chain"])
                record.setdefault("attempts", attempts.get(record["chain"], 1))
                on_record(record)

        def lost(w: _Worker, why: str) -> None:
            index, video = w.job  # type: ignore[misc]
            w.job = None
            self._stop(w, kill=True)
            if attempts[index] <= self.retries:
                queue.appendleft((index, video))
            else:
                finish(protocol.failed_record(protocol.chains(index, 1)[0], why, attempts[index]))

        try:
            for _ in range(min(self.n, len(queue))):
                self._start()
            while queue or any(w.job is not None for w in self.workers.values()):
                for w in list(self.workers.values()):
                    if w.ready and w.job is None and queue:
                        w.job = queue.popleft()
                        attempts[w.job[0]] = attempts.get(w.job[0], 0) + 1
                        w.beat.value = time.time()
                        w.inbox.put(w.job)
                    elif w.ready and w.job is None:
                        self._stop(w, kill=False)
                if not self._drain(finish):
                    time.sleep(0.02)
                now = time.time()
                for w in list(self.workers.values()):
                    if w.job is not None and not w.proc.is_alive():
                        self._drain(finish)  # its last result may still be in the pipe
                        if w.job is not None:
                            lost(w, f"worker process died (exit code {w.proc.exitcode}) while running chain "
                                    f"{w.job[0]}")
                    elif w.job is not None and now - w.beat.value > self.timeout:
                        lost(w, f"no progress on chain {w.job[0]} for {self.timeout:g} s (hung simulator or "
                                "policy); worker killed")
                    elif not w.ready and not w.proc.is_alive():
                        raise RobodualError(f"a CALVIN worker process died (exit code {w.proc.exitcode}) while "
                                            "building the simulator and policy; rerun with --workers 0 to see why")
                    elif not w.ready and now - w.started > self.setup_timeout:
                        raise RobodualError(f"a CALVIN worker did not build its simulator and policy within "
                                            f"{self.setup_timeout:g} s")
                while queue and len(self.workers) < min(self.n, len(queue) + self._busy()):
                    self._start()
        finally:
            for w in list(self.workers.values()):
                self._stop(w, kill=w.job is not None or not w.ready)

    def _busy(self) -> int:
        return sum(w.job is not None for w in self.workers.values())

    def _drain(self, finish: Any) -> bool:
        """Handle every message waiting from the workers; True if there was any."""
        got = False
        for w in list(self.workers.values()):
            while True:
                try:
                    kind, _, payload = w.outbox.get_nowait()
                except (queue_mod.Empty, OSError, EOFError):
                    break
                got = True
                if kind == "setup_error":
                    raise RobodualError(f"a CALVIN worker could not start: {payload}")
                if kind == "ready":
                    w.ready = True
                elif kind == "done":
                    if w.job is not None and w.job[0] == payload["chain"]:
                        w.job = None
                    finish(payload)
        return got
