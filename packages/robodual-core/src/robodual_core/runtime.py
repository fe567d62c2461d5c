"""The dual-system runtime: a slow generalist and a fast specialist at their own rates (paper 3.2, App. A).

Models are reached through *runners*, small adapters that plugin packages provide:

- ``GeneralistRunner.predict(observation, instruction) -> GeneralistOutput`` (batch 1, normalized actions),
  ``.actions_to_env(actions [k_g, D]) -> np.ndarray`` (unnormalized), attribute ``k_g``;
- ``SpecialistRunner.predict(observation, instruction, generalist, tau) -> np.ndarray [k_s, D]`` in the
  environment's units, attribute ``k_s``. ``generalist`` is ``None`` for a specialist-only policy.

Policies (all implement :class:`robodual_core.interfaces.Policy`):

- :class:`DualSystemPolicy` -- synchronous (the generalist runs every ``k_g`` control steps, as in the
  paper's CALVIN evaluation) or asynchronous (the generalist runs in a background thread; the
  specialist never waits and conditions on the latest finished chunk, masked by its true age ``tau``);
- :class:`SpecialistOnlyPolicy` and :class:`GeneralistOnlyPolicy` -- baselines behind the same interface.

Temporal aggregation (:class:`TemporalAggregator`) averages the overlapping predictions of the last
``k_s`` chunks for the current step with weights ``w_i = exp(-m i)``; by default ``w_0`` belongs to the
oldest prediction, as the paper states.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from robodual_core.errors import RobodualError
from robodual_core.interfaces import GeneralistOutput


class GeneralistRunner(Protocol):
    k_g: int

    def predict(self, observation: dict[str, np.ndarray], instruction: str) -> GeneralistOutput: ...

    def actions_to_env(self, actions: Any) -> np.ndarray: ...


class SpecialistRunner(Protocol):
    """``predict`` runs the specialist on one step's observation; a runner that keeps history frames may also
    have ``observe(observation)``, which the policies call on the steps they skip ``predict``."""

    k_s: int

    def predict(self, observation: dict[str, np.ndarray], instruction: str, generalist: GeneralistOutput | None,
                tau: int) -> np.ndarray: ...


@dataclass
class AggregationConfig:
    enabled: bool = True
    m: float = 0.1
    oldest_first: bool = True  # w_0 for the oldest prediction (paper App. A)
    binarize_gripper: bool = True
    gripper_dims: tuple[int, ...] = (-1,)
    gripper_threshold: float = 0.0


class TemporalAggregator:
    """Weighted average of the predictions that overlapping action chunks make for the current step."""

    def __init__(self, cfg: AggregationConfig | None = None):
        self.cfg = cfg or AggregationConfig()
        self.chunks: deque[tuple[int, np.ndarray]] = deque()

    def reset(self) -> None:
        self.chunks.clear()

    def add(self, t: int, chunk: np.ndarray) -> None:
        """Record a chunk ``[k, D]`` predicted at step ``t`` (its row 0 is the action for step ``t``)."""
        self.chunks.append((t, np.asarray(chunk, dtype=np.float64)))
        if not self.cfg.enabled:
            while len(self.chunks) > 1:
                self.chunks.popleft()

    def action(self, t: int) -> np.ndarray:
        """The action for step ``t``; chunks that no longer cover ``t`` are dropped."""
        while self.chunks and t - self.chunks[0][0] >= len(self.chunks[0][1]):
            self.chunks.popleft()
        preds = [chunk[t - t0] for t0, chunk in self.chunks if 0 <= t - t0 < len(chunk)]  # oldest first
        if not preds:
            raise RobodualError(f"no action chunk covers control step {t}; the policy fell behind")
        if self.cfg.enabled:
            idx = np.arange(len(preds)) if self.cfg.oldest_first else np.arange(len(preds))[::-1]
            w = np.exp(-self.cfg.m * idx)
            action = (np.stack(preds) * (w / w.sum())[:, None]).sum(0)
        else:
            action = preds[-1].copy()
        if self.cfg.binarize_gripper:
            for d in self.cfg.gripper_dims:
                action[d] = 1.0 if action[d] > self.cfg.gripper_threshold else -1.0
        return action.astype(np.float32)


def _fork(runner: Any) -> Any:
    """A runner for a new session: runners with per-episode state provide ``fork()``; others are shared."""
    fork = getattr(runner, "fork", None)
    return fork() if callable(fork) else runner


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
                 specialist_every: int = 1):
        if mode not in ("sync", "async"):
            raise RobodualError(f"runtime mode must be 'sync' or 'async', found {mode!r}")
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

    # -- lifecycle -------------------------------------------------------------------------------
    def new_session(self) -> DualSystemPolicy:
        """A fresh policy sharing this one's models (one per robot or client connection)."""
        session = DualSystemPolicy(_fork(self.generalist), _fork(self.specialist), self.mode,
                                   self.generalist_every, self._aggregation, self.specialist_every)
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
                 specialist_every: int = 1):
        self.specialist = specialist
        self.runners = (specialist,)
        self._aggregation = aggregation
        self.aggregator = TemporalAggregator(aggregation)
        self.specialist_every = specialist_every
        self.t = 0

    def new_session(self) -> SpecialistOnlyPolicy:
        return SpecialistOnlyPolicy(_fork(self.specialist), self._aggregation, self.specialist_every)

    def reset(self) -> None:
        self.t = 0
        self.aggregator.reset()
        self._reset_runners()

    def step(self, observation: dict[str, np.ndarray], instruction: str) -> np.ndarray:
        if self.t % self.specialist_every == 0 or not self.aggregator.chunks:
            self.aggregator.add(self.t, self.specialist.predict(observation, instruction, None, 0))
        else:
            _observe(self.specialist, observation)
        action = self.aggregator.action(self.t)
        self.t += 1
        return action


