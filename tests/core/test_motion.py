"""Chunk-boundary discontinuity and jerk (robodual_core.runtime.motion), by value and from an evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from robodual_core.runtime import AggregationConfig, LatencyConfig, SpecialistOnlyPolicy
from robodual_core.runtime.motion import motion_metrics, summarize_motion


def test_motion_metrics_by_value():
    a = np.array([[0.0, 0, 1], [0.1, 0.1, 1], [0.2, 0.2, -1], [1.2, 1.2, -1], [1.3, 1.3, -1]])
    switches = [True, False, False, True, False]
    m = motion_metrics(a, switches)  # the gripper (last dim) is left out
    assert m["switches"] == 2
    assert m["switch_jump"] == pytest.approx(1.0)
    assert m["within_jump"] == pytest.approx(0.1)
    # second differences: 0, 0.9, -0.9 per dim
    assert m["jerk"] == pytest.approx(0.6)
    assert motion_metrics(np.zeros((0, 3)), [])["jerk"] is None
    summary = summarize_motion([{"motion": m}, {"motion": {**m, "switch_jump": 3.0}}, {}])
    assert summary["switch_jump"] == pytest.approx(2.0) and summary["switch_over_within"] == pytest.approx(20.0)


class AlternatingSpecialist:
    """Each call's chunk sits at another level (0 or 0.5): switching between chunks jumps, inside one it creeps."""

    k_s = 4

    def __init__(self):
        self.calls = 0

    def predict(self, observation, instruction, generalist, tau):
        level = 0.5 * (self.calls % 2)
        self.calls += 1
        return np.array([[level + 0.01 * i] * 3 + [1.0] for i in range(self.k_s)], np.float32)


@pytest.mark.slow
def test_metaworld_evaluation_reports_discontinuity_at_switches():
    from robodual_envs.metaworld.evaluate import evaluate

    policy = SpecialistOnlyPolicy(AlternatingSpecialist(), AggregationConfig(enabled=False, binarize_gripper=False),
                                  latency=LatencyConfig(specialist=2))
    results = evaluate(policy, tasks="reach-v3", episodes_per_task=1, max_steps=9, image_size=64, progress=False)
    episode = results["episodes"][0]["motion"]
    # chunks land at steps 0, 3, 5, 7: 3 switches after the first, each a jump of 0.5 -/+ the creep
    assert episode["switches"] == 4
    assert episode["switch_jump"] > 0.4 and episode["within_jump"] == pytest.approx(0.01, abs=1e-6)
    assert results["motion"]["switch_over_within"] > 40
