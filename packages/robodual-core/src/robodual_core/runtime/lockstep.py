"""Many policy sessions in one process, their model calls batched: lockstep evaluation.

On a CPU a small model at batch 1 spends most of its time in per-call overhead: the measured specialist
takes 15 ms for one action chunk and 34 ms for eight, the generalist 52 ms for one and 57 ms for eight.
An evaluator that runs several episodes at once (one thread per episode, each with its own simulator and
its own policy session) wraps every session's runners in the proxies below. A proxy's ``predict`` blocks
until *every* running session is blocked in some proxy; then the calls waiting on the model with the most
callers (the later stage on a tie) run as one batch, and their callers go on. Which calls share a batch
therefore depends only on what each session does, not on thread timing.

Taking the fullest queue first aligns the sessions' generalist steps: an episode that starts while the others
are mid-chunk asks the generalist at its first step and waits there, while the others step on (their
specialist batches one smaller) until they too reach a generalist step; from then on all of them ask the
generalist on the same steps, in one batch. A session only waits in this, it is never behind in its own
episode: what it computes does not depend on when.

A specialist session draws its initial diffusion noise from its own generator (seeded per episode), so an
episode's actions do not depend on which other episodes share its batches (up to float rounding of
batched matrix products).

Runners opt in by implementing :class:`~robodual_core.runtime.protocols.BatchedGeneralistRunner` or
:class:`~robodual_core.runtime.protocols.BatchedSpecialistRunner` (robodual's generalist and DiT runners do);
any other runner is called directly, one session at a time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from robodual_core.interfaces import GeneralistOutput
from robodual_core.runtime.protocols import BatchedGeneralistRunner, BatchedSpecialistRunner

GENERALIST_STAGE, SPECIALIST_STAGE = 0, 1


@dataclass
class _Call:
    request: Any
    done: bool = False
    result: Any = None
    error: BaseException | None = None


@dataclass
class _Queue:
    stage: int
    run: Callable[[list[Any]], list[Any]]
    calls: list[_Call] = field(default_factory=list)


class Lockstep:
    """The scheduler shared by the sessions of one evaluation (see the module docstring).

    :meth:`run` starts the sessions' threads. A thread started otherwise calls :meth:`enter` before its first
    call and :meth:`leave` after its last (in a ``finally``): a session that stops calling without leaving
    would hold every other one forever.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._blocked = 0
        self._queues: dict[Any, _Queue] = {}
        self.batches: list[tuple[int, int]] = []  # (stage, size) of every batch run: what the benches report

    def run(self, sessions: int, body: Callable[[int], None], name: str = "robodual-session") -> list[BaseException]:
        """``body(i)`` for ``i < sessions``, each in its own thread as a session of this lockstep; returns what
        the bodies raised (a body that fails leaves, so the others go on)."""
        errors: list[BaseException] = []

        def session(i: int) -> None:
            try:
                body(i)
            except BaseException as exc:
                errors.append(exc)
            finally:
                self.leave()

        for _ in range(sessions):
            self.enter()
        threads = [threading.Thread(target=session, args=(i,), name=f"{name}-{i}", daemon=True)
                   for i in range(sessions)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return errors

    def enter(self) -> None:
        with self._cond:
            self._active += 1

    def leave(self) -> None:
        with self._cond:
            self._active -= 1
            self._flush_if_all_blocked()

    def call(self, key: Any, stage: int, run: Callable[[list[Any]], list[Any]], request: Any) -> Any:
        """``run([request, ...]) -> [result, ...]`` over every waiting request of ``key``, when all are blocked."""
        call = _Call(request)
        with self._cond:
            queue = self._queues.setdefault(key, _Queue(stage, run))
            queue.calls.append(call)
            self._blocked += 1
            self._flush_if_all_blocked()
            while not call.done:
                self._cond.wait()
        if call.error is not None:
            raise call.error
        return call.result

    def _flush_if_all_blocked(self) -> None:
        # with the lock held; runs in whichever thread completes the condition (all others are waiting)
        while self._active > 0 and self._blocked >= self._active:
            waiting = [(len(q.calls), q.stage, i, key) for i, (key, q) in enumerate(self._queues.items()) if q.calls]
            if not waiting:
                return
            key = max(waiting)[3]
            queue = self._queues[key]
            calls, queue.calls = queue.calls, []
            self.batches.append((queue.stage, len(calls)))
            try:
                results = queue.run([c.request for c in calls])
                if len(results) != len(calls):
                    raise RuntimeError(f"a batched runner returned {len(results)} results for {len(calls)} calls")
                for c, r in zip(calls, results, strict=True):
                    c.result = r
            except BaseException as exc:  # every caller of the batch sees the error
                for c in calls:
                    c.error = exc
            for c in calls:
                c.done = True
            self._blocked -= len(calls)
            self._cond.notify_all()

    def wrapper(self, seed: int) -> Callable[[Any], Any]:
        """For ``policy.new_session(wrap=...)``: each runner of a session behind its proxy; ``seed`` seeds the
        session's diffusion noise."""

        def wrap(runner: Any) -> Any:
            if isinstance(runner, BatchedSpecialistRunner):
                return LockstepSpecialist(runner, self, seed)
            if isinstance(runner, BatchedGeneralistRunner):
                return LockstepGeneralist(runner, self)
            return runner

        return wrap


class _Proxy:
    """Everything but ``predict`` goes to the wrapped runner."""

    def __init__(self, runner: Any, lockstep: Lockstep):
        self.runner, self.lockstep = runner, lockstep

    def __getattr__(self, name: str) -> Any:
        return getattr(self.runner, name)


class LockstepGeneralist(_Proxy):
    def predict(self, observation: dict[str, np.ndarray], instruction: str) -> GeneralistOutput:
        image = np.asarray(observation[self.runner.image_key])
        return self.lockstep.call(("generalist", id(self.runner)), GENERALIST_STAGE, self._run, (image, instruction))

    def _run(self, requests: list[tuple[np.ndarray, str]]) -> list[GeneralistOutput]:
        out = self.runner.predict_batch(np.stack([r[0] for r in requests]), [r[1] for r in requests])
        return [out.row(i) for i in range(len(requests))]


class LockstepSpecialist(_Proxy):
    def __init__(self, runner: Any, lockstep: Lockstep, seed: int):
        import torch

        super().__init__(runner, lockstep)
        self.generator = torch.Generator().manual_seed(int(seed))

    def predict(self, observation: dict[str, np.ndarray], instruction: str, generalist: GeneralistOutput | None,
                tau: int, prefix: Any = None) -> np.ndarray:
        import torch

        kwargs = {} if prefix is None else {"prefix": prefix}  # real-time chunking (runtime.latency)
        prepared = self.runner.prepare(observation, instruction, generalist, tau, **kwargs)  # this session's history
        noise = torch.randn(self.runner.noise_shape, generator=self.generator)
        # the model, not the per-session runner, decides what can share a batch
        key = ("specialist", id(getattr(self.runner, "model", self.runner)), generalist is None)
        return self.lockstep.call(key, SPECIALIST_STAGE, self._run, (prepared, noise))

    def _run(self, requests: list[tuple[Any, Any]]) -> list[np.ndarray]:
        return self.runner.predict_prepared([r[0] for r in requests], [r[1] for r in requests])
