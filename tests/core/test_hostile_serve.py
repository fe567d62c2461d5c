"""A hostile peer against the policy server: malformed messages, NaN/Inf, a policy producing garbage, too many
connections, oversized messages, bad tokens and bad flags. Each gets one clear line; the server stays up.
"""

from __future__ import annotations

import math
import socket

import msgpack
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from robodual_client import ClientError, RemotePolicy
from robodual_client.wire import pack, unpack
from robodual_core.serve import PolicyServer

pytestmark = pytest.mark.hostile

SPEC = {"rgb_static": {"shape": [8, 8, 3], "dtype": "uint8"}, "proprio": {"shape": [4], "dtype": "float32"}}
LIMIT = 64 * 1024


class EchoPolicy:
    def reset(self):
        pass

    def step(self, observation, instruction):
        return observation["proprio"] * 2


def good_observation():
    return {"rgb_static": np.zeros((8, 8, 3), np.uint8), "proprio": np.arange(4, dtype=np.float32)}


def arr(dtype="<f4", shape=(4,), data=None):
    data = np.zeros(math.prod(shape), np.dtype(dtype)).tobytes() if data is None else data
    return {"__ndarray__": True, "dtype": dtype, "shape": list(shape), "data": data}


def step(observation=None, **extra):
    proprio = arr(data=np.arange(4, dtype="<f4").tobytes())
    obs = {"rgb_static": arr("|u1", (8, 8, 3)), "proprio": proprio} if observation is None else observation
    return msgpack.packb({"type": "step", "observation": obs, "instruction": "x", **extra}, use_bin_type=True)


def with_proprio(value):
    return step({"rgb_static": arr("|u1", (8, 8, 3)), "proprio": value})


def nan_proprio(value):
    a = np.zeros(4, np.float32)
    a[2] = value
    return with_proprio(arr(data=a.tobytes()))


BAD_MESSAGES = {
    "not-msgpack": (b"\xc1\xc1garbage", "not a msgpack message"),
    "truncated-msgpack": (msgpack.packb({"type": "step", "observation": {}})[:-3], "not a msgpack message"),
    "an-int": (msgpack.packb(7), "must be a map"),
    "a-list": (msgpack.packb(["step"]), "must be a map"),
    "no-type": (msgpack.packb({"observation": {}}), "found no 'type'"),
    "type-not-string": (msgpack.packb({"type": 3}), "'type' of int"),
    "unknown-type": (msgpack.packb({"type": "launch_missiles"}), "unknown message type 'launch_missiles'"),
    "int-map-keys": (msgpack.packb({"type": "step", 1: 2}), "not a msgpack message"),
    "no-observation": (msgpack.packb({"type": "step", "instruction": "x"}), "needs 'observation'"),
    "observation-list": (step([1, 2, 3]), "'observation' must be a map"),
    "observation-value-string": (with_proprio("zero"), "observation['proprio'] must be an array, found str"),
    "observation-value-map": (with_proprio({"a": 1}), "observation['proprio'] must be an array, found dict"),
    "missing-key": (step({"proprio": arr()}), "missing key 'rgb_static'"),
    "wrong-shape": (with_proprio(arr(shape=(3,))), "has shape [3], expected [4]"),
    "wrong-dtype": (with_proprio(arr("<f8")), "has dtype float64, expected float32"),
    "object-dtype": (with_proprio(arr("|O", data=b"\0" * 32)), "is not allowed (numeric dtypes only)"),
    "void-dtype": (with_proprio(arr("|V16", (1,), b"\0" * 16)), "is not allowed"),
    "garbage-dtype": (with_proprio(arr("zz9", data=b"")), "is not a numpy dtype"),
    "dtype-not-string": (with_proprio({"__ndarray__": True, "dtype": 4, "shape": [4], "data": b""}),
                         "'dtype' must be a string"),
    "negative-shape": (with_proprio(arr(shape=(-4,), data=b"")), "none negative"),
    "float-shape": (with_proprio({"__ndarray__": True, "dtype": "<f4", "shape": [4.0], "data": b"\0" * 16}),
                    "must be a list of integers"),
    "too-many-dims": (with_proprio(arr(shape=(1,) * 12)), "at most 8 dimensions"),
    "short-data": (with_proprio(arr(data=b"\0" * 7)), "needs 16 bytes, found 7"),
    "data-not-bytes": (with_proprio(arr(data="0000")), "'data' must be bytes"),
    "huge-declared-size": (with_proprio(arr(shape=(2**40, 2**40), data=b"")), "declares"),
    "nan-observation": (nan_proprio(np.nan), "contains 1 NaN and 0 Inf"),
    "inf-observation": (nan_proprio(np.inf), "contains 0 NaN and 1 Inf"),
    "minus-inf-observation": (nan_proprio(-np.inf), "contains 0 NaN and 1 Inf"),
    "nan-in-extra-key": (step({"rgb_static": arr("|u1", (8, 8, 3)), "proprio": arr(),
                               "extra": arr("<f8", (1,), np.array([np.nan]).tobytes())}),
                         "observation['extra'] contains 1 NaN"),
    "instruction-not-string": (step(instruction=["open"]), "'instruction' must be a string"),
    "instruction-too-long": (step(instruction="x" * 5000), "at most 4096"),
    "protocol-2": (step(protocol=2), "'protocol' is 2"),
    "protocol-string": (step(protocol="1"), "'protocol' is 1, but this side speaks"),
    "protocol-bool": (msgpack.packb({"type": "reset", "protocol": True}), "'protocol' is True"),
    "id-string": (step(id="7"), "request 'id' must be an integer"),
    "id-negative": (step(id=-1), "request 'id' must be an integer in 0..9007199254740992, found -1"),
    "id-huge": (step(id=2**60), "found 1152921504606846976"),
    "id-bool": (step(id=True), "found True"),
    "id-float": (step(id=1.5), "found 1.5"),
    "id-map": (step(id={"a": 1}), "found dict"),
}


