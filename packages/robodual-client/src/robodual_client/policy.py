"""``RemotePolicy``: drive a policy served by ``robodual serve`` with the local policy interface.

    from robodual_client import RemotePolicy
    policy = RemotePolicy("ws://127.0.0.1:8000", token="...")
    policy.reset()
    action = policy.step({"rgb_static": image, "proprio": state}, "open the drawer")

Evaluation code runs against a local or a remote policy unchanged.

Every request carries an id that the server echoes: after a step that timed out, its late reply is dropped
when it arrives, so a later ``step()`` always returns the action computed for its own observation
(``dropped_replies`` counts them). With a server that does not echo ids, the connection is unusable after a
timeout (an error, not a stale action). Sending has the same ``timeout``: a server that stops reading (stuck
or overloaded) fails the request instead of blocking the robot's loop forever.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from robodual_client.errors import ClientError, ConnectError, ServerError, WireError
from robodual_client.wire import (
    PROTOCOL_VERSION,
    check_action,
    check_protocol,
    pack,
    reset_request,
    step_request,
    unpack,
)

CLOSE_REASONS = {1008: "policy violation", 1009: "message too big", 1011: "server error", 1013: "server busy"}


def _check_token(token: str | None) -> None:
    if token is None:
        return
    if not isinstance(token, str) or not token or not token.isascii() or not token.isprintable() or " " in token:
        raise ClientError("token must be a non-empty string of printable ASCII without spaces, found "
                          f"{'an empty string' if token == '' else type(token).__name__ + ' ' + repr(token)[:20]}")


def _refusal(url: str, exc: Exception) -> str:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if status is None:
        return f"cannot connect to policy server {url}: {type(exc).__name__}: {exc}"
    body = (getattr(response, "body", b"") or b"").decode("utf-8", "replace").strip()[:200]
    hint = {401: " (pass the server's --token)", 503: " (try again later)"}.get(status, "")
    return f"policy server {url} refused the connection: HTTP {status}{': ' + body if body else ''}{hint}"


class RemotePolicy:
    """The ``reset()`` / ``step(observation, instruction)`` interface, over a websocket."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 60.0, max_size: int = 64 * 2**20):
        from websockets.sync.client import connect

        if not isinstance(url, str) or not url.startswith(("ws://", "wss://")):
            raise ClientError(f"policy server URL must start with ws:// or wss://, found {str(url)[:80]!r}")
        _check_token(token)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout < float("inf"):
            raise ClientError(f"timeout must be a positive number of seconds, found {str(timeout)[:40]}")
        if max_size is not None and (isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1024):
            raise ClientError(f"max_size must be a number of bytes >= 1024 (or None: no limit), found "
                              f"{str(max_size)[:40]}")
        self.url = url
        self.timeout = timeout
        self.max_size = max_size
        self.dropped_replies = 0  # late replies of requests that timed out, dropped unread
        self._next_id = 0
        self._ids = False  # the server echoes request ids (from its metadata)
        self._unanswered = False  # a request timed out: its reply may still arrive
        headers = {"Authorization": f"Bearer {token}"} if token else None
        try:
            self._conn = connect(url, additional_headers=headers, open_timeout=timeout, max_size=max_size,
                                 compression=None, proxy=None)
        except Exception as exc:
            raise ConnectError(_refusal(url, exc)) from None
        self._ws = self._conn.__enter__()  # the sync client wants the context protocol
        self._send_timeout: float | None = None
        self._set_send_timeout()
        self.last_timing: dict[str, float] = {}
        self.metadata = self._receive(time.monotonic() + timeout)
        if self.metadata.get("type") == "error":
            self.close()
            raise ServerError(f"policy server {url}: {self.metadata.get('error')}")
        if self.metadata.get("type") != "metadata":
            self.close()
            raise WireError(f"policy server {url} sent {str(self.metadata.get('type'))[:40]!r} instead of its "
                            "metadata")
        try:
            check_protocol(self.metadata)
        except WireError:
            self.close()
            raise
        limit = self.metadata.get("max_message_bytes")
        self.max_message_bytes = limit if isinstance(limit, int) and not isinstance(limit, bool) else None
        dim = self.metadata.get("action_dim")
        self.action_dim = dim if isinstance(dim, int) and not isinstance(dim, bool) else None
        self._ids = self.metadata.get("request_ids") is True

    def _set_send_timeout(self) -> None:
        """``timeout`` as the socket's send timeout (SO_SNDTIMEO: sends only; the client's reader thread is not
        affected), so ``send`` cannot block forever on a server that does not read."""
        import socket
        import struct
        import sys

        if self._send_timeout == self.timeout or not sys.platform.startswith(("linux", "darwin")):
            return
        sock = getattr(self._ws, "socket", None)
        seconds = int(self.timeout)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                            struct.pack("ll", seconds, int((self.timeout - seconds) * 1e6)))
            self._send_timeout = self.timeout
        except (AttributeError, OSError, OverflowError, struct.error):
            pass  # without it, a send waits as long as the server does not read

    @property
    def protocol(self) -> int:
        return PROTOCOL_VERSION

    def _receive(self, deadline: float) -> dict[str, Any]:
        from websockets.exceptions import ConnectionClosed

        try:
            raw = self._ws.recv(timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            self._unanswered = True
            late = ("its late reply will be dropped" if self._ids else
                    "this server does not echo request ids, so the connection cannot be used again")
            raise ConnectError(f"policy server {self.url} sent no reply within {self.timeout} s ({late})") from None
        except ConnectionClosed as exc:
            raise ConnectError(self._closed(exc)) from None
        return unpack(raw)

    def _closed(self, exc: Any) -> str:
        sent = getattr(exc, "sent", None)
        if sent is not None and sent.code == 1009 and not getattr(exc, "rcvd_then_sent", False):
            return (f"a message from policy server {self.url} exceeds this client's limit of {self.max_size} bytes "
                    f"(RemotePolicy(max_size=...)); the client closed the connection")
        rcvd = getattr(exc, "rcvd", None)
        if rcvd is None:
            return f"policy server {self.url} closed the connection without a reason"
        what = CLOSE_REASONS.get(rcvd.code, f"code {rcvd.code}")
        return f"policy server {self.url} closed the connection ({what}, {rcvd.code}): {rcvd.reason or 'no reason'}"

    def _request(self, message: dict[str, Any]) -> dict[str, Any]:
        from websockets.exceptions import ConnectionClosed

        request_id = None
        if self._ids:
            request_id, self._next_id = self._next_id, self._next_id + 1
            message = {**message, "id": request_id}
        elif self._unanswered:
            raise ConnectError(f"an earlier request to policy server {self.url} timed out and this server does not "
                               "echo request ids, so its late reply could be taken for this one; reconnect")
        raw = pack(message)
        if self.max_message_bytes is not None and len(raw) > self.max_message_bytes:
            raise WireError(f"this {message['type']} message is {len(raw)} bytes; the server accepts at most "
                            f"{self.max_message_bytes} (robodual serve --max-message-mb)")
        self._set_send_timeout()
        try:
            self._ws.send(raw)
        except ConnectionClosed as exc:
            if isinstance(getattr(self._ws, "connection_exc", None), BlockingIOError | TimeoutError):
                raise ConnectError(f"policy server {self.url} did not take this {message['type']} request within "
                                   f"{self.timeout} s (it is not reading: stuck or overloaded); the connection is "
                                   "closed") from None
            raise ConnectError(self._closed(exc)) from None
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._receive(deadline)
            if request_id is None or reply.get("id") == request_id:
                break
            if "id" not in reply and reply.get("type") == "error":
                break  # the server could not read the request, so it could not echo its id
            if "id" not in reply:
                raise WireError(f"policy server {self.url} announced request ids but sent a "
                                f"{str(reply.get('type'))[:40]!r} reply without one")
            self.dropped_replies += 1  # the late reply of a request that timed out: never this step's
        if reply.get("type") == "error":
            raise ServerError(f"policy server: {reply.get('error')}")
        return reply

    def reset(self) -> None:
        self._request(reset_request())

    def step(self, observation: dict[str, np.ndarray], instruction: str) -> np.ndarray:
        reply = self._request(step_request(observation, instruction))
        if reply.get("type") != "action":
            raise WireError(f"policy server answered a step with {str(reply.get('type'))[:40]!r}, not 'action'")
        timing = reply.get("timing")
        self.last_timing = timing if isinstance(timing, dict) else {}
        return check_action(reply.get("action"), self.action_dim, source=f"policy server {self.url}")

    def chunk(self, observation: dict[str, np.ndarray], instruction: str, executed: Any = None, prefix: Any = None,
              delay: int = 0) -> np.ndarray:
        """A whole action chunk ``[k, D]`` for ``observation`` (row ``i``: ``i`` steps after it), telling the server
        the actions executed since the previous request and the committed ``prefix`` (the first ``delay`` rows run
        while this chunk is computed); :class:`robodual_client.chunks.ChunkExecutor` drives it in a robot loop."""
        from robodual_client.chunks import check_chunk, chunk_request

        if self.metadata.get("chunks") is not True:
            raise WireError(f"policy server {self.url} does not serve action chunks (an older robodual serve)")
        reply = self._request(chunk_request(observation, instruction, executed, prefix, delay))
        if reply.get("type") != "chunk":
            raise WireError(f"policy server answered a chunk request with {str(reply.get('type'))[:40]!r}")
        timing = reply.get("timing")
        self.last_timing = timing if isinstance(timing, dict) else {}
        return check_chunk(reply.get("actions"), self.action_dim, source=f"policy server {self.url}")

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> RemotePolicy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
