"""Action chunks over the served path: the executed actions and the committed prefix travel to the policy, and the
client's executor switches chunks the real-time-chunking way, against a real loopback server."""

from __future__ import annotations

import time

import numpy as np
import pytest

from robodual_client import RemotePolicy, ServerError, WireError
from robodual_client.chunks import ChunkExecutor, chunk_request, read_chunk_request
from robodual_core.interfaces import GeneralistOutput
from robodual_core.runtime import AggregationConfig, DualSystemPolicy
from robodual_core.serve import PolicyServer


class Gen:
    k_g = 8

    def __init__(self, log):
        self.log = log

    def predict(self, observation, instruction):
        t = int(observation["t"][0])
        self.log.append(("generalist", t))
        actions = np.full((1, self.k_g, 2), 100.0 * t, np.float32)
        return GeneralistOutput(actions, np.zeros((1, 2, 3)), np.zeros((1, 8, 3)), np.ones((1, 2), bool),
                                np.ones((1, 8), bool))

    def actions_to_env(self, actions):
        return np.asarray(actions)


class Spec:
    """Chunk for the observation at robot step t: row i = 100 t + i (both dims)."""

    k_s = 4

    def __init__(self, log, wants_prefix=True, delay_s=0.0):
        self.log, self.wants_prefix, self.delay_s = log, wants_prefix, delay_s

    def predict(self, observation, instruction, generalist, tau, prefix=None):
        time.sleep(self.delay_s)
        t = int(observation["t"][0])
        self.log.append(("specialist", t, tau, None if prefix is None else (prefix.actions[:, :1].ravel().tolist(),
                                                                          prefix.delay)))
        return np.stack([np.full(2, 100.0 * t + i, np.float32) for i in range(self.k_s)])


def serve(log, **spec_kw):
    gen, spec = Gen(log), Spec(log, **spec_kw)
    root = DualSystemPolicy(gen, spec, aggregation=AggregationConfig(enabled=False, binarize_gripper=False))
    srv = PolicyServer(root.new_session, {"observation_spec": {}, "action_dim": 2})
    srv.start_in_thread("127.0.0.1", 0)
    return srv


def obs(t):
    return {"t": np.array([t], np.int64)}


def test_chunk_wire_refusals():
    msg = chunk_request(obs(0), "go", np.zeros((2, 2)), np.ones((3, 2)), 1)
    executed, prefix, delay = read_chunk_request(msg, 2)
    assert executed.shape == (2, 2) and prefix.shape == (3, 2) and delay == 1
    with pytest.raises(WireError, match="'prefix' contains NaN"):
        chunk_request(obs(0), "go", None, np.array([[np.nan, 0.0]]), 0)
    with pytest.raises(WireError, match="'delay'"):
        chunk_request(obs(0), "go", None, None, -1)
    with pytest.raises(WireError, match="'executed' has actions of 3 values; expected 2"):
        read_chunk_request({**msg, "executed": np.zeros((1, 3), np.float32)}, 2)
    with pytest.raises(WireError, match="'delay'"):
        read_chunk_request({**msg, "delay": True}, 2)


def test_served_chunks_follow_the_robots_clock_and_carry_the_prefix():
    log: list = []
    srv = serve(log)
    try:
        with RemotePolicy(f"ws://127.0.0.1:{srv.port}") as remote:
            assert remote.metadata["chunks"] is True
            remote.reset()
            first = remote.chunk(obs(0), "go")
            assert first[:, 0].tolist() == [0, 1, 2, 3]
            # the robot executed 3 actions; it will execute 1 more (its committed prefix) while this is computed
            second = remote.chunk(obs(3), "go", executed=first[:3], prefix=first[3:], delay=1)
            assert second[:, 0].tolist() == [300, 301, 302, 303]
            remote.chunk(obs(9), "go", executed=np.zeros((6, 2)), prefix=None, delay=0)
            remote.reset()
            remote.chunk(obs(0), "go")
            with pytest.raises(ServerError, match="'prefix' has actions of 3 values; expected 2"):
                remote.chunk(obs(1), "go", executed=np.zeros((1, 2)), prefix=np.zeros((1, 3)), delay=0)
            np.testing.assert_array_equal(remote.step(obs(0), "go"), [0, 0])  # single actions still served
    finally:
        srv.stop()
    assert log[:3] == [("generalist", 0), ("specialist", 0, 0, ([], 0)), ("specialist", 3, 3, ([3.0], 1))]
    # 9 robot steps later the generalist runs again (every k_g = 8 of the robot's steps); reset restarts the clock
    assert log[3:6] == [("generalist", 9), ("specialist", 9, 0, ([], 0)), ("generalist", 0)]


def test_a_policy_without_chunks_is_refused_in_one_line():
    class Plain:
        def reset(self):
            pass

        def step(self, observation, instruction):
            return np.zeros(2, np.float32)

    srv = PolicyServer(Plain, {"observation_spec": {}, "action_dim": 2})
    srv.start_in_thread("127.0.0.1", 0)
    try:
        with RemotePolicy(f"ws://127.0.0.1:{srv.port}") as remote:
            with pytest.raises(ServerError, match="serves single actions only"):
                remote.chunk(obs(0), "go")
            np.testing.assert_array_equal(remote.step(obs(0), "go"), [0, 0])
    finally:
        srv.stop()


def test_executor_switches_chunks_the_rtc_way_against_a_served_policy():
    log: list = []
    srv = serve(log)
    try:
        with RemotePolicy(f"ws://127.0.0.1:{srv.port}") as remote:
            remote.reset()
            executor = ChunkExecutor(remote, "go", execute_every=2, delay=1, sync=True)
            actions = [float(executor.act(obs(t))[0]) for t in range(9)]
    finally:
        srv.stop()
    # chunk of step 0; at step 2 the next is asked for (the robot executes its committed row 2 meanwhile) and
    # lands at step 3, where execution continues from its row 1; likewise at steps 5 and 8
    assert actions == [0, 1, 2, 201, 202, 203, 501, 502, 503]
    specialist = [entry for entry in log if entry[0] == "specialist"]
    assert [e[1] for e in specialist] == [0, 2, 5, 8]  # the server's clock is the robot's executed steps
    assert specialist[1][3] == ([2.0, 3.0], 1) and specialist[2][3] == ([203.0], 1)
    assert executor.switches == [(0, 0), (3, 1), (6, 1)]


def test_executor_never_waits_for_a_slow_server():
    log: list = []
    srv = serve(log, delay_s=0.08)
    try:
        with RemotePolicy(f"ws://127.0.0.1:{srv.port}") as remote:
            remote.reset()
            executor = ChunkExecutor(remote, "go", execute_every=1)
            executor.act(obs(0))  # the first chunk is awaited
            t0 = time.perf_counter()
            actions = []
            for t in range(1, 12):
                actions.append(float(executor.act(obs(t))[0]))
                time.sleep(0.03)  # a 33 Hz robot loop
            per_step = (time.perf_counter() - t0) / 11
            executor.close()
    finally:
        srv.stop()
    assert per_step < 0.07  # below the server's 0.08 s per chunk (a robot loop step is 0.03 s)
    assert len(executor.switches) >= 2
    for _step, delay in executor.switches[1:]:
        assert delay >= 1  # the robot went on executing while the chunk was computed
    # after a switch at step s with delay d the action is row d of the chunk for step s - d: 100 (s - d) + d (a
    # chunk that lands after its last row holds that row)
    s, d = executor.switches[1]
    assert actions[s - 1] == 100 * (s - d) + min(d, 3)
    assert executor.estimated_delay >= 1
