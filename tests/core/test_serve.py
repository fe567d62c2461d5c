"""The policy server over a real loopback socket: round trip, bad input, token, separate sessions."""

import subprocess
import sys
import urllib.request

import msgpack
import numpy as np
import pytest
from websockets.sync.client import connect

from robodual_client import ClientError, RemotePolicy
from robodual_client.wire import WireError, pack, unpack
from robodual_core.serve import PolicyServer

SPEC = {"rgb_static": {"shape": [8, 8, 3], "dtype": "uint8"}, "proprio": {"shape": [4], "dtype": "float32"}}


class CountingPolicy:
    """Deterministic, stateful: the action depends on the observation and on the step count."""

    def __init__(self):
        self.t = 0

    def reset(self):
        self.t = 0

    def step(self, observation, instruction):
        self.t += 1
        return observation["proprio"] * 2 + self.t + len(instruction)


def observation(seed=0):
    rng = np.random.default_rng(seed)
    return {"rgb_static": rng.integers(0, 255, (8, 8, 3), dtype=np.uint8),
            "proprio": rng.standard_normal(4).astype(np.float32)}


@pytest.fixture
def server():
    srv = PolicyServer(CountingPolicy, {"observation_spec": SPEC, "action_dim": 4}, max_message_bytes=4096)
    srv.start_in_thread("127.0.0.1", 0)
    yield srv
    srv.stop()


def test_wire_round_trip_and_refusals():
    arr = np.arange(6, dtype=np.int16).reshape(2, 3)
    back = unpack(pack({"type": "x", "a": arr}))["a"]
    assert back.dtype == arr.dtype and np.array_equal(back, arr)
    with pytest.raises(WireError, match="dtype object"):
        pack({"type": "x", "a": np.array([object()])})
    bad = msgpack.packb({"type": "x", "a": {"__ndarray__": True, "dtype": "|O", "shape": [1], "data": b"\0" * 8}})
    with pytest.raises(WireError, match="not allowed"):
        unpack(bad)
    with pytest.raises(WireError, match="needs 24 bytes"):
        unpack(msgpack.packb({"type": "x", "a": {"__ndarray__": True, "dtype": "<f4", "shape": [6], "data": b"1"}}))


def test_round_trip_equals_local_policy(server):
    local = CountingPolicy()
    with RemotePolicy(f"ws://127.0.0.1:{server.port}") as remote:
        assert remote.metadata["observation_spec"] == SPEC
        remote.reset()
        for i in range(5):
            obs = observation(i)
            np.testing.assert_array_equal(remote.step(obs, "open"), local.step(obs, "open"))
        assert remote.last_timing["server_s"] >= remote.last_timing["policy_s"] > 0


def test_bad_messages_get_errors_and_the_server_keeps_serving(server):
    with connect(f"ws://127.0.0.1:{server.port}", proxy=None, compression=None) as ws:
        unpack(ws.recv())  # metadata
        cases = [
            (b"\xc1garbage", "not a msgpack message"),
            (pack({"type": "launch"}), "unknown message type 'launch'"),
            (pack({"type": "step", "observation": {"proprio": observation()["proprio"]}, "instruction": "x"}),
             "missing key 'rgb_static'"),
            (pack({"type": "step", "observation": {**observation(), "proprio": np.zeros(3, np.float32)}}),
             "has shape [3], expected [4]"),
            (pack({"type": "step", "observation": {**observation(), "proprio": np.zeros(4, np.float64)}}),
             "has dtype float64, expected float32"),
            (msgpack.packb({"type": "step", "observation": {"proprio": {
                "__ndarray__": True, "dtype": "<f4", "shape": [2**40, 2**40], "data": b""}}}),
             "more than the limit of 4096 bytes"),  # (2**40)**2 * 4 overflowed int64 to 0 bytes before
        ]
        for raw, needle in cases:
            ws.send(raw)
            reply = unpack(ws.recv())
            assert reply["type"] == "error" and needle in reply["error"], reply
        ws.send(pack({"type": "step", "observation": observation(), "instruction": "x"}))
        assert unpack(ws.recv())["type"] == "action"
    with RemotePolicy(f"ws://127.0.0.1:{server.port}") as other:
        other.reset()
        assert other.step(observation(), "").shape == (4,)


def test_two_clients_keep_separate_sessions(server):
    a = RemotePolicy(f"ws://127.0.0.1:{server.port}")
    b = RemotePolicy(f"ws://127.0.0.1:{server.port}")
    obs = observation()
    for _ in range(3):
        a.step(obs, "")
    first_b = b.step(obs, "")
    np.testing.assert_allclose(first_b, obs["proprio"] * 2 + 1)
    np.testing.assert_allclose(a.step(obs, ""), obs["proprio"] * 2 + 4)
    a.close()
    b.close()


def test_token_is_enforced_and_health_check_answers():
    srv = PolicyServer(CountingPolicy, {"observation_spec": SPEC}, token="s3cret")
    srv.start_in_thread("127.0.0.1", 0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/healthz", timeout=10) as resp:
            assert resp.read() == b"ok\n"
        with pytest.raises(ClientError, match="401"):
            RemotePolicy(f"ws://127.0.0.1:{srv.port}")
        with pytest.raises(ClientError, match="401"):
            RemotePolicy(f"ws://127.0.0.1:{srv.port}", token="wrong")
        with RemotePolicy(f"ws://127.0.0.1:{srv.port}", token="s3cret") as ok:
            assert ok.step(observation(), "").shape == (4,)
    finally:
        srv.stop()


def test_client_imports_without_torch():
    code = "import sys, robodual_client; print('torch' in sys.modules, 'robodual_core' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip()
    assert out == "False False"


def test_core_client_is_the_client_package():
    import robodual_client
    from robodual_core import client, wire

    assert client.RemotePolicy is robodual_client.RemotePolicy and wire.pack is robodual_client.pack