@pytest.fixture(scope="module")
def server():
    srv = PolicyServer(EchoPolicy, {"observation_spec": SPEC, "action_dim": 4}, max_message_bytes=LIMIT)
    srv.start_in_thread("127.0.0.1", 0)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def link(server):
    with connect(f"ws://127.0.0.1:{server.port}", proxy=None, compression=None) as ws:
        assert unpack(ws.recv())["type"] == "metadata"
        yield ws


@pytest.mark.parametrize("case", list(BAD_MESSAGES))
def test_a_malformed_message_gets_an_error_reply_and_the_link_keeps_working(server, link, case):
    raw, needle = BAD_MESSAGES[case]
    link.send(raw)
    reply = unpack(link.recv(timeout=30))
    assert reply["type"] == "error" and needle in reply["error"], reply
    assert "\n" not in reply["error"] and len(reply["error"]) < 400
    assert "id" not in reply  # an id that cannot be read is never echoed
    link.send(step())  # the same connection still serves
    good = unpack(link.recv(timeout=30))
    assert good["type"] == "action" and good["action"].tolist() == [0.0, 2.0, 4.0, 6.0]


def test_a_text_frame_is_refused(link):
    link.send("{\"type\": \"reset\"}")
    reply = unpack(link.recv(timeout=30))
    assert reply["type"] == "error" and "text frames are not accepted" in reply["error"]


class GarbagePolicy:
    def __init__(self, action):
        self.action = action

    def reset(self):
        pass

    def step(self, observation, instruction):
        if isinstance(self.action, BaseException):
            raise self.action
        return self.action


BAD_ACTIONS = {
    "nan-action": (np.array([0.0, np.nan, 0.0, 0.0]), "contains 1 NaN and 0 Inf"),
    "inf-action": (np.array([np.inf, 0.0, -np.inf, 0.0]), "contains 0 NaN and 2 Inf"),
    "overflows-float32": (np.array([1e39, 0.0, 0.0, 0.0]), "contains 0 NaN and 1 Inf"),
    "string-action": ("left", "returned str, not a numeric action array"),
    "none-action": (None, "expected a vector"),
    "wrong-action-dim": (np.zeros(3), "expected 4 values"),
    "policy-raises": (RuntimeError("CUDA out of memory"), "the policy failed: RuntimeError: CUDA out of memory"),
}


