"""The dual-system runtime: scheduling, shifted-window ages and temporal aggregation, by value."""

import time

import numpy as np
import pytest

from robodual_core.interfaces import GeneralistOutput
from robodual_core.runtime import (
    AggregationConfig,
    DualSystemPolicy,
    GeneralistOnlyPolicy,
    SpecialistOnlyPolicy,
    TemporalAggregator,
)


class FakeGeneralist:
    k_g = 8

    def __init__(self, delay=0.0):
        self.delay, self.calls = delay, []

    def predict(self, observation, instruction):
        self.calls.append(int(observation["t"][0]))
        time.sleep(self.delay)
        t = float(observation["t"][0])
        actions = np.full((1, self.k_g, 2), t, dtype=np.float32) + np.arange(self.k_g)[None, :, None]
        return GeneralistOutput(actions, np.zeros((1, 3, 4)), np.zeros((1, 8, 4)), np.ones((1, 3), bool),
                                np.ones((1, 8), bool))

    def actions_to_env(self, actions):
        return np.asarray(actions) * 10


class FakeSpecialist:
    k_s = 4

    def __init__(self, delay=0.0):
        self.delay, self.seen = delay, []

    def predict(self, observation, instruction, generalist, tau):
        time.sleep(self.delay)
        t = int(observation["t"][0])
        self.seen.append((t, tau, None if generalist is None else float(generalist.actions[0, 0, 0])))
        return np.stack([np.full(2, t + i, dtype=np.float32) for i in range(self.k_s)])


def obs(t):
    return {"t": np.array([t])}


NO_AGG = AggregationConfig(enabled=False, binarize_gripper=False)


def test_aggregator_weights_oldest_first_by_value():
    agg = TemporalAggregator(AggregationConfig(m=0.1, binarize_gripper=False))
    agg.add(0, np.array([[0.0], [1.0], [2.0]]))
    agg.add(1, np.array([[10.0], [11.0], [12.0]]))
    agg.add(2, np.array([[20.0], [21.0], [22.0]]))
    w = np.exp(-0.1 * np.arange(3))
    expected = (2.0 * w[0] + 11.0 * w[1] + 20.0 * w[2]) / w.sum()
    assert agg.action(2)[0] == pytest.approx(expected, rel=1e-6)
    newest = TemporalAggregator(AggregationConfig(m=0.1, oldest_first=False, binarize_gripper=False))
    for t0, c in list(agg.chunks):
        newest.add(t0, c)
    assert newest.action(2)[0] == pytest.approx((2.0 * w[2] + 11.0 * w[1] + 20.0 * w[0]) / w.sum(), rel=1e-6)
    assert agg.action(3)[0] == pytest.approx((12.0 * w[0] + 21.0 * w[1]) / (w[0] + w[1]), rel=1e-6)


def test_gripper_is_binarized():
    agg = TemporalAggregator(AggregationConfig(m=0.1))
    agg.add(0, np.array([[0.3, 0.2], [0.0, -0.4]]))
    assert agg.action(0).tolist() == pytest.approx([0.3, 1.0])
    assert agg.action(1).tolist() == pytest.approx([0.0, -1.0])


def test_sync_runs_generalist_every_k_g_with_shifted_window_ages():
    gen, spec = FakeGeneralist(), FakeSpecialist()
    policy = DualSystemPolicy(gen, spec, mode="sync", aggregation=NO_AGG)
    policy.reset()
    actions = [policy.step(obs(t), "pick") for t in range(20)]
    assert gen.calls == [0, 8, 16]
    assert [tau for _, tau, _ in spec.seen] == [t % 8 for t in range(20)]
    assert [g for _, _, g in spec.seen] == [float(8 * (t // 8)) for t in range(20)]
    assert actions[5].tolist() == [5.0, 5.0]


def test_async_specialist_never_waits_and_reports_true_age():
    gen, spec = FakeGeneralist(delay=0.2), FakeSpecialist(delay=0.01)
    policy = DualSystemPolicy(gen, spec, mode="async", aggregation=NO_AGG)
    policy.reset()
    policy.step(obs(0), "pick")  # the first chunk is awaited
    t0 = time.perf_counter()
    for t in range(1, 15):
        policy.step(obs(t), "pick")
    per_step = (time.perf_counter() - t0) / 14
    policy.close()
    assert per_step < 0.1  # far below the generalist's 0.2 s
    for t, tau, g in spec.seen:
        assert tau == min(t - int(g), 7)  # the age of the chunk actually used
    assert max(tau for _, tau, _ in spec.seen) >= 5
    assert len(gen.calls) >= 2 and gen.calls[1] >= 1  # later chunks use newer observations


def test_async_worker_error_surfaces():
    class Broken(FakeGeneralist):
        def predict(self, observation, instruction):
            if observation["t"][0] > 0:
                raise ValueError("generalist died")
            return super().predict(observation, instruction)

    policy = DualSystemPolicy(Broken(), FakeSpecialist(), mode="async", aggregation=NO_AGG)
    policy.reset()
    policy.step(obs(0), "x")
    with pytest.raises(Exception, match="generalist died"):
        for t in range(1, 200):
            policy.step(obs(t), "x")
            time.sleep(0.005)
    policy.close()


def test_baselines_share_the_interface():
    spec = FakeSpecialist()
    only = SpecialistOnlyPolicy(spec, aggregation=NO_AGG)
    only.reset()
    assert only.step(obs(3), "x").tolist() == [3.0, 3.0]
    assert spec.seen[-1] == (3, 0, None)
    gen = GeneralistOnlyPolicy(FakeGeneralist(), aggregation=NO_AGG)
    gen.reset()
    out = [gen.step(obs(t), "x") for t in range(10)]
    assert out[0].tolist() == [0.0, 0.0] and out[3].tolist() == [30.0, 30.0] and out[9].tolist() == [90.0, 90.0]


def test_process_generalist_reports_a_dead_child_instead_of_waiting():
    """A generalist process that dies (killed, out of memory) is an error naming the checkpoint, not a hang."""
    import multiprocessing as mp
    import os
    import threading

    from robodual_core.errors import RobodualError
    from robodual_core.runtime import ProcessGeneralist

    ctx = mp.get_context("fork")
    pg = ProcessGeneralist.__new__(ProcessGeneralist)
    pg._conn, child = ctx.Pipe()
    pg._proc = ctx.Process(target=os._exit, args=(3,))
    pg._proc.start()
    child.close()
    pg._path, pg._lock = "runs/gen", threading.Lock()
    with pytest.raises(RobodualError, match=r"generalist process for 'runs/gen' died \(exit code 3\)"):
        pg.predict({}, "open the drawer")