class GeneralistOnlyPolicy(_PolicyInfo):
    """The generalist alone: a new chunk every ``execute`` steps, executed open loop (or aggregated)."""

    def __init__(self, generalist: GeneralistRunner, execute: int | None = None,
                 aggregation: AggregationConfig | None = None):
        self.generalist = generalist
        self.runners = (generalist,)
        self._aggregation = aggregation
        self.execute = execute or generalist.k_g
        self.aggregator = TemporalAggregator(aggregation or AggregationConfig(enabled=False))
        self.t = 0

    def new_session(self) -> GeneralistOnlyPolicy:
        return GeneralistOnlyPolicy(_fork(self.generalist), self.execute, self._aggregation)

    def reset(self) -> None:
        self.t = 0
        self.aggregator.reset()
        self._reset_runners()

    def step(self, observation: dict[str, np.ndarray], instruction: str) -> np.ndarray:
        if self.t % self.execute == 0:
            out = self.generalist.predict(observation, instruction)
            self.aggregator.add(self.t, self.generalist.actions_to_env(out.actions[0]))
        action = self.aggregator.action(self.t)
        self.t += 1
        return action


@dataclass
class RuntimeConfig:
    mode: str = "sync"
    kind: str = "auto"  # auto | dual | specialist | generalist
    aggregation: AggregationConfig | None = None


def load_runner(kind: str, path: str | Path, **options: Any) -> Any:
    """Build a generalist or specialist runner from a checkpoint through the registry.

    The checkpoint's ``model_config.json`` names its ``family``; the registered class provides
    ``load_runner(ckpt_dir)``.
    """
    from robodual_core.checkpoint import read_checkpoint_meta, resolve_checkpoint
    from robodual_core.plugins import registry

    ckpt = resolve_checkpoint(path)
    meta = read_checkpoint_meta(ckpt)
    family = meta.get("family")
    if family is None:
        raise RobodualError(f"checkpoint '{ckpt}' has no 'family' in model_config.json; cannot tell what it is")
    cls = registry("generalists" if kind == "generalist" else "specialists").get(family)
    loader = getattr(cls, "load_runner", None)
    if loader is None:
        raise RobodualError(f"{kind} family '{family}' provides no load_runner(); it cannot run in a policy")
    return loader(ckpt, **options)


def generalist_for_specialist(specialist_ckpt: str | Path, process: bool = False) -> Any | None:
    """The generalist runner a specialist checkpoint was trained with (``generalist.json``), or None.

    The runner reproduces what the specialist saw in training: the cache's latent pooling travels with it.
    With ``process`` it runs in its own process (:class:`ProcessGeneralist`).
    """
    from robodual_core.checkpoint import read_json, resolve_checkpoint

    ckpt = resolve_checkpoint(specialist_ckpt)
    if not (ckpt / "generalist.json").is_file():
        return None
    record = read_json(ckpt, "generalist")
    path = recorded_generalist(ckpt, record)
    options = {"pooling": record.get("pooling") or "none", "latent_dtype": record.get("dtype") or "float32"}
    if process:
        return ProcessGeneralist(path, **options)
    return load_runner("generalist", path, **options)