@pytest.mark.parametrize("case", list(BAD_ACTIONS))
def test_a_bad_action_is_never_sent(case):
    action, needle = BAD_ACTIONS[case]
    srv = PolicyServer(lambda: GarbagePolicy(action), {"observation_spec": SPEC, "action_dim": 4})
    srv.start_in_thread("127.0.0.1", 0)
    try:
        with RemotePolicy(f"ws://127.0.0.1:{srv.port}") as remote:
            with pytest.raises(ClientError) as info:
                remote.step(good_observation(), "go")
            assert needle in str(info.value) and str(info.value).startswith("policy server: ")
    finally:
        srv.stop()


def test_the_client_refuses_a_nan_action_from_a_server_without_the_check(monkeypatch):
    import robodual_core.serve as serve_mod

    monkeypatch.setattr(serve_mod, "check_action", lambda action, dim: np.asarray(action, np.float32))
    srv = PolicyServer(lambda: GarbagePolicy(np.array([np.nan, 0, 0, 0])), {"observation_spec": SPEC})
    srv.start_in_thread("127.0.0.1", 0)
    try:
        with RemotePolicy(f"ws://127.0.0.1:{srv.port}") as remote:
            with pytest.raises(ClientError, match="contains 1 NaN and 0 Inf of 4 values; it is not sent"):
                remote.step(good_observation(), "")
    finally:
        srv.stop()


def test_connections_beyond_the_cap_are_refused_and_served_again_later():
    srv = PolicyServer(EchoPolicy, {"observation_spec": SPEC, "action_dim": 4}, max_connections=2)
    srv.start_in_thread("127.0.0.1", 0)
    url = f"ws://127.0.0.1:{srv.port}"
    try:
        a, b = RemotePolicy(url), RemotePolicy(url)
        with pytest.raises(ClientError) as info:
            RemotePolicy(url)
        line = str(info.value)
        assert "HTTP 503" in line and "at most 2 connections" in line and "--max-connections" in line
        a.close()
        for _ in range(100):  # the server notices the close
            if srv.active < 2:
                break
            import time

            time.sleep(0.02)
        with RemotePolicy(url) as c:
            assert c.step(good_observation(), "").tolist() == [0.0, 2.0, 4.0, 6.0]
        b.close()
    finally:
        srv.stop()


def test_an_oversized_message_is_refused_unread_and_the_server_stays_up(server):
    with connect(f"ws://127.0.0.1:{server.port}", proxy=None, compression=None, max_size=None) as ws:
        unpack(ws.recv())
        ws.send(pack({"type": "step", "observation": {"pad": np.zeros(LIMIT * 4, np.uint8)}}))
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=30)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009
    with RemotePolicy(f"ws://127.0.0.1:{server.port}") as remote:
        assert remote.step(good_observation(), "").shape == (4,)


def test_the_client_refuses_to_send_beyond_the_servers_limit(server):
    with RemotePolicy(f"ws://127.0.0.1:{server.port}") as remote:
        assert remote.max_message_bytes == LIMIT
        with pytest.raises(ClientError, match=f"the server accepts at most {LIMIT}"):
            remote.step({**good_observation(), "pad": np.zeros(LIMIT, np.uint8)}, "")
        assert remote.step(good_observation(), "").shape == (4,)


def test_memory_per_connection_is_bounded_by_the_transport_settings(monkeypatch):
    import websockets.asyncio.server as ws_server

    seen = {}
    real = ws_server.serve

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(ws_server, "serve", spy)
    srv = PolicyServer(EchoPolicy, {"observation_spec": SPEC}, max_message_bytes=LIMIT, max_connections=3)
    srv.start_in_thread("127.0.0.1", 0)
    srv.stop()
    assert seen["max_size"] == LIMIT and seen["max_queue"] <= 4 and seen["compression"] is None


