"""Deterministic latency, counted in control steps (DESIGN.md section 7).

A latency experiment in simulation must give the same result on any machine, so time is the control step, not
the wall clock: a model's output for the observation at step ``t`` is computed at once (the model sees exactly
that observation) and *released* ``L`` steps later, at ``t + L``. What the robot executes in between comes from
what was already committed.

- ``generalist`` (``L_g``): the generalist's chunk for the observation at step ``t`` becomes available at
  ``t + L_g``; until then the specialist conditions on the previous chunk, with its true age
  ``tau = step - chunk.step`` (the shifted window drops the chunk's stale actions).
- ``specialist`` (``d``): the specialist's chunk for step ``t`` (its row ``i`` is the action for ``t + i``)
  starts executing at ``t + d``, from row ``d``; the ``d`` actions in between are the committed prefix, taken
  from the chunks already released (what real-time chunking inpaints, :class:`CommittedPrefix`).

Each model is one model on one device: one request in flight at a time (:class:`Pipeline`). A request is made
at the first step where none is in flight and at least ``every`` steps have passed since the previous one, so a
specialist with ``d = 2`` runs every second step and a generalist with ``L_g > k_g`` restarts as soon as its chunk
lands (as the wall-clock asynchronous mode does). The first request of an episode is awaited (released at once),
as the asynchronous mode awaits the first chunk: the robot starts when it has something to execute. A step that
no released chunk covers (a generalist alone whose chunk is stale on arrival) repeats the newest chunk's last
action (a controller holding its last command).

With ``L_g = d = 0`` the policies take their original code path, unchanged (bit-identical results), unless the
specialist does real-time chunking (it then needs the committed prefix, which only this path computes; at zero
latency it schedules and aggregates exactly as the original path, tested).

What a 7B generalist costs at Meta-World's control rate, from the repository's recorded figures
(``../shared/gpu/README.md``: an OpenVLA-7B-sized generalist decodes at 41 ms/token on an H200, batch 1, KV
cache): an 8-step chunk of 7-dimensional actions is 8 x 7 = 56 action tokens, 56 x 41 ms = 2.30 s (2.6 s were
measured for the 63 tokens with the 7 separators). Meta-World steps at 80 Hz (frame_skip 5 x 2.5 ms = 12.5 ms
per control step), so ``L_g = 2296 / 12.5 = 183.7``, i.e. **184 steps** (:func:`generalist_latency_steps`): more
than two thirds of a 250-step episode. At the card's bandwidth floor (~2.7 ms/token: 13 GB of weights at
~4.8 TB/s) the same chunk would cost 151 ms, 12.1 steps (13 rounded up). The study sweeps ``L_g`` in {0, 8, 16, 32}: between that
floor and today's decoder. The default stays 0 (the paper's synchronous evaluation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from robodual_core.config import ranged
from robodual_core.errors import RobodualError

# the recorded figures the documented default is computed from (see the module docstring)
MEASURED_MS_PER_TOKEN_7B_H200 = 41.0
METAWORLD_CONTROL_HZ = 80.0


@dataclass
class LatencyConfig:
    """Latency of each model in control steps (``latency`` in study configs, ``--latency`` on the command line)."""

    generalist: int = ranged(0, ge=0)  # L_g: the generalist's chunk for step t is released at t + L_g
    specialist: int = ranged(0, ge=0)  # d: the specialist's chunk for step t starts executing at t + d

    @property
    def zero(self) -> bool:
        return self.generalist == 0 and self.specialist == 0

    def text(self) -> str:
        return f"generalist={self.generalist},specialist={self.specialist}"


def parse_latency(text: str | LatencyConfig | dict | None, flag: str = "--latency") -> LatencyConfig:
    """``"generalist=16,specialist=2"`` (either key may be left out: 0) -> :class:`LatencyConfig`; one line naming
    ``flag`` otherwise. A config or a dict of the two keys passes through (checked)."""
    if text is None:
        return LatencyConfig()
    if isinstance(text, LatencyConfig):
        values = {"generalist": text.generalist, "specialist": text.specialist}
    elif isinstance(text, dict):
        values = dict(text)
    else:
        values = {}
        for part in (p.strip() for p in str(text).split(",")):
            if not part:
                continue
            key, sep, value = part.partition("=")
            key = key.strip()
            if not sep or key not in ("generalist", "specialist") or key in values:
                raise RobodualError(f"{flag}: expected 'generalist=STEPS,specialist=STEPS' (each key once, whole "
                                    f"control steps >= 0), found '{text}'")
            try:
                values[key] = int(value.strip())
            except ValueError:
                values[key] = value.strip()
    out = LatencyConfig()
    for key, value in values.items():
        if key not in ("generalist", "specialist"):
            raise RobodualError(f"{flag}: unknown key '{key}'; expected generalist and/or specialist")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise RobodualError(f"{flag}: {key} is {value!r}; expected a whole number of control steps >= 0 "
                                f"(e.g. 'generalist=16,specialist=2')")
        setattr(out, key, value)
    return out


def generalist_latency_steps(ms_per_token: float = MEASURED_MS_PER_TOKEN_7B_H200, k_g: int = 8, action_dim: int = 7,
                             control_hz: float = METAWORLD_CONTROL_HZ) -> int:
    """``L_g`` of a chunk decoded token by token: ``k_g * action_dim`` tokens at ``ms_per_token``, in control steps
    at ``control_hz``, rounded up (defaults: the recorded 7B figure at Meta-World's 80 Hz -> 184)."""
    seconds = k_g * action_dim * ms_per_token / 1e3
    return math.ceil(seconds * control_hz - 1e-9)


class Pipeline:
    """One model's requests in control steps: one in flight, released ``latency`` steps after the observation's
    step (the episode's first request at once), a new one at least ``every`` steps after the previous."""

    def __init__(self, latency: int, every: int = 1):
        if latency < 0 or every < 1:
            raise RobodualError(f"latency pipeline: expected latency >= 0 and every >= 1, found {latency}, {every}")
        self.latency, self.every = int(latency), int(every)
        self.reset()

    def reset(self) -> None:
        self.last: int | None = None
        self.in_flight: tuple[int, int, Any] | None = None  # (release step, observation step, result)

    def due(self, t: int) -> bool:
        return self.in_flight is None and (self.last is None or t >= self.last + self.every)

    def submit(self, t: int, result: Any) -> None:
        release = t if self.last is None else t + self.latency  # the first one is awaited
        self.last = t
        self.in_flight = (release, t, result)

    def pump(self, t: int, run: Any, on_release: Any) -> bool:
        """One control step: a result due at ``t`` lands (``on_release((step, result))``), then, when a request is
        due, ``run()`` computes it from this step's observation (released now if it is the episode's first or the
        latency is 0). Returns whether ``run`` ran."""
        released = self.release(t)
        if released is not None:
            on_release(released)
        if not self.due(t):
            return False
        self.submit(t, run())
        released = self.release(t)
        if released is not None:
            on_release(released)
        return True

    def release(self, t: int) -> tuple[int, Any] | None:
        """``(observation step, result)`` when the request in flight is due at step ``t``, else None."""
        if self.in_flight is not None and self.in_flight[0] <= t:
            _, step, result = self.in_flight
            self.in_flight = None
            return step, result
        return None


@dataclass
class CommittedPrefix:
    """What the robot will execute from the current step on, as far as the chunks already released say:
    ``actions [n, D]`` (environment units) for steps ``t .. t + n - 1``; the first ``delay`` of them are fixed
    (they run while the new chunk is computed). Real-time chunking inpaints them (robodual_specialist.rtc)."""

    actions: np.ndarray
    delay: int

    def __post_init__(self) -> None:
        a = np.asarray(self.actions, dtype=np.float32)
        self.actions = a.reshape(a.shape[0], -1) if a.size else a.reshape(0, a.shape[-1] if a.ndim == 2 else 0)
        self.delay = int(self.delay)


def planned_actions(aggregator: Any, t: int, horizon: int, hold: np.ndarray | None = None) -> np.ndarray:
    """The actions the released chunks plan for steps ``t .. t + horizon - 1`` (without changing ``aggregator``),
    stopping at the first step none covers; ``hold`` (the last executed action) fills ``t`` when nothing covers it."""
    rows = []
    for s in range(t, t + horizon):
        a = aggregator.peek(s)
        if a is None:
            break
        rows.append(a)
    if not rows and hold is not None:
        rows.append(np.asarray(hold, dtype=np.float32))
    if not rows:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack(rows).astype(np.float32)


def wants_prefix(runner: Any) -> bool:
    """Whether a specialist runner takes the committed prefix (``predict(..., prefix=)``): real-time chunking."""
    from robodual_core.runtime.protocols import PrefixSpecialistRunner

    return isinstance(runner, PrefixSpecialistRunner) and bool(runner.wants_prefix)


class TimedSteps:
    """The control step of a dual-system or specialist-only policy (``generalist=None``) under a
    :class:`LatencyConfig`: the models' outputs released on the steps the module docstring describes."""

    def __init__(self, latency: LatencyConfig, generalist_every: int, specialist_every: int):
        self.generalist = Pipeline(latency.generalist, generalist_every)
        self.specialist = Pipeline(latency.specialist, specialist_every)
        self.reset()

    def reset(self) -> None:
        self.generalist.reset()
        self.specialist.reset()
        self.chunk: tuple[int, Any] | None = None  # (observation step, GeneralistOutput) of the newest released chunk
        self.last_action: np.ndarray | None = None

    def step(self, t: int, observation: dict[str, np.ndarray], instruction: str, generalist: Any, specialist: Any,
             aggregator: Any, stats: dict[str, int], k_g: int = 1) -> np.ndarray:
        if generalist is not None:
            def run_generalist() -> Any:
                stats["generalist_calls"] = stats.get("generalist_calls", 0) + 1
                return generalist.predict(observation, instruction)

            self.generalist.pump(t, run_generalist, self._take_chunk)

        def run_specialist() -> Any:
            cond, tau = None, 0
            if generalist is not None:
                assert self.chunk is not None  # the first chunk is awaited
                tau = min(t - self.chunk[0], k_g - 1)
                cond = self.chunk[1]
            kwargs: dict[str, Any] = {}
            if wants_prefix(specialist):
                delay = 0 if self.specialist.last is None else self.specialist.latency
                kwargs["prefix"] = CommittedPrefix(
                    planned_actions(aggregator, t, int(specialist.k_s), self.last_action), delay)
            stats["specialist_calls"] = stats.get("specialist_calls", 0) + 1
            return specialist.predict(observation, instruction, cond, tau, **kwargs)

        if not self.specialist.pump(t, run_specialist, lambda released: aggregator.add(*released)):
            observe = getattr(specialist, "observe", None)
            if observe is not None:
                observe(observation)  # history frames stay one control step apart, as in training
        return self.action(t, aggregator)

    def _take_chunk(self, released: tuple[int, Any]) -> None:
        self.chunk = released

    def action(self, t: int, aggregator: Any) -> np.ndarray:
        """The aggregated action for ``t``; when no released chunk covers ``t``, the newest chunk's last action."""
        if aggregator.peek(t) is not None:
            self.last_action = aggregator.action(t)
        else:
            held = aggregator.hold()
            if held is None and self.last_action is None:
                raise RobodualError(f"no action chunk covers control step {t} and none was executed before")
            self.last_action = held if held is not None else self.last_action
        return self.last_action.copy()


class TimedGeneralistOnly:
    """A generalist alone under latency ``L_g``: it keeps executing its previous chunk while the next is decoded
    (as OpenVLA on a robot with a non-blocking controller). It asks for the next chunk ``L_g`` steps before the
    executed one ends (at least one step after the previous request, one in flight), so a generalist faster than
    its chunk never stalls; with ``L_g = 0`` that is every ``execute`` steps, as without latency."""

    def __init__(self, latency: int, execute: int):
        self.pipeline = Pipeline(latency, max(1, execute - latency))
        self.timed = TimedSteps(LatencyConfig(), 1, 1)  # only its action(): hold when nothing covers the step

    def reset(self) -> None:
        self.pipeline.reset()
        self.timed.reset()

    def step(self, t: int, observation: dict[str, np.ndarray], instruction: str, generalist: Any,
             aggregator: Any) -> np.ndarray:
        def run() -> Any:
            return generalist.actions_to_env(generalist.predict(observation, instruction).actions[0])

        self.pipeline.pump(t, run, lambda released: aggregator.add(*released))
        return self.timed.action(t, aggregator)