def recorded_generalist(ckpt: Path, record: dict[str, Any]) -> str:
    """The generalist checkpoint a specialist checkpoint's ``generalist.json`` names, checked against the hash
    recorded in training: a run folder that has since trained on (its latest checkpoint is another one) or
    weights changed in place would otherwise condition the specialist on outputs it never saw."""
    from robodual_core.data.generalist_cache import checkpoint_hash

    where = ckpt / "generalist.json"
    if not record.get("checkpoint"):
        raise RobodualError(f"'{where}' names no generalist checkpoint")
    path = str(record["checkpoint"])
    if record.get("hash"):
        found = checkpoint_hash(path)
        if found != record["hash"]:
            raise RobodualError(f"'{where}': the specialist was trained with generalist {record['hash']}, but "
                                f"'{path}' is now {found} (a run folder that trained on, or changed weights); "
                                "set 'checkpoint' there to the checkpoint folder it was trained with")
    return path


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


def checkpoint_kind(path: str | Path) -> str:
    """'generalist' or 'specialist', from the checkpoint's model_config.json."""
    from robodual_core.checkpoint import read_checkpoint_meta
    from robodual_core.plugins import registry

    family = read_checkpoint_meta(path).get("family", "")
    if family in registry("specialists"):
        return "specialist"
    if family in registry("generalists"):
        return "generalist"
    raise RobodualError(f"checkpoint '{path}' has family '{family}', which no installed plugin registers "
                        f"(specialists: {registry('specialists').names()}, generalists: {registry('generalists').names()})")


def load_policy(path: str | Path, kind: str = "auto", mode: str = "sync",
                aggregation: AggregationConfig | None = None) -> Any:
    """One path defines a policy (DESIGN.md section 10).

    A specialist checkpoint that records a generalist (``generalist.json``) gives a dual-system policy,
    one without it a specialist-only policy; a generalist checkpoint gives a generalist-only policy.
    ``kind`` forces one of 'dual', 'specialist', 'generalist'.
    """
    from robodual_core.checkpoint import read_json, resolve_checkpoint

    ckpt = resolve_checkpoint(path)
    found = checkpoint_kind(ckpt)
    if found == "generalist":
        if kind not in ("auto", "generalist"):
            raise RobodualError(f"'{path}' is a generalist checkpoint; it cannot make a '{kind}' policy")
        return GeneralistOnlyPolicy(load_runner("generalist", ckpt), aggregation=aggregation)
    has_generalist = (ckpt / "generalist.json").is_file()
    if kind == "generalist":
        if not has_generalist:
            raise RobodualError(f"specialist checkpoint '{ckpt}' records no generalist")
        return GeneralistOnlyPolicy(load_runner("generalist", recorded_generalist(ckpt, read_json(ckpt, "generalist"))),
                                    aggregation=aggregation)
    specialist = load_runner("specialist", ckpt)
    if kind == "specialist" or (kind == "auto" and not has_generalist):
        return SpecialistOnlyPolicy(specialist, aggregation=aggregation)
    if not has_generalist:
        raise RobodualError(f"specialist checkpoint '{ckpt}' was trained without a generalist; it cannot make a "
                            "dual-system policy (train it with --generalist-cache)")
    # asynchronous mode puts the generalist in its own process: a thread would share the GIL with the specialist
    return DualSystemPolicy(generalist_for_specialist(ckpt, process=mode == "async"), specialist, mode=mode,
                            aggregation=aggregation)


def measure_rate(policy: Any, observation: dict[str, np.ndarray], instruction: str, steps: int,
                 warmup: int = 8) -> float:
    """Steady-state control steps per second of ``policy`` on a fixed observation.

    The first ``warmup`` steps after ``reset`` are not timed: an asynchronous policy awaits its very first
    generalist chunk there, which is a start-up cost, not a control rate.
    """
    policy.reset()
    for _ in range(warmup):
        policy.step(observation, instruction)
    t0 = time.perf_counter()
    for _ in range(steps):
        policy.step(observation, instruction)
    return steps / max(time.perf_counter() - t0, 1e-9)


def exp_weights(n: int, m: float = 0.1) -> np.ndarray:
    """The paper's aggregation weights ``exp(-m i)`` for i = 0..n-1 (normalised)."""
    w = np.array([math.exp(-m * i) for i in range(n)])
    return w / w.sum()