BAD_AUTH = {
    "no-header": None,
    "wrong-token": "Bearer wrong",
    "basic-scheme": "Basic czNjcmV0",
    "bearer-only": "Bearer",
    "lowercase-bearer": "bearer s3cret",
    "token-with-suffix": "Bearer s3cret-and-more",
    "non-ascii": "Bearer s3crét",
}


@pytest.fixture(scope="module")
def token_server():
    srv = PolicyServer(EchoPolicy, {"observation_spec": SPEC, "action_dim": 4}, token="s3cret")
    srv.start_in_thread("127.0.0.1", 0)
    yield srv
    srv.stop()


@pytest.mark.parametrize("case", list(BAD_AUTH))
def test_a_bad_token_is_refused_with_401(token_server, case):
    header = BAD_AUTH[case]
    headers = {"Authorization": header} if header is not None else None
    with pytest.raises(InvalidStatus) as info:
        connect(f"ws://127.0.0.1:{token_server.port}", additional_headers=headers, proxy=None)
    assert info.value.response.status_code == 401 and b"--token" in info.value.response.body
    with RemotePolicy(f"ws://127.0.0.1:{token_server.port}", token="s3cret") as ok:
        assert ok.step(good_observation(), "").shape == (4,)


@pytest.mark.parametrize("token", ["", "two words", "line\nbreak", "caf\u00e9"])
def test_the_client_refuses_a_token_that_cannot_be_a_header(token):
    with pytest.raises(ClientError) as info:
        RemotePolicy("ws://127.0.0.1:9", token=token)
    assert str(info.value).startswith("token must be a non-empty string of printable ASCII")


def test_a_remote_policy_url_must_be_a_websocket_url():
    with pytest.raises(ClientError, match="must start with ws:// or wss://"):
        RemotePolicy("http://127.0.0.1:8000")


def test_the_client_names_a_server_that_is_not_there():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ClientError, match=f"cannot connect to policy server ws://127.0.0.1:{port}"):
        RemotePolicy(f"ws://127.0.0.1:{port}", timeout=5)


# -- flags of `robodual serve`: checked before the policy is loaded ---------------------------------
BAD_FLAGS = {
    "port-99999": (["--port", "99999"], "--port must be an integer in 0..65535"),
    "port-65536": (["--port", "65536"], "--port must be an integer in 0..65535"),
    "port-negative": (["--port", "-1"], "--port must be an integer in 0..65535"),
    "max-connections-0": (["--max-connections", "0"], "--max-connections must be in 1..4096"),
    "max-connections-negative": (["--max-connections", "-3"], "--max-connections must be in 1..4096"),
    "max-message-0": (["--max-message-mb", "0"], "--max-message-mb must be a positive number"),
    "max-message-nan": (["--max-message-mb", "nan"], "--max-message-mb must be a positive number"),
    "max-message-inf": (["--max-message-mb", "inf"], "--max-message-mb must be a positive number"),
    "max-message-tiny": (["--max-message-mb", "0.0001"], "between 1 KiB and 2 GiB"),
    "handshake-timeout-0": (["--handshake-timeout", "0"], "--handshake-timeout must be a number of seconds"),
    "handshake-timeout-nan": (["--handshake-timeout", "nan"], "--handshake-timeout must be a number of seconds"),
    "message-timeout-negative": (["--message-timeout", "-5"], "--message-timeout must be a number of seconds"),
    "message-timeout-inf": (["--message-timeout", "inf"], "--message-timeout must be a number of seconds"),
    "empty-token": (["--token", ""], "--token must be a non-empty string"),
    "token-with-space": (["--token", "a b"], "--token must be a non-empty string"),
    "token-with-newline": (["--token", "a\nb"], "--token must be a non-empty string"),
}


