"""``robodual serve``: a websocket policy server (msgpack, numpy by dtype/shape/bytes; never pickle).

Protocol (every frame binary msgpack, see :mod:`robodual_core.wire`):

- on connect the server sends ``{"type": "metadata", "observation_spec": {key: {"shape", "dtype"}},
  "action_dim", "action_horizon", "control_rate_hz", "mode", "policy"}``;
- ``{"type": "reset"}`` -> ``{"type": "reset_ok"}`` (one runtime session per connection);
- ``{"type": "step", "observation": {key: array}, "instruction": str}`` ->
  ``{"type": "action", "action": array [D], "timing": {"policy_s", "server_s"}}``;
- anything wrong -> ``{"type": "error", "error": "..."}``; the connection and the server keep going.

``GET /healthz`` answers ``ok``. With a token, every connection must send ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import asyncio
import hmac
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from robodual_core.errors import RobodualError, require
from robodual_core.wire import WireError, pack, unpack

DEFAULT_MAX_MESSAGE = 16 * 2**20


def check_observation(observation: Any, spec: dict[str, dict[str, Any]]) -> dict[str, np.ndarray]:
    """Validate an observation against the policy's spec; the error names the key and the mismatch."""
    if not isinstance(observation, dict):
        raise WireError(f"'observation' must be a map of key -> array, found {type(observation).__name__}")
    for key, want in spec.items():
        if key not in observation:
            raise WireError(f"observation is missing key '{key}' (expected {want['dtype']} {list(want['shape'])}); "
                            f"received keys: {sorted(observation)}")
        value = observation[key]
        if not isinstance(value, np.ndarray):
            raise WireError(f"observation['{key}'] must be an array, found {type(value).__name__}")
        if list(value.shape) != list(want["shape"]):
            raise WireError(f"observation['{key}'] has shape {list(value.shape)}, expected {list(want['shape'])}")
        if value.dtype != np.dtype(want["dtype"]):
            raise WireError(f"observation['{key}'] has dtype {value.dtype}, expected {want['dtype']}")
    for key, value in observation.items():
        if not isinstance(value, np.ndarray):
            raise WireError(f"observation['{key}'] must be an array, found {type(value).__name__}")
    return observation


class PolicyServer:
    """Serves sessions made by ``make_session()`` (a fresh policy per connection, sharing models)."""

    def __init__(self, make_session: Callable[[], Any], metadata: dict[str, Any], token: str | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE):
        self.make_session = make_session
        self.metadata = {"type": "metadata", **metadata}
        self.spec = metadata.get("observation_spec") or {}
        self.token = token
        self.max_message_bytes = max_message_bytes
        self._infer_lock = threading.Lock()  # one inference at a time: stable latency, no oversubscribed cores
        self._server: Any = None
        self.port: int | None = None

    # -- websocket plumbing ----------------------------------------------------------------------
    def _process_request(self, connection: Any, request: Any) -> Any:
        from http import HTTPStatus

        if request.path.split("?")[0] == "/healthz":
            return connection.respond(HTTPStatus.OK, "ok\n")
        if self.token is not None:
            got = request.headers.get("Authorization", "")
            if not hmac.compare_digest(got.encode(), f"Bearer {self.token}".encode()):
                return connection.respond(HTTPStatus.UNAUTHORIZED, "missing or wrong token\n")
        return None

    async def _handler(self, ws: Any) -> None:
        session = await asyncio.to_thread(self.make_session)
        try:
            await ws.send(pack(self.metadata))
            async for raw in ws:
                reply = await self._answer(session, raw)
                await ws.send(pack(reply))
        except Exception:  # a dropped client ends its own session only
            pass
        finally:
            close = getattr(session, "close", None)
            if callable(close):
                await asyncio.to_thread(close)

    async def _answer(self, session: Any, raw: bytes | str) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            if len(raw) > self.max_message_bytes:
                raise WireError(f"message of {len(raw)} bytes exceeds the server's limit of "
                                f"{self.max_message_bytes} bytes")
            message = unpack(raw)
            kind = message["type"]
            if kind == "reset":
                await asyncio.to_thread(self._locked, session.reset)
                return {"type": "reset_ok"}
            if kind == "metadata":
                return self.metadata
            if kind != "step":
                raise WireError(f"unknown message type '{kind}'; expected reset, step or metadata")
            observation = check_observation(message.get("observation"), self.spec)
            instruction = message.get("instruction", "")
            if not isinstance(instruction, str):
                raise WireError(f"'instruction' must be a string, found {type(instruction).__name__}")
            t1 = time.perf_counter()
            action = await asyncio.to_thread(self._locked, session.step, observation, instruction)
            t2 = time.perf_counter()
            return {"type": "action", "action": np.asarray(action, dtype=np.float32),
                    "timing": {"policy_s": t2 - t1, "server_s": time.perf_counter() - t0}}
        except RobodualError as exc:
            return {"type": "error", "error": str(exc)}
        except Exception as exc:
            return {"type": "error", "error": f"the policy failed: {type(exc).__name__}: {exc}"}

    def _locked(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self._infer_lock:
            return fn(*args)

    # -- running ---------------------------------------------------------------------------------
    async def serve_forever(self, host: str, port: int, ready: threading.Event | None = None) -> None:
        require("websockets", "pip install 'robodual-core[serve]'")
        from websockets.asyncio.server import serve

        # the transport limit sits above ours, so an oversized message gets an error reply, not a dropped link
        async with serve(self._handler, host, port, process_request=self._process_request,
                         max_size=self.max_message_bytes * 4, compression=None) as server:
            self._server = server
            self.port = server.sockets[0].getsockname()[1] if server.sockets else port
            if ready is not None:
                ready.set()
            await server.serve_forever()

    def start_in_thread(self, host: str = "127.0.0.1", port: int = 0) -> threading.Thread:
        """Serve in a daemon thread (tests, notebooks); returns once the port is bound."""
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(self.serve_forever(host, port, ready))
            except asyncio.CancelledError:
                pass

        thread = threading.Thread(target=run, name="robodual-serve", daemon=True)
        thread.start()
        if not ready.wait(30):
            raise RobodualError(f"the policy server did not start on {host}:{port}")
        return thread

    def stop(self) -> None:
        if self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)


def policy_metadata(policy: Any, mode: str, path: str) -> dict[str, Any]:
    spec = getattr(policy, "observation_spec", None) or {}
    return {
        "observation_spec": {k: {"shape": list(v[0]), "dtype": str(v[1])} for k, v in spec.items()},
        "action_dim": getattr(policy, "action_dim", None),
        "action_horizon": getattr(policy, "action_horizon", None),
        "control_rate_hz": getattr(policy, "control_rate_hz", None),
        "mode": mode,
        "policy": path,
    }
