"""Action chunks over the wire, and a robot loop that executes them asynchronously, switching chunks the
real-time-chunking way (Black, Galliker & Levine 2025).

Protocol (beside ``step``): a ``chunk`` request carries the observation, the instruction, ``executed`` (the
actions ``[n, D]`` the robot executed since its previous chunk request: the server's clock for this robot moves by
``n``), ``prefix`` (``[p, D]``: what the robot's current chunk will execute next, of which the first ``delay`` rows
run while the new chunk is computed: the committed prefix a real-time-chunking specialist inpaints) and ``delay``.
The reply is ``{"type": "chunk", "actions": [k, D], "timing": ...}``; row ``i`` is the action for ``i`` steps after
the observation.

:class:`ChunkExecutor` is what a robot runs at its control rate: ``act(observation)`` returns the next action from
its queue at once; a background thread asks for the next chunk when the current one has run ``execute_every``
steps, sending the rows it has not executed yet as the prefix; when the new chunk lands after ``d`` more steps
(the robot went on executing the prefix meanwhile) execution continues from its row ``d``. ``d`` is measured, and
the delay sent with the next request is the largest of the recent ones (RTC's conservative estimate).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

import numpy as np

from robodual_client.errors import WireError
from robodual_client.wire import PROTOCOL_VERSION, check_action, encode_observation

MAX_ROWS = 4096  # rows of an executed list, a prefix or a chunk


def _rows(name: str, value: Any, action_dim: int | None, allow_empty: bool = True) -> np.ndarray:
    """``value`` as a finite float32 ``[n, D]`` array (a WireError naming ``name`` otherwise)."""
    try:
        with np.errstate(over="ignore"):
            arr = np.asarray(value if value is not None else np.zeros((0, action_dim or 0)), dtype=np.float32)
    except (TypeError, ValueError, OverflowError):
        raise WireError(f"'{name}' must be an array of actions [n, D], found {type(value).__name__}") from None
    if arr.ndim == 1 and arr.size == 0:
        arr = arr.reshape(0, action_dim or 0)
    if arr.ndim != 2:
        raise WireError(f"'{name}' must be an array of actions [n, D], found shape {list(arr.shape)}")
    if len(arr) > MAX_ROWS:
        raise WireError(f"'{name}' has {len(arr)} rows; at most {MAX_ROWS}")
    if len(arr) == 0 and not allow_empty:
        raise WireError(f"'{name}' is empty; expected at least one action")
    if len(arr) == 0 and action_dim is not None:
        arr = arr.reshape(0, action_dim)
    if len(arr) and action_dim is not None and arr.shape[1] != action_dim:
        raise WireError(f"'{name}' has actions of {arr.shape[1]} values; expected {action_dim}")
    if not np.isfinite(arr).all():
        raise WireError(f"'{name}' contains NaN or Inf")
    return arr


def chunk_request(observation: dict[str, Any], instruction: str, executed: Any = None, prefix: Any = None,
                  delay: int = 0) -> dict[str, Any]:
    if not isinstance(instruction, str):
        raise WireError(f"the instruction must be a string, found {type(instruction).__name__}")
    if isinstance(delay, bool) or not isinstance(delay, int | np.integer) or delay < 0:
        raise WireError(f"'delay' must be a whole number of control steps >= 0, found {str(delay)[:40]}")
    return {"type": "chunk", "protocol": PROTOCOL_VERSION, "observation": encode_observation(observation),
            "instruction": instruction, "executed": _rows("executed", executed, None),
            "prefix": _rows("prefix", prefix, None), "delay": int(delay)}


def read_chunk_request(message: dict[str, Any], action_dim: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    """``(executed [n, D], prefix [p, D], delay)`` of a chunk request, checked (the server's side)."""
    delay = message.get("delay", 0)
    if isinstance(delay, bool) or not isinstance(delay, int) or not 0 <= delay <= MAX_ROWS:
        raise WireError(f"'delay' must be a whole number of control steps in 0..{MAX_ROWS}, found {str(delay)[:40]}")
    return (_rows("executed", message.get("executed"), action_dim), _rows("prefix", message.get("prefix"), action_dim),
            delay)


def chunk_reply(actions: np.ndarray, timing: dict[str, float]) -> dict[str, Any]:
    return {"type": "chunk", "actions": actions, "timing": timing}


def check_chunk(actions: Any, action_dim: int | None = None, source: str = "the policy") -> np.ndarray:
    """A chunk ``[k, D]`` of finite float32 actions (a WireError otherwise: never executed)."""
    arr = check_action(actions, None, source)
    if arr.ndim != 2 or len(arr) == 0:
        raise WireError(f"{source} returned a chunk of shape {list(arr.shape)}; expected [k, D] with k >= 1")
    if action_dim is not None and arr.shape[1] != action_dim:
        raise WireError(f"{source} returned a chunk of shape {list(arr.shape)}; expected {action_dim} values per action")
    return arr


class ChunkExecutor:
    """An action queue for a robot loop, fed by ``policy.chunk(...)`` (a :class:`~robodual_client.RemotePolicy`, or
    anything with that method) in a background thread; see the module docstring.

    ``execute_every``: steps of a chunk executed before the next is requested (default: half the chunk);
    ``delay``: the first estimate of how many steps a request takes; ``sync=True`` computes each chunk in the
    calling thread and advances the robot's clock by the estimated delay (a deterministic stand-in for tests and
    simulations; the real loop leaves it False).
    """

    def __init__(self, policy: Any, instruction: str, execute_every: int | None = None, delay: int = 0,
                 history: int = 10, sync: bool = False):
        if isinstance(delay, bool) or not isinstance(delay, int) or delay < 0:
            raise WireError(f"ChunkExecutor delay must be a whole number of control steps >= 0, found {delay}")
        if execute_every is not None and (isinstance(execute_every, bool) or not isinstance(execute_every, int)
                                          or execute_every < 1):
            raise WireError(f"ChunkExecutor execute_every must be a whole number >= 1, found {execute_every}")
        self.policy, self.instruction = policy, instruction
        self.execute_every, self.first_delay, self.sync = execute_every, delay, sync
        self.delays: deque[int] = deque(maxlen=history)
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """A new episode: the queue is emptied (the next ``act`` waits for its first chunk); call the policy's own
        ``reset()`` too."""
        self._join()
        self.t = 0  # steps executed in this episode
        self.chunk: np.ndarray | None = None
        self.index = 0  # the row of ``chunk`` executed next
        self.chunk_start = 0  # step at which the current chunk started executing
        self.executed: list[np.ndarray] = []  # since the last request
        self.switches: list[tuple[int, int]] = []  # (step, delay) of every chunk switch
        self._thread: threading.Thread | None = None
        self._result: tuple[int, np.ndarray] | None = None  # (request step, chunk)
        self._error: BaseException | None = None
        self._pending_sync = 0  # sync=True: the step at which the computed chunk lands

    @property
    def estimated_delay(self) -> int:
        return max([self.first_delay, *self.delays])

    def _join(self) -> None:
        thread = getattr(self, "_thread", None)
        if thread is not None:
            thread.join()

    def _ask(self, observation: dict[str, Any]) -> tuple[int, Any, Any, int]:
        rest = self.chunk[self.index:] if self.chunk is not None else np.zeros((0, 0), np.float32)
        executed = np.stack(self.executed) if self.executed else np.zeros((0, rest.shape[-1] or 0), np.float32)
        self.executed = []
        return self.t, executed, rest, min(self.estimated_delay, len(rest))

    def _request(self, observation: dict[str, Any], step: int, executed: Any, prefix: Any, delay: int) -> None:
        try:
            chunk = np.asarray(self.policy.chunk(observation, self.instruction, executed, prefix, delay))
            with self._lock:
                self._result = (step, chunk)
        except BaseException as exc:  # surfaced on the control thread
            with self._lock:
                self._error = exc

    def _switch(self) -> None:
        with self._lock:
            result, self._result = self._result, None
        if result is None:
            return
        step, chunk = result
        delay = self.t - step  # the robot executed this many steps of the prefix while the chunk was computed
        if self.chunk is not None:
            self.delays.append(delay)
        self.switches.append((self.t, delay))
        self.chunk, self.index, self.chunk_start = chunk, min(delay, len(chunk)), self.t

    def act(self, observation: dict[str, Any]) -> np.ndarray:
        """The action for this control step (blocks only for an episode's first chunk)."""
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        if self._thread is not None and not self._thread.is_alive():
            self._thread = None
            self._switch()
        if self.chunk is None and self._thread is None:  # the first chunk is awaited
            self._request(observation, *self._ask(observation))
            self._switch()
            if self._error is not None:
                error, self._error = self._error, None
                raise error
        assert self.chunk is not None
        every = self.execute_every or max(1, len(self.chunk) // 2)
        if self._thread is None and self._result is None and self.t - self.chunk_start >= every:
            job = ({k: np.array(v, copy=True) for k, v in observation.items()}, *self._ask(observation))
            if self.sync:  # deterministic: computed now, switched to after the estimated delay
                self._request(*job)
                self._pending_sync = self.t + job[4]
            else:
                self._thread = threading.Thread(target=self._request, args=job, name="robodual-chunk", daemon=True)
                self._thread.start()
        if self.sync and self._result is not None and self.t >= self._pending_sync:
            self._switch()
        action = self.chunk[min(self.index, len(self.chunk) - 1)]  # a chunk run out holds its last action
        self.index += 1
        self.t += 1
        self.executed.append(np.asarray(action, dtype=np.float32))
        return np.array(action, dtype=np.float32)

    def close(self) -> None:
        self._join()