@pytest.mark.parametrize("case", list(BAD_FLAGS))
def test_bad_serve_flags_are_one_line_before_anything_is_loaded(tmp_path, capsys, case):
    from robodual_cli.app import main

    flags, needle = BAD_FLAGS[case]
    with pytest.raises(SystemExit) as info:
        main(["serve", "--policy", str(tmp_path / "no-such-run"), *flags])
    cap = capsys.readouterr()
    assert info.value.code == 1 and "serving" not in cap.out and "no-such-run" not in cap.err
    lines = [line for line in cap.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], cap.err


def test_a_port_in_use_is_one_line(tmp_path, capsys, monkeypatch):
    from robodual_cli.app import main
    from robodual_cli.commands import serve as serve_cmd

    class Base:
        observation_spec = {}

        def new_session(self):
            return EchoPolicy()

    monkeypatch.setattr(serve_cmd, "_load", lambda *a: Base())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(SystemExit):
            main(["serve", "--policy", str(tmp_path), "--port", str(port)])
    cap = capsys.readouterr()
    assert "serving" not in cap.out
    assert cap.err.strip() == f"error: cannot listen on 127.0.0.1:{port}: address already in use" or \
        cap.err.strip().startswith(f"error: cannot listen on 127.0.0.1:{port}: ")


# -- replies matched to requests: a late reply is never the current step's action -----------------------------
class LatePolicy:
    """Answers the calls listed in ``slow`` (0-based, resets and steps counted together) after ``delay`` s."""

    def __init__(self, slow, delay=1.5):
        self.slow, self.delay, self.calls = set(slow), delay, 0

    def _tick(self):
        import time

        call, self.calls = self.calls, self.calls + 1
        if call in self.slow:
            time.sleep(self.delay)

    def reset(self):
        self._tick()

    def step(self, observation, instruction):
        self._tick()
        return observation["proprio"] * 2


def proprio_obs(value):
    return {"rgb_static": np.zeros((8, 8, 3), np.uint8), "proprio": np.full(4, value, np.float32)}


# each case: which server calls answer late, and the client's calls; a call that times out is marked "late"
LATE_SEQUENCES = {
    "step-late-then-steps": ([0], ["late-step", "step", "step", "step"]),
    "two-late-steps-in-a-row": ([0, 1], ["late-step", "late-step", "step", "step"]),
    "late-reset-then-step": ([0], ["late-reset", "step", "step"]),
    "late-step-then-reset": ([1], ["step", "late-step", "reset", "step"]),
}


@pytest.mark.parametrize("case", list(LATE_SEQUENCES))
def test_a_late_reply_is_dropped_and_never_taken_for_a_later_step(case):
    slow, calls = LATE_SEQUENCES[case]
    srv = PolicyServer(lambda: LatePolicy(slow), {"observation_spec": SPEC, "action_dim": 4})
    srv.start_in_thread("127.0.0.1", 0)
    try:
        with RemotePolicy(f"ws://127.0.0.1:{srv.port}", timeout=0.5) as remote:
            late = 0
            for i, call in enumerate(calls):
                if call.startswith("late"):
                    late += 1
                    remote.timeout = 0.5
                    with pytest.raises(ClientError, match="sent no reply within 0.5 s .its late reply will be dropped"):
                        remote.reset() if call == "late-reset" else remote.step(proprio_obs(i), "")
                elif call == "reset":
                    remote.timeout = 5.0  # the late replies arrive while this waits
                    remote.reset()
                else:
                    remote.timeout = 5.0
                    assert remote.step(proprio_obs(i), "").tolist() == [2.0 * i] * 4, (case, i)
            assert remote.dropped_replies == late
    finally:
        srv.stop()


