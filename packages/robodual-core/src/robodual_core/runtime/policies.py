"""The three policies behind one interface: dual system (sync or async), specialist only, generalist only."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from robodual_core.errors import RobodualError
from robodual_core.interfaces import GeneralistOutput
from robodual_core.runtime.aggregation import AggregationConfig, TemporalAggregator
from robodual_core.runtime.latency import LatencyConfig, TimedGeneralistOnly, TimedSteps, wants_prefix
from robodual_core.runtime.protocols import GeneralistRunner, SpecialistRunner


def _fork(runner: Any, wrap: Callable[[Any], Any] | None = None) -> Any:
    """A runner for a new session: runners with per-episode state provide ``fork()``; others are shared.
    ``wrap``: applied to the session's runner (e.g. :meth:`robodual_core.runtime.lockstep.Lockstep.wrapper`)."""
    fork = getattr(runner, "fork", None)
    runner = fork() if callable(fork) else runner
    return wrap(runner) if wrap is not None else runner


def _spec(*runners: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    spec: dict[str, tuple[tuple[int, ...], str]] = {}
    for runner in runners:
        spec.update(getattr(runner, "observation_spec", None) or {})
    return spec


class _PolicyInfo:
    """What a server or an evaluator may ask of any policy: its observation spec and action shape."""

    runners: tuple[Any, ...] = ()

    @property
    def observation_spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """``{key: (shape, dtype)}`` of one observation, from the runners that declare it."""
        return _spec(*self.runners)

    @property
    def action_dim(self) -> int | None:
        return next((r.action_dim for r in self.runners if getattr(r, "action_dim", None)), None)

    @property
    def action_horizon(self) -> int:
        return 1

    def _reset_runners(self) -> None:
        """Runners that keep per-episode state (history frames, feature caches) start afresh."""
        for runner in self.runners:
            reset = getattr(runner, "reset", None)
            if callable(reset):
                reset()


@dataclass
class _Chunk:
    output: GeneralistOutput
    step: int  # the control step whose observation the generalist saw


class DualSystemPolicy(_PolicyInfo):
    """Generalist + specialist, synchronous or asynchronous.

    ``generalist_every`` defaults to ``k_g`` (sync mode). In async mode the generalist restarts as soon
    as it finishes, on the latest observation; ``reset`` waits for the first chunk so the specialist
    always has one.
    """

    def __init__(self, generalist: GeneralistRunner, specialist: SpecialistRunner, mode: str = "sync",
                 generalist_every: int | None = None, aggregation: AggregationConfig | None = None,
                 specialist_every: int = 1, latency: LatencyConfig | None = None):
        if mode not in ("sync", "async"):
            raise RobodualError(f"runtime mode must be 'sync' or 'async', found {mode!r}")
        self.latency = latency or LatencyConfig()
        if mode == "async" and not self.latency.zero:
            raise RobodualError(f"latency {self.latency.text()} is counted in control steps (sync mode); async "
                                "mode runs on the wall clock: use --mode sync with --latency")
        self.generalist, self.specialist, self.mode = generalist, specialist, mode
        self.runners = (generalist, specialist)
        self._aggregation = aggregation
        self.k_g = generalist.k_g
        self.generalist_every = generalist_every or self.k_g
        self.specialist_every = specialist_every
        self.aggregator = TemporalAggregator(aggregation)
        self.stats = {"generalist_calls": 0, "specialist_calls": 0}
        self._lock = threading.Lock()
        self._latest: _Chunk | None = None
        self._pending: tuple[dict[str, np.ndarray], str, int] | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._error: BaseException | None = None
        self._is_session = False
        self.t = 0
        # deterministic latency (robodual_core.runtime.latency); also real-time chunking at zero latency
        self._timed = (TimedSteps(self.latency, self.generalist_every, specialist_every)
                       if mode == "sync" and (not self.latency.zero or wants_prefix(specialist)) else None)

    # -- lifecycle -------------------------------------------------------------------------------
    def new_session(self, wrap: Callable[[Any], Any] | None = None) -> DualSystemPolicy:
        """A fresh policy sharing this one's models (one per robot or client connection); ``wrap`` is applied
        to each of its runners (lockstep evaluation batches sessions' calls this way)."""
        if wrap is not None and self.mode != "sync":
            raise RobodualError("a dual-system policy in async mode cannot run in lockstep with other sessions "
                                "(its generalist runs in the background); use sync mode")
        session = DualSystemPolicy(_fork(self.generalist, wrap), _fork(self.specialist, wrap), self.mode,
                                   self.generalist_every, self._aggregation, self.specialist_every, self.latency)
        session._is_session = True
        return session

    def reset(self) -> None:
        self._shutdown()
        self.t = 0
        self._latest = None
        self._pending = None
        self._error = None
        self.aggregator.reset()
        self._reset_runners()
        self.stats = {"generalist_calls": 0, "specialist_calls": 0}
        if self._timed is not None:
            self._timed.reset()

    def close(self) -> None:
        """Stop the background worker; a generalist process is stopped too (sessions share it: close the
        policy that :func:`load_policy` returned, not its sessions)."""
        self._shutdown()
        if not self._is_session:
            close = getattr(self.generalist, "close", None)
            if callable(close):
                close()

    def _shutdown(self) -> None:
        if self._worker is not None:
            self._stop.set()
            self._wake.set()
            self._worker.join(timeout=30)
            self._worker = None
        self._stop.clear()
        self._wake.clear()

    def __del__(self) -> None:
        try:
            self._shutdown()
        except Exception:  # interpreter shutdown
            pass

    # -- generalist scheduling -------------------------------------------------------------------
    def _run_generalist(self, observation: dict[str, np.ndarray], instruction: str, step: int) -> None:
        out = self.generalist.predict(observation, instruction)
        with self._lock:
            self._latest = _Chunk(out, step)
            self.stats["generalist_calls"] += 1

    def _worker_loop(self) -> None:
        try:
            while not self._stop.is_set():
                self._wake.wait()
                self._wake.clear()
                with self._lock:
                    job, self._pending = self._pending, None
                if job is None or self._stop.is_set():
                    continue
                self._run_generalist(*job)
        except BaseException as exc:  # surfaced on the control thread
            self._error = exc

    def _submit(self, observation: dict[str, np.ndarray], instruction: str) -> None:
        with self._lock:
            self._pending = ({k: np.array(v, copy=True) for k, v in observation.items()}, instruction, self.t)
        self._wake.set()

    # -- control ---------------------------------------------------------------------------------
    def step(self, observation: dict[str, np.ndarray], instruction: str) -> np.ndarray:
        if self._error is not None:
            raise RobodualError(f"the generalist worker failed: {self._error}") from self._error
        if self._timed is not None:
            action = self._timed.step(self.t, observation, instruction, self.generalist, self.specialist,
                                      self.aggregator, self.stats, self.k_g)
            self.t += 1
            return action
        if self.mode == "sync":
            if self.t % self.generalist_every == 0:
                self._run_generalist(observation, instruction, self.t)
        else:
            if self._worker is None:
                self._worker = threading.Thread(target=self._worker_loop, name="robodual-generalist", daemon=True)
                self._worker.start()
            if self._latest is None:
                self._run_generalist(observation, instruction, self.t)  # only the very first chunk is awaited
            else:
                self._submit(observation, instruction)  # the worker takes the newest observation when free
        with self._lock:
            chunk = self._latest
        assert chunk is not None
        tau = min(self.t - chunk.step, self.k_g - 1)
        if self.t % self.specialist_every == 0 or not self.aggregator.chunks:
            actions = self.specialist.predict(observation, instruction, chunk.output, tau)
            self.stats["specialist_calls"] += 1
            self.aggregator.add(self.t, actions)
        else:
            _observe(self.specialist, observation)
        action = self.aggregator.action(self.t)
        self.t += 1
        return action


def _observe(runner: Any, observation: dict[str, np.ndarray]) -> None:
    """A step the specialist skips (``specialist_every > 1``) still reaches its history buffers, when it keeps
    any (``observe``): history frames stay one control step apart, as in training."""
    observe = getattr(runner, "observe", None)
    if observe is not None:
        observe(observation)


class SpecialistOnlyPolicy(_PolicyInfo):
    """The specialist alone (its language sensor, if any, tells tasks apart)."""

    def __init__(self, specialist: SpecialistRunner, aggregation: AggregationConfig | None = None,
                 specialist_every: int = 1, latency: LatencyConfig | None = None):
        self.specialist = specialist
        self.runners = (specialist,)
        self._aggregation = aggregation
        self.aggregator = TemporalAggregator(aggregation)
        self.specialist_every = specialist_every
        self.t = 0
        self.latency = latency or LatencyConfig()  # only its specialist part applies
        self.stats = {"specialist_calls": 0}
        self._timed = (TimedSteps(self.latency, 1, specialist_every)
                       if self.latency.specialist or wants_prefix(specialist) else None)

    def new_session(self, wrap: Callable[[Any], Any] | None = None) -> SpecialistOnlyPolicy:
        return SpecialistOnlyPolicy(_fork(self.specialist, wrap), self._aggregation, self.specialist_every,
                                    self.latency)

    def reset(self) -> None:
        self.t = 0
        self.aggregator.reset()
        self._reset_runners()
        if self._timed is not None:
            self._timed.reset()

    def step(self, observation: dict[str, np.ndarray], instruction: str) -> np.ndarray:
        if self._timed is not None:
            action = self._timed.step(self.t, observation, instruction, None, self.specialist, self.aggregator,
                                      self.stats)
            self.t += 1
            return action
        if self.t % self.specialist_every == 0 or not self.aggregator.chunks:
            self.aggregator.add(self.t, self.specialist.predict(observation, instruction, None, 0))
            self.stats["specialist_calls"] += 1
        else:
            _observe(self.specialist, observation)
        action = self.aggregator.action(self.t)
        self.t += 1
        return action


class GeneralistOnlyPolicy(_PolicyInfo):
    """The generalist alone: a new chunk every ``execute`` steps, executed open loop (or aggregated)."""

    def __init__(self, generalist: GeneralistRunner, execute: int | None = None,
                 aggregation: AggregationConfig | None = None, latency: LatencyConfig | None = None):
        self.generalist = generalist
        self.runners = (generalist,)
        self._aggregation = aggregation
        self.execute = execute or generalist.k_g
        self.aggregator = TemporalAggregator(aggregation or AggregationConfig(enabled=False))
        self.t = 0
        self.latency = latency or LatencyConfig()  # only its generalist part applies
        self._timed = TimedGeneralistOnly(self.latency.generalist, self.execute) if self.latency.generalist else None

    def new_session(self, wrap: Callable[[Any], Any] | None = None) -> GeneralistOnlyPolicy:
        return GeneralistOnlyPolicy(_fork(self.generalist, wrap), self.execute, self._aggregation, self.latency)

    def reset(self) -> None:
        self.t = 0
        self.aggregator.reset()
        self._reset_runners()
        if self._timed is not None:
            self._timed.reset()

    def step(self, observation: dict[str, np.ndarray], instruction: str) -> np.ndarray:
        if self._timed is not None:
            action = self._timed.step(self.t, observation, instruction, self.generalist, self.aggregator)
            self.t += 1
            return action
        if self.t % self.execute == 0:
            out = self.generalist.predict(observation, instruction)
            self.aggregator.add(self.t, self.generalist.actions_to_env(out.actions[0]))
        action = self.aggregator.action(self.t)
        self.t += 1
        return action
