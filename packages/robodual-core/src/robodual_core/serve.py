"""``robodual serve``: a websocket policy server (msgpack, numpy by dtype/shape/bytes; never pickle).

The protocol lives in the torch-free :mod:`robodual_client.wire` (the robot's side uses the same module):
on connect the server sends its metadata; ``reset`` -> ``reset_ok``; ``step`` -> ``action``; anything
wrong -> ``{"type": "error", "error": "..."}`` and the connection and the server keep going.

Refused with an error reply: messages that are not msgpack maps, unknown types, another protocol version,
arrays of a wrong dtype/shape or a declared size beyond the limit, and observations holding NaN/Inf. An
action that is not a finite vector is never sent. Memory is bounded: at most ``max_connections`` clients
(more get HTTP 503), messages of at most ``max_message_bytes`` (a larger one closes its connection with
1009 before it is read), and at most ``MAX_QUEUE`` frames buffered per connection.

``GET /healthz`` answers ``ok``. With a token, every connection must send exactly one
``Authorization: Bearer <token>`` header (none or a wrong one: 401; two or more: 400); a request the checks
cannot read is a 400, never a 500.

Deadlines, so that slow or stalled peers cannot hold the connection slots: the opening handshake (the HTTP
request headers) must arrive within ``handshake_timeout`` seconds, and each message, once its first byte has
arrived, must arrive in full within ``message_timeout`` seconds (else the connection is closed with 1008 and
its slot freed). The time a message waits because this server is busy (reading paused) does not count. A
reply must be sent within ``message_timeout`` too: a client that stops reading is cut off.
Replies echo the request's ``id`` (see :mod:`robodual_client.wire`), so a client matches them to requests.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from robodual_client.errors import ClientError
from robodual_client.wire import (
    PROTOCOL_VERSION,
    WireError,
    action_reply,
    check_action,
    check_observation,
    check_protocol,
    check_request_id,
    error_reply,
    pack,
    unpack,
)
from robodual_core.errors import RobodualError

DEFAULT_MAX_MESSAGE = 16 * 2**20
DEFAULT_MAX_CONNECTIONS = 8
MAX_QUEUE = 2  # frames buffered per connection beyond the one being answered
MAX_INSTRUCTION = 4096
DEFAULT_HANDSHAKE_TIMEOUT = 10.0  # seconds for the HTTP upgrade request (slow-header clients are dropped)
DEFAULT_MESSAGE_TIMEOUT = 30.0  # seconds from a message's first byte to its last (16 MiB at ~4.5 Mbit/s)


def check_token(token: str | None, flag: str = "--token") -> None:
    """A token must fit an HTTP header: printable ASCII, no spaces, not empty."""
    if token is None:
        return
    if not isinstance(token, str) or not token or not token.isascii() or not token.isprintable() or " " in token:
        shown = "an empty string" if token == "" else repr(token)[:24]
        raise RobodualError(f"{flag} must be a non-empty string of printable ASCII without spaces, found {shown}")


def check_limits(port: int | None = None, max_message_bytes: int | None = None,
                 max_connections: int | None = None, handshake_timeout: float | None = None,
                 message_timeout: float | None = None) -> None:
    """Range checks of the server's settings, before anything is loaded or bound."""
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535):
        raise RobodualError(f"--port must be an integer in 0..65535 (0: any free port), found {port}")
    if max_message_bytes is not None and not 1024 <= max_message_bytes <= 2**31:
        raise RobodualError(f"--max-message-mb must give between 1 KiB and 2 GiB per message, found "
                            f"{max_message_bytes} bytes")
    if max_connections is not None and not 1 <= max_connections <= 4096:
        raise RobodualError(f"--max-connections must be in 1..4096, found {max_connections}")
    for flag, value in (("--handshake-timeout", handshake_timeout), ("--message-timeout", message_timeout)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or not 0.01 <= value <= 3600):
            raise RobodualError(f"{flag} must be a number of seconds in 0.01..3600, found {value}")


