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
