"""Deterministic latency in control steps (robodual_core.runtime.latency), by value."""

from __future__ import annotations

import numpy as np
import pytest

from robodual_core.errors import RobodualError
from robodual_core.interfaces import GeneralistOutput
from robodual_core.runtime import (
    AggregationConfig,
    DualSystemPolicy,
    GeneralistOnlyPolicy,
    LatencyConfig,
    SpecialistOnlyPolicy,
    parse_latency,
)
from robodual_core.runtime.latency import TimedSteps, generalist_latency_steps
from robodual_core.runtime.lockstep import Lockstep

NO_AGG = AggregationConfig(enabled=False, binarize_gripper=False)


def _gen_output(values: np.ndarray) -> GeneralistOutput:
    b, k = values.shape[:2]
    return GeneralistOutput(values.astype(np.float32), np.zeros((b, 3, 4)), np.zeros((b, 8, 4)), np.ones((b, 3), bool),
                            np.ones((b, 8), bool))


class Gen:
    """Chunk for the observation at step t: action i = 100 t + i (so which chunk and row ran is visible)."""

    k_g = 8
    image_key = "t"

    def __init__(self):
        self.calls: list[int] = []

    def predict(self, observation, instruction):
        t = int(observation["t"][0])
        self.calls.append(t)
        return _gen_output(np.full((1, self.k_g, 2), 100.0 * t) + np.arange(self.k_g)[None, :, None])

    def actions_to_env(self, actions):
        return np.asarray(actions, dtype=np.float32)


class Spec:
    """Chunk for the observation at step t: row i = 100 t + i; records (t, tau, generalist step, prefix)."""

    k_s = 4

    def __init__(self, wants_prefix: bool = False):
        self.wants_prefix = wants_prefix
        self.seen: list[tuple] = []
        self.observed: list[int] = []

    def predict(self, observation, instruction, generalist, tau, prefix=None):
        t = int(observation["t"][0])
        g = None if generalist is None else int(generalist.actions[0, 0, 0]) // 100
        self.seen.append((t, tau, g, prefix))
        return np.stack([np.full(2, 100.0 * t + i, dtype=np.float32) for i in range(self.k_s)])

    def observe(self, observation):
        self.observed.append(int(observation["t"][0]))


def obs(t):
    return {"t": np.array([t])}


def run(policy, steps):
    policy.reset()
    return [float(policy.step(obs(t), "pick")[0]) for t in range(steps)]


def test_parse_latency_forms_and_one_line_errors():
    assert parse_latency("generalist=16,specialist=2") == LatencyConfig(16, 2)
    assert parse_latency(" specialist=3 ") == LatencyConfig(0, 3)
    assert parse_latency("") == LatencyConfig() and parse_latency(None).zero
    for bad in ("generalist=-1", "generalist=1.5", "gen=4", "generalist", "generalist=2,generalist=3", "16,2"):
        with pytest.raises(RobodualError, match="--latency") as info:
            parse_latency(bad)
        assert "\n" not in str(info.value)
    with pytest.raises(RobodualError, match="latency: specialist"):
        parse_latency({"specialist": True}, flag="latency")


def test_documented_default_for_a_7b_generalist_at_metaworld_rate():
    # 56 tokens x 41 ms = 2.296 s at 80 Hz = 183.7 steps
    assert generalist_latency_steps() == 184
    assert generalist_latency_steps(ms_per_token=2.7) == 13  # 151.2 ms -> 12.1 steps, rounded up


def test_zero_latency_keeps_the_original_path_bit_identical():
    base = DualSystemPolicy(Gen(), Spec(), aggregation=AggregationConfig(binarize_gripper=False))
    zero = DualSystemPolicy(Gen(), Spec(), aggregation=AggregationConfig(binarize_gripper=False),
                            latency=LatencyConfig(0, 0))
    assert zero._timed is None
    assert run(base, 30) == run(zero, 30)
    # the timed path at zero latency schedules and aggregates exactly as the original one
    timed = DualSystemPolicy(Gen(), Spec(), aggregation=AggregationConfig(binarize_gripper=False))
    timed._timed = TimedSteps(LatencyConfig(), 8, 1)
    base = DualSystemPolicy(Gen(), Spec(), aggregation=AggregationConfig(binarize_gripper=False))
    assert run(timed, 30) == run(base, 30)
    assert timed.generalist.calls == base.generalist.calls == [0, 8, 16, 24]
    assert [s[:3] for s in timed.specialist.seen] == [s[:3] for s in base.specialist.seen]


def test_generalist_chunk_is_released_l_g_steps_later():
    gen, spec = Gen(), Spec()
    policy = DualSystemPolicy(gen, spec, aggregation=NO_AGG, latency=LatencyConfig(generalist=4))
    run(policy, 24)
    assert gen.calls == [0, 8, 16]  # one in flight; every k_g steps as in sync mode
    by_t = {t: (tau, g) for t, tau, g, _ in spec.seen}
    assert by_t[7] == (7, 0) and by_t[11] == (7, 0)  # chunk 8 not released yet: the old one, age clamped
    assert by_t[12] == (4, 8) and by_t[15] == (7, 8) and by_t[20] == (4, 16)
    # slower than a chunk: the generalist restarts as soon as its chunk lands
    gen2 = Gen()
    policy = DualSystemPolicy(gen2, Spec(), aggregation=NO_AGG, latency=LatencyConfig(generalist=16))
    run(policy, 45)
    assert gen2.calls == [0, 8, 24, 40]