def message_bytes_from_mb(mb: float) -> int:
    if not math.isfinite(mb) or mb <= 0:
        raise RobodualError(f"--max-message-mb must be a positive number of MiB, found {mb}")
    return int(mb * 2**20)


class PolicyServer:
    """Serves sessions made by ``make_session()`` (a fresh policy per connection, sharing models)."""

    def __init__(self, make_session: Callable[[], Any], metadata: dict[str, Any], token: str | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE, max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
                 message_timeout: float = DEFAULT_MESSAGE_TIMEOUT):
        check_token(token, "token")
        check_limits(max_message_bytes=max_message_bytes, max_connections=max_connections,
                     handshake_timeout=handshake_timeout, message_timeout=message_timeout)
        self.make_session = make_session
        self.metadata = {"type": "metadata", "protocol": PROTOCOL_VERSION, **metadata,
                         "max_message_bytes": max_message_bytes, "request_ids": True, "chunks": True}
        self.spec = metadata.get("observation_spec") or {}
        dim = metadata.get("action_dim")
        self.action_dim = dim if isinstance(dim, int) and not isinstance(dim, bool) else None
        self.token = token
        self.max_message_bytes = max_message_bytes
        self.max_connections = max_connections
        self.handshake_timeout = float(handshake_timeout)
        self.message_timeout = float(message_timeout)
        self.active = 0  # open connections (touched on the event loop only)
        self._infer_lock = threading.Lock()  # one inference at a time: stable latency, no oversubscribed cores
        self._chunkers: Any = weakref.WeakKeyDictionary()  # session -> runtime.chunks.ChunkSession (chunk requests)
        self._server: Any = None
        self.port: int | None = None

    # -- websocket plumbing ----------------------------------------------------------------------
    def _process_request(self, connection: Any, request: Any) -> Any:
        from http import HTTPStatus

        try:
            return self._check_request(connection, request)
        except Exception as exc:  # whatever the request holds, the answer is a refusal, never a 500
            return connection.respond(HTTPStatus.BAD_REQUEST, f"bad request: {type(exc).__name__}\n")

    def _check_request(self, connection: Any, request: Any) -> Any:
        from http import HTTPStatus

        if request.path.split("?")[0] == "/healthz":
            return connection.respond(HTTPStatus.OK, "ok\n")
        if self.token is not None:
            sent = request.headers.get_all("Authorization")
            if len(sent) > 1:
                return connection.respond(HTTPStatus.BAD_REQUEST, f"{len(sent)} Authorization headers; send "
                                          "exactly one: 'Authorization: Bearer TOKEN'\n")
            got = sent[0] if sent else ""
            if not hmac.compare_digest(got.encode("utf-8", "replace"), f"Bearer {self.token}".encode()):
                return connection.respond(HTTPStatus.UNAUTHORIZED, "missing or wrong token: send "
                                          "'Authorization: Bearer TOKEN' with the server's --token\n")
        if self.active >= self.max_connections:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, self._busy() + "\n")
        return None

    def _busy(self) -> str:
        return (f"server busy: {self.active} of at most {self.max_connections} connections open "
                "(robodual serve --max-connections)")

    async def _handler(self, ws: Any) -> None:
        self.active += 1  # no await before this line: the count is exact
        session = None
        try:
            if self.active > self.max_connections:
                await ws.close(1013, self._busy()[:120])
                return
            try:
                session = await asyncio.to_thread(self.make_session)
            except Exception as exc:
                await ws.send(pack(error_reply(f"the server could not start a session: {type(exc).__name__}: "
                                               f"{exc}")))
                await ws.close(1011, "no session")
                return
            await self._send(ws, pack(self.metadata))
            async for raw in ws:
                reply, request_id = await self._answer(session, raw)
                try:
                    data = pack(_echo(reply, request_id))
                except ClientError as exc:
                    data = pack(_echo(error_reply(f"the reply could not be encoded: {exc}"), request_id))
                await self._send(ws, data)
        except Exception:  # a dropped client ends its own session only
            pass
        finally:
            self.active -= 1
            close = getattr(session, "close", None)
            if callable(close):
                await asyncio.to_thread(close)

    async def _send(self, ws: Any, data: bytes) -> None:
        """Send within ``message_timeout``: a peer that does not read its replies (the send waits on a full
        socket buffer) is cut off and its slot freed."""
        try:
            async with asyncio.timeout(self.message_timeout):
                await ws.send(data)
        except TimeoutError:
            ws.transport.abort()  # no close handshake: the peer is not reading
            raise

    async def _answer(self, session: Any, raw: bytes | str) -> tuple[dict[str, Any], int | None]:
        """The reply and the request's id (None: the request had none or it could not be read)."""
        request_id = None
        try:
            message = unpack(raw, max_bytes=self.max_message_bytes)
            request_id = check_request_id(message)
        except (RobodualError, ClientError) as exc:
            return error_reply(str(exc)), None
        return await self._reply(session, message), request_id

    async def _reply(self, session: Any, message: dict[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            check_protocol(message)
            kind = message["type"]
            if kind == "reset":
                await asyncio.to_thread(self._locked, session.reset)
                self._chunkers.pop(session, None)
                return {"type": "reset_ok"}
            if kind == "metadata":
                return self.metadata
            if kind == "chunk":  # a whole chunk for a robot that executes it itself (robodual_client.chunks)
                return await self._chunk(session, message, t0)
            if kind != "step":
                raise WireError(f"unknown message type '{kind[:40]}'; expected reset, step, chunk or metadata")
            if "observation" not in message:
                raise WireError("a step message needs 'observation' (a map of key -> array)")
            observation = check_observation(message["observation"], self.spec)
            instruction = message.get("instruction", "")
            if not isinstance(instruction, str):
                raise WireError(f"'instruction' must be a string, found {type(instruction).__name__}")
            if len(instruction) > MAX_INSTRUCTION:
                raise WireError(f"'instruction' has {len(instruction)} characters; at most {MAX_INSTRUCTION}")
            t1 = time.perf_counter()
            action = await asyncio.to_thread(self._locked, session.step, observation, instruction)
            t2 = time.perf_counter()
            action = check_action(action, self.action_dim)
            return action_reply(action, {"policy_s": t2 - t1, "server_s": time.perf_counter() - t0})
        except (RobodualError, ClientError) as exc:
            return error_reply(str(exc))
        except Exception as exc:
            return error_reply(f"the policy failed: {type(exc).__name__}: {exc}")

    async def _chunk(self, session: Any, message: dict[str, Any], t0: float) -> dict[str, Any]:
        """A ``chunk`` request: the observation, the actions executed since the previous one and the committed
        prefix in, the whole chunk out (:mod:`robodual_core.runtime.chunks`)."""
        from robodual_client.chunks import check_chunk, chunk_reply, read_chunk_request
        from robodual_core.runtime.chunks import ChunkSession

        observation = check_observation(message.get("observation"), self.spec)
        instruction = message.get("instruction", "")
        if not isinstance(instruction, str) or len(instruction) > MAX_INSTRUCTION:
            raise WireError(f"'instruction' must be a string of at most {MAX_INSTRUCTION} characters")
        executed, prefix, delay = read_chunk_request(message, self.action_dim)
        chunker = self._chunkers.get(session)
        if chunker is None:
            chunker = self._chunkers[session] = ChunkSession(session)
        t1 = time.perf_counter()
        actions = await asyncio.to_thread(self._locked, chunker.chunk, observation, instruction, executed, prefix,
                                          delay)
        t2 = time.perf_counter()
        return chunk_reply(check_chunk(actions, self.action_dim), {"policy_s": t2 - t1,
                                                                  "server_s": time.perf_counter() - t0})

    def _locked(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self._infer_lock:
            return fn(*args)

    # -- running ---------------------------------------------------------------------------------
    async def serve_forever(self, host: str, port: int, ready: threading.Event | None = None,
                            on_bound: Callable[[int], None] | None = None) -> None:
        """Bind, call ``on_bound(port)`` with the port actually bound (``port=0`` picks one), serve."""
        from websockets.asyncio.server import serve

        check_limits(port=port)
        # The transport refuses a message above the limit from its header (close 1009) before reading it,
        # and buffers at most MAX_QUEUE frames per connection: memory is bounded by the connection cap.
        async with serve(self._handler, host, port, process_request=self._process_request,
                         max_size=self.max_message_bytes, max_queue=MAX_QUEUE, compression=None,
                         open_timeout=self.handshake_timeout,
                         create_connection=_deadline_connection(self.message_timeout)) as server:
            self._server = server
            self.port = server.sockets[0].getsockname()[1] if server.sockets else port
            if on_bound is not None:
                on_bound(self.port)
            if ready is not None:
                ready.set()
            await server.serve_forever()

    def start_in_thread(self, host: str = "127.0.0.1", port: int = 0) -> threading.Thread:
        """Serve in a daemon thread (tests, notebooks); returns once the port is bound."""
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(self.serve_forever(host, port, ready))
            except asyncio.CancelledError:
                pass
            except Exception as exc:
                failure.append(exc)
                ready.set()

        thread = threading.Thread(target=run, name="robodual-serve", daemon=True)
        thread.start()
        if not ready.wait(30) or failure:
            detail = f": {failure[0]}" if failure else ""
            raise RobodualError(f"the policy server did not start on {host}:{port}{detail}")
        return thread

    def stop(self) -> None:
        if self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)


def _echo(reply: dict[str, Any], request_id: int | None) -> dict[str, Any]:
    return reply if request_id is None else {**reply, "id": request_id}


def _deadline_connection(message_timeout: float) -> type:
    """A server connection that closes (1008) when a message started more than ``message_timeout`` s ago
    is still incomplete: a peer trickling bytes (a slow-loris) cannot hold a connection slot."""
    from websockets.asyncio.server import ServerConnection
    from websockets.frames import Frame, Opcode
    from websockets.protocol import OPEN

    reason = (f"message not received in full within {message_timeout:g} s "
              "(robodual serve --message-timeout)")[:120]

    class DeadlineConnection(ServerConnection):
        """Counts the bytes received after the handshake and those of whole frames parsed from them (frames
        of clients are masked and uncompressed here, so a frame's size follows from its payload): more
        received than parsed, or a fragmented message open, means a message is under way."""

        _deadline: Any = None
        _received = 0
        _parsed = 0
        _fragmented = False

        def data_received(self, data: bytes) -> None:
            counting = self.protocol.state is OPEN
            super().data_received(data)
            if counting:
                self._received += len(data)
            self._received = max(self._received, self._parsed)  # frames that came with the handshake
            if self.protocol.state is not OPEN or not self._partial():
                self._stop_deadline()
            elif self._deadline is None:
                self._deadline = self.loop.call_later(message_timeout, self._expired)

        def process_event(self, event: Any) -> None:
            super().process_event(event)
            if not isinstance(event, Frame):
                return
            n = len(event.data)
            self._parsed += 2 + (0 if n < 126 else 2 if n < 65536 else 8) + 4 + n  # header, mask key, payload
            if event.opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
                self._fragmented = not event.fin
                if event.fin:  # a whole message: the next one gets its own deadline
                    self._stop_deadline()

        def _partial(self) -> bool:
            return self._received > self._parsed or self._fragmented

        def _stop_deadline(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            if self.protocol.state is not OPEN or not self._partial():
                return
            if not self.transport.is_reading():  # paused because this server is busy: not the peer's fault
                self._deadline = self.loop.call_later(message_timeout, self._expired)
                return
            self._fail_slow()

        def _fail_slow(self) -> None:
            """Close frame 1008, then the TCP connection at once: the slot is freed without waiting for a peer
            that is slow by assumption (a close handshake would give it close_timeout more seconds)."""
            from websockets.frames import CloseCode

            self.protocol.fail(CloseCode.POLICY_VIOLATION, reason)
            try:
                self.send_data()
            except Exception:
                pass
            self.transport.close()
            self.loop.call_later(1.0, self.transport.abort)  # if the peer does not even read the close frame

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_deadline()
            super().connection_lost(exc)

    return DeadlineConnection


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