class NoIdServer(PolicyServer):
    """A server of before request ids: it neither announces nor echoes them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.metadata.pop("request_ids")

    async def _answer(self, session, raw):
        reply, _ = await super()._answer(session, raw)
        return reply, None


def test_after_a_timeout_a_server_without_ids_is_refused_not_trusted():
    srv = NoIdServer(lambda: LatePolicy([0]), {"observation_spec": SPEC, "action_dim": 4})
    srv.start_in_thread("127.0.0.1", 0)
    try:
        with RemotePolicy(f"ws://127.0.0.1:{srv.port}", timeout=0.5) as remote:
            with pytest.raises(ClientError, match="does not echo request ids, so the connection cannot be used"):
                remote.step(proprio_obs(1), "")
            remote.timeout = 5.0
            with pytest.raises(ClientError, match="its late reply could be taken for this one; reconnect"):
                remote.step(proprio_obs(2), "")
        with RemotePolicy(f"ws://127.0.0.1:{srv.port}") as fresh:  # without a timeout it works as before
            assert fresh.step(proprio_obs(3), "").tolist() == [6.0] * 4
    finally:
        srv.stop()


def test_the_server_echoes_a_request_id(link):
    link.send(pack({"type": "step", "id": 41, "observation": good_observation(), "instruction": ""}))
    reply = unpack(link.recv(timeout=30))
    assert reply["type"] == "action" and reply["id"] == 41
    link.send(pack({"type": "launch", "id": 42}))
    reply = unpack(link.recv(timeout=30))
    assert reply["type"] == "error" and reply["id"] == 42  # an error for a readable request names it too


# -- slow clients: the handshake and every message have a deadline --------------------------------------------
def _trickle(sock, data, stop, pause=0.2):
    import time

    for byte in data:
        if stop.is_set():
            return
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return
        time.sleep(pause)


def _masked_frame(opcode, payload, fin=True):
    import struct

    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    head += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n)
    return head + b"\0\0\0\0" + payload  # mask 0: the payload goes as is


def _upgraded_socket(port, rcvbuf=None):
    """A raw socket after a correct websocket handshake (the server's metadata is left unread)."""
    import base64
    import os

    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    got = b""
    while b"\r\n\r\n" not in got:
        got += sock.recv(4096)
    assert got.startswith(b"HTTP/1.1 101"), got[:80]
    return sock


STEP = pack({"type": "step", "observation": good_observation(), "instruction": ""})
SLOW_PEERS = {
    # bytes of the HTTP request, one every 0.2 s: the handshake deadline
    "slow-headers": (False, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n" * 20),
    # a whole step frame, one byte every 0.2 s
    "slow-frame": (True, _masked_frame(0x2, STEP)),
    # a frame header that declares 200 bytes, then nothing
    "stalled-payload": (True, _masked_frame(0x2, b"x" * 200)[:12]),
    # the first fragment of a message in full, its continuation never
    "unfinished-fragments": (True, _masked_frame(0x2, STEP[:10], fin=False)),
}


@pytest.mark.parametrize("case", list(SLOW_PEERS))
def test_a_slow_client_is_dropped_within_the_deadline_while_others_are_served(case):
    import threading
    import time

    upgraded, data = SLOW_PEERS[case]
    srv = PolicyServer(EchoPolicy, {"observation_spec": SPEC, "action_dim": 4}, max_connections=3,
                       handshake_timeout=1.0, message_timeout=1.0)
    srv.start_in_thread("127.0.0.1", 0)
    stop = threading.Event()
    socks, threads = [], []
    try:
        for _ in range(2):
            sock = _upgraded_socket(srv.port) if upgraded else socket.create_connection(("127.0.0.1", srv.port))
            sock.settimeout(10)
            socks.append(sock)
            pause = 0.2 if case != "unfinished-fragments" else 0.0
            threads.append(threading.Thread(target=_trickle, args=(sock, data, stop, pause), daemon=True))
        t0 = time.monotonic()
        for t in threads:
            t.start()
        with RemotePolicy(f"ws://127.0.0.1:{srv.port}") as ok:  # served while the slow ones trickle
            for _ in range(3):
                assert ok.step(good_observation(), "").tolist() == [0.0, 2.0, 4.0, 6.0]
        for sock in socks:  # each slow peer's connection is closed by the server within the deadline
            rest = b""
            while True:
                try:
                    chunk = sock.recv(4096)
                except (ConnectionResetError, TimeoutError):
                    break
                if not chunk:
                    break
                rest += chunk
            if upgraded:  # a close frame with 1008 (policy violation) naming the setting
                assert b"\x03\xf0" in rest and b"--message-timeout" in rest, rest[-120:]
        elapsed = time.monotonic() - t0
        assert elapsed < 6.0, elapsed  # the deadline is 1 s; trickling all would take over 10 s
        for _ in range(100):
            if srv.active == 0:
                break
            time.sleep(0.05)
        assert srv.active == 0  # every slot is free again
    finally:
        stop.set()
        for sock in socks:
            sock.close()
        srv.stop()


class HugeReplyPolicy:
    def reset(self):
        pass

    def step(self, observation, instruction):
        return np.zeros(4 * 2**20, np.float32)  # a 16 MiB reply


def test_a_client_that_does_not_read_its_replies_is_cut_off():
    import time

    srv = PolicyServer(HugeReplyPolicy, {"observation_spec": SPEC}, message_timeout=1.0)
    srv.start_in_thread("127.0.0.1", 0)
    try:
        sock = _upgraded_socket(srv.port, rcvbuf=4096)
        for _ in range(3):  # three steps, no reply read: the server's send waits on a full socket buffer
            sock.sendall(_masked_frame(0x2, STEP))
        t0 = time.monotonic()
        while not srv.active and time.monotonic() - t0 < 10:
            time.sleep(0.01)
        assert srv.active == 1
        while srv.active and time.monotonic() - t0 < 15:
            time.sleep(0.05)
        assert srv.active == 0, "the slot of a client that reads nothing is never freed"
        assert time.monotonic() - t0 < 8
        with RemotePolicy(f"ws://127.0.0.1:{srv.port}", max_size=None) as ok:
            assert ok.step(good_observation(), "").shape == (4 * 2**20,)
        sock.close()
    finally:
        srv.stop()


@pytest.mark.parametrize("pad", [0, 200, 70000], ids=["7-bit-length", "16-bit-length", "64-bit-length"])
def test_a_client_idle_between_messages_is_not_cut(pad):
    import time

    srv = PolicyServer(EchoPolicy, {"observation_spec": SPEC, "action_dim": 4}, message_timeout=0.5)
    srv.start_in_thread("127.0.0.1", 0)
    try:
        with RemotePolicy(f"ws://127.0.0.1:{srv.port}") as remote:
            obs = {**good_observation(), "pad": np.zeros(pad, np.uint8)}
            for _ in range(2):
                assert remote.step(obs, "").shape == (4,)
                remote._ws.ping()  # control frames between messages count as whole frames too
                time.sleep(1.2)  # idle for over twice the message deadline: nothing is under way
            assert remote.step(obs, "").shape == (4,)
    finally:
        srv.stop()


def test_a_big_message_arriving_in_time_is_not_cut():
    srv = PolicyServer(EchoPolicy, {"observation_spec": SPEC, "action_dim": 4}, message_timeout=2.0)
    srv.start_in_thread("127.0.0.1", 0)
    try:
        with RemotePolicy(f"ws://127.0.0.1:{srv.port}") as remote:
            for _ in range(3):
                pad = np.zeros(4 * 2**20, np.uint8)  # 4 MiB: many TCP reads, one message
                assert remote.step({**good_observation(), "pad": pad}, "").shape == (4,)
    finally:
        srv.stop()


# -- the opening handshake: whatever the headers hold, a refusal, never a 500 ---------------------------------
BAD_HANDSHAKES = {
    "two-authorization-headers": (["Authorization: Bearer s3cret", "Authorization: Bearer s3cret"], 400),
    "right-and-wrong-authorization": (["Authorization: Bearer s3cret", "Authorization: Bearer nope"], 400),
    "three-authorization-headers": (["Authorization: x"] * 3, 400),
    "latin1-authorization": (["Authorization: Bearer s3cr\xe9t"], 401),
    "empty-authorization": (["Authorization: "], 401),
}


@pytest.mark.parametrize("case", list(BAD_HANDSHAKES))
def test_a_malformed_handshake_is_refused_cleanly(token_server, case, caplog):
    import base64
    import logging
    import os

    headers, status = BAD_HANDSHAKES[case]
    caplog.set_level(logging.DEBUG, logger="websockets")
    key = base64.b64encode(os.urandom(16)).decode()
    request = ("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n" + "".join(h + "\r\n" for h in headers)
               + "\r\n")
    with socket.create_connection(("127.0.0.1", token_server.port), timeout=10) as sock:
        sock.sendall(request.encode("latin-1"))
        answer = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    head = answer.split(b"\r\n", 1)[0].decode()
    assert head.startswith(f"HTTP/1.1 {status} "), answer[:200]
    body = answer.split(b"\r\n\r\n", 1)[1].decode()
    assert "Traceback" not in body and len(body.strip().splitlines()) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
    with RemotePolicy(f"ws://127.0.0.1:{token_server.port}", token="s3cret") as ok:  # still serving
        assert ok.step(good_observation(), "").shape == (4,)


# -- the client's own limits: a reply too big for the client is the client's limit, not the server's fault ----
class BigPolicy:
    def reset(self):
        pass

    def step(self, observation, instruction):
        return np.zeros((64 * 1024, 4), np.float32)  # 1 MiB


@pytest.mark.parametrize("where", ["step-reply", "metadata-on-connect"])
def test_a_reply_over_the_clients_limit_names_the_clients_setting(where):
    meta = {"observation_spec": SPEC}
    if where == "metadata-on-connect":
        meta["policy"] = "p" * 8192
    srv = PolicyServer(BigPolicy, meta)
    srv.start_in_thread("127.0.0.1", 0)
    try:
        with pytest.raises(ClientError) as info:
            with RemotePolicy(f"ws://127.0.0.1:{srv.port}", max_size=4096) as remote:
                remote.step(good_observation(), "")
        line = str(info.value)
        assert "exceeds this client's limit of 4096 bytes" in line and "RemotePolicy(max_size=...)" in line, line
        assert "policy server" in line and "closed the connection (" not in line
    finally:
        srv.stop()


@pytest.mark.parametrize("kwargs,needle", [({"timeout": 0}, "timeout must be a positive number"),
                                           ({"timeout": float("nan")}, "timeout must be a positive number"),
                                           ({"max_size": 10}, "max_size must be a number of bytes >= 1024"),
                                           ({"max_size": True}, "max_size must be a number of bytes")])
def test_bad_client_settings_are_one_line(kwargs, needle):
    with pytest.raises(ClientError, match=needle):
        RemotePolicy("ws://127.0.0.1:9", **kwargs)


@pytest.mark.timeout(120)  # without a send timeout the client blocks forever: fail, do not hang
def test_a_server_that_stops_reading_fails_the_clients_send_within_its_timeout():
    import threading
    import time

    release = threading.Event()

    class Stuck:
        def reset(self):
            pass

        def step(self, observation, instruction):
            release.wait(60)  # the server is stuck: it reads no more than its queue holds
            return observation["proprio"]

    srv = PolicyServer(Stuck, {"observation_spec": SPEC}, max_message_bytes=2**30, message_timeout=600)
    srv.start_in_thread("127.0.0.1", 0)
    try:
        with RemotePolicy(f"ws://127.0.0.1:{srv.port}", timeout=0.5) as remote:
            obs = {**good_observation(), "pad": np.zeros(16 * 2**20, np.uint8)}
            for _ in range(12):
                t0 = time.monotonic()
                with pytest.raises(ClientError) as info:
                    remote.step(obs, "")
                assert time.monotonic() - t0 < 10
                if "did not take this step request within 0.5 s" in str(info.value):
                    break
                assert "sent no reply within 0.5 s" in str(info.value)
            else:
                pytest.fail("every step was sent: the server never stopped reading, the test proves nothing")
            assert "it is not reading" in str(info.value)
    finally:
        release.set()
        srv.stop()