def test_specialist_chunk_starts_d_steps_later_from_row_d():
    spec = Spec()
    policy = SpecialistOnlyPolicy(spec, aggregation=NO_AGG, latency=LatencyConfig(specialist=2))
    actions = run(policy, 9)
    # chunk of step 0 is awaited; chunk of step 1 lands at 3 (row 2), of step 3 at 5, ...
    assert actions == [0, 1, 2, 102, 103, 302, 303, 502, 503]
    assert [s[0] for s in spec.seen] == [0, 1, 3, 5, 7]
    assert spec.observed == [2, 4, 6, 8]  # steps without a prediction still reach the history frames


def test_stall_repeats_the_last_action_and_generalist_only_waits():
    spec = Spec()
    actions = run(SpecialistOnlyPolicy(spec, aggregation=NO_AGG, latency=LatencyConfig(specialist=5)), 8)
    # chunk of step 0 covers 0..3, chunk of step 1 (lands at 6) covers 1..4: nothing covers 4..7 -> the newest
    # chunk's last action is held
    assert actions == [0, 1, 2, 3, 3, 3, 103, 103]
    gen = Gen()
    policy = GeneralistOnlyPolicy(gen, aggregation=NO_AGG, latency=LatencyConfig(generalist=4))
    actions = run(policy, 16)
    assert gen.calls == [0, 4, 8, 12]  # asks L_g steps before the executed chunk ends
    assert actions[:8] == list(range(8))  # its previous chunk runs while the next is decoded
    assert actions[8:12] == [404, 405, 406, 407]  # chunk of step 4, from row 4 (the action for step 8)
    assert actions[12:] == [804, 805, 806, 807]
    slow = Gen()
    actions = run(GeneralistOnlyPolicy(slow, aggregation=NO_AGG, latency=LatencyConfig(generalist=12)), 20)
    assert slow.calls == [0, 1, 13]
    assert actions[:8] == list(range(8)) and actions[8:13] == [7] * 5  # chunk of step 1 lands at 13, stale
    assert actions[13:] == [107] * 7


def test_committed_prefix_reaches_a_runner_that_wants_it():
    spec = Spec(wants_prefix=True)
    policy = SpecialistOnlyPolicy(spec, aggregation=NO_AGG, latency=LatencyConfig(specialist=2))
    run(policy, 4)
    t0, _, _, first = spec.seen[0]
    assert t0 == 0 and first.delay == 0 and first.actions.shape[0] == 0  # nothing planned yet
    t1, _, _, second = spec.seen[1]
    assert t1 == 1 and second.delay == 2
    assert second.actions[:, 0].tolist() == [1, 2, 3]  # what chunk 0 plans for steps 1..3
    # at zero latency a runner that wants the prefix takes the timed path (soft guidance on the previous plan)
    spec0 = Spec(wants_prefix=True)
    policy = DualSystemPolicy(Gen(), spec0, aggregation=NO_AGG)
    assert policy._timed is not None
    run(policy, 3)
    assert spec0.seen[2][3].delay == 0 and spec0.seen[2][3].actions[:, 0].tolist() == [101, 102, 103]
    assert [s[3] for s in Spec().seen] == []


def test_async_mode_refuses_step_latency():
    with pytest.raises(RobodualError, match="sync"):
        DualSystemPolicy(Gen(), Spec(), mode="async", latency=LatencyConfig(generalist=2))


class BatchedGen(Gen):
    def predict_batch(self, images, instructions):
        rows = [Gen.predict(self, {"t": im}, ins) for im, ins in zip(images, instructions, strict=True)]
        fields = ("actions", "task_latents", "action_latents", "task_mask", "action_mask")
        return GeneralistOutput(*(np.concatenate([getattr(r, f) for r in rows]) for f in fields))


class BatchedSpec(Spec):
    noise_shape = (1, 4, 2)

    def fork(self):
        return BatchedSpec(self.wants_prefix)

    def prepare(self, observation, instruction, generalist, tau, prefix=None):
        return (observation, instruction, generalist, tau, prefix)

    def predict_prepared(self, prepared, noise=None):
        return [self.predict(*p) for p in prepared]


def test_lockstep_sessions_under_latency_match_one_session():
    root = DualSystemPolicy(BatchedGen(), BatchedSpec(wants_prefix=True), aggregation=NO_AGG,
                            latency=LatencyConfig(generalist=4, specialist=2))
    alone = run(root.new_session(), 20)
    lockstep = Lockstep()
    results: dict[int, list[float]] = {}

    def body(i: int) -> None:
        results[i] = run(root.new_session(wrap=lockstep.wrapper(i)), 20 - i)

    assert lockstep.run(3, body) == []
    for i in range(3):
        assert results[i] == alone[: 20 - i]
    assert any(size > 1 for _, size in lockstep.batches)
