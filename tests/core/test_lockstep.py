"""Lockstep sessions (robodual_core.runtime.lockstep): which calls share a batch, errors, sessions that leave."""

from __future__ import annotations

import numpy as np
import torch

from robodual_core.interfaces import GeneralistOutput
from robodual_core.runtime.lockstep import GENERALIST_STAGE, SPECIALIST_STAGE, Lockstep


def _threads(n: int, lockstep: Lockstep, body) -> list[BaseException]:
    return lockstep.run(n, body)  # a hang is caught by the suite's --timeout


def test_sessions_out_of_phase_align_their_generalist_steps():
    """Sessions whose episodes started on other steps (each asks the generalist every 3rd step of its own) end
    up asking it on the same steps, in one batch; every caller gets its own result."""
    lockstep = Lockstep()

    def gen(requests):
        return [("g", r) for r in requests]

    def spec(requests):
        return [r * 10 for r in requests]

    seen: dict[int, list] = {0: [], 1: [], 2: []}

    def body(i: int) -> None:
        for step in range(-i, 12):  # session i is i steps into an earlier episode; its new one starts at 0
            if step >= 0 and step % 3 == 0:
                seen[i].append(lockstep.call("g", GENERALIST_STAGE, gen, (i, step)))
            seen[i].append(lockstep.call("s", SPECIALIST_STAGE, spec, i * 100 + step))

    assert _threads(3, lockstep, body) == []
    for i in range(3):
        assert [v for v in seen[i] if not isinstance(v, tuple)] == [(i * 100 + s) * 10 for s in range(-i, 12)]
        assert [v[1] for v in seen[i] if isinstance(v, tuple)] == [(i, s) for s in range(0, 12, 3)]
    gen_batches = [size for stage, size in lockstep.batches if stage == GENERALIST_STAGE]
    # 12 calls in 5 batches, three of them full: once aligned, the sessions ask together (the first and last
    # batches are the sessions' different starts and ends); one at a time it would be 12 batches
    assert sum(gen_batches) == 12 and len(gen_batches) <= 5 and gen_batches.count(3) >= 3
    assert sum(size for stage, size in lockstep.batches if stage == SPECIALIST_STAGE) == 12 + 13 + 14


def test_sessions_of_other_lengths_and_a_failing_batch():
    """A session that ends early leaves the others running; an error in a batch reaches each of its callers and
    the next batch runs again."""
    lockstep = Lockstep()
    calls = {"n": 0}

    def spec(requests):
        calls["n"] += 1
        if calls["n"] == 2:
            raise ValueError("model exploded")
        return [r + 1 for r in requests]

    out: dict[int, list] = {0: [], 1: [], 2: []}

    def body(i: int) -> None:
        for step in range(2 + i * 2):  # 2, 4 and 6 steps
            try:
                out[i].append(lockstep.call("s", SPECIALIST_STAGE, spec, step))
            except ValueError as exc:
                out[i].append(str(exc))

    assert _threads(3, lockstep, body) == []
    assert [size for _, size in lockstep.batches] == [3, 3, 2, 2, 1, 1]
    for i in range(3):
        assert out[i][1] == "model exploded"
        assert out[i][0] == 1 and out[i][2:] == list(range(3, 2 + i * 2 + 1))


def test_a_session_that_dies_outside_a_call_does_not_hold_the_others():
    lockstep = Lockstep()

    def body(i: int) -> None:
        for step in range(4):
            if i == 1 and step == 2:
                raise RuntimeError("simulator crashed")
            lockstep.call("s", SPECIALIST_STAGE, lambda rs: rs, step)

    errors = _threads(3, lockstep, body)
    assert [str(e) for e in errors] == ["simulator crashed"]
    assert [size for _, size in lockstep.batches] == [3, 3, 2, 2]


def test_a_batched_runner_returning_too_few_results_is_named():
    lockstep = Lockstep()
    errors = _threads(2, lockstep, lambda i: lockstep.call("s", 1, lambda rs: rs[:1], i))
    assert len(errors) == 2 and all("returned 1 results for 2 calls" in str(e) for e in errors)


def test_generalist_outputs_concatenate_with_padding_and_split_back():
    def out(nt: int, value: float) -> GeneralistOutput:
        return GeneralistOutput(torch.full((1, 4, 2), value), torch.full((1, nt, 3), value),
                                torch.full((1, 2, 3), value), torch.ones(1, nt, dtype=torch.bool),
                                torch.ones(1, 2, dtype=torch.bool))

    both = GeneralistOutput.concat([out(2, 1.0), out(5, 2.0)])
    assert both.task_latents.shape == (2, 5, 3) and both.actions.shape == (2, 4, 2)
    assert both.task_mask.tolist() == [[True, True, False, False, False], [True] * 5]
    assert torch.equal(both.task_latents[0, 2:], torch.zeros(3, 3))  # padding, masked
    first = both.row(0)
    assert first.task_latents.shape == (1, 5, 3) and float(first.actions.mean()) == 1.0


class _Runner:
    """A specialist runner with the batched methods: output = mean of the observation + noise."""

    k_s, action_dim = 2, 1
    noise_shape = (1, 2, 1)

    def __init__(self):
        self.model = object()
        self.batches: list[int] = []

    def prepare(self, observation, instruction, generalist, tau):
        return float(np.mean(observation["x"]))

    def predict_prepared(self, prepared, noise):
        self.batches.append(len(prepared))
        return [np.full((2, 1), p) + n[0].numpy() for p, n in zip(prepared, noise, strict=True)]


def test_specialist_proxy_noise_is_per_session_and_seeded():
    """The same session seed gives the same noise whatever shares its batches; another seed, other noise."""
    runner = _Runner()

    def actions(seeds: list[int]) -> list[np.ndarray]:
        lockstep = Lockstep()
        proxies = [lockstep.wrapper(s)(runner) for s in seeds]
        got: dict[int, np.ndarray] = {}

        def body(i: int) -> None:
            got[i] = proxies[i].predict({"x": np.zeros(3)}, "go", None, 0)

        assert _threads(len(seeds), lockstep, body) == []
        return [got[i] for i in range(len(seeds))]

    alone = actions([7])[0]
    together = actions([3, 7, 9])
    assert np.array_equal(together[1], alone) and not np.array_equal(together[0], alone)
    assert runner.batches == [1, 3]
    plain = object()
    assert Lockstep().wrapper(0)(plain) is plain  # a runner without batched methods is left as it is
