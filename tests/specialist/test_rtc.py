"""Real-time chunking of the DiT specialist (robodual_specialist.rtc): soft inpainting at inference, prefix
conditioning in training, and the committed prefix through the runner and the runtime."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from specialist_helpers import (
    FakeImageSensor,
    fake_batch,
    fake_generalist,
    randomized,
    register_fake_sensor,
    tiny_config,
)

from robodual_core.runtime import AggregationConfig, CommittedPrefix, LatencyConfig, SpecialistOnlyPolicy
from robodual_specialist import rtc
from robodual_specialist.config import RTCConfig
from robodual_specialist.model import DiTSpecialist


@pytest.fixture(autouse=True)
def _fake_sensor():
    register_fake_sensor()


def model_with(rtc_cfg: RTCConfig, seed: int = 0) -> DiTSpecialist:
    torch.manual_seed(seed)
    model = DiTSpecialist(tiny_config(rtc=rtc_cfg), sensors={"fake_rgb": FakeImageSensor(out_dim=32, tokens=2)})
    return randomized(model, seed)


def prefix_batch(B: int = 2, delay: int = 2, n: int = 3, seed: int = 5) -> dict:
    g = torch.Generator().manual_seed(seed)
    target = torch.zeros(B, 4, 4)
    target[:, :n] = torch.rand(B, n, 4, generator=g) * 1.6 - 0.8
    weights = torch.as_tensor(rtc.prefix_weights(n, delay, 4))[None].expand(B, -1).clone()
    hard = (torch.arange(4) < delay)[None].expand(B, -1).clone()
    return {"rtc_target": target, "rtc_weights": weights, "rtc_hard": hard}


def test_prefix_weights_follow_rtc_eq5():
    w = rtc.prefix_weights(n=8, delay=2, horizon=10)
    assert w[:2].tolist() == [1.0, 1.0] and w[8:].tolist() == [0.0, 0.0]
    c = 6 / 7  # i = d: c = (n - d) / (n - d + 1)
    assert w[2] == pytest.approx(c * (math.exp(c) - 1) / (math.e - 1))
    assert all(a > b > 0 for a, b in zip(w[2:7], w[3:8], strict=True))  # decaying, positive over the overlap
    assert rtc.prefix_weights(0, 3, 4).tolist() == [0, 0, 0, 0]  # nothing planned: no guidance
    assert rtc.prefix_weights(2, 5, 4).tolist() == [1, 1, 0, 0]  # the delay is capped by what is planned


def test_inference_rtc_reproduces_the_committed_rows_and_is_off_by_default():
    batch = fake_batch(B=2)
    gen = fake_generalist(2)
    noise = torch.randn(2, 4, 4, generator=torch.Generator().manual_seed(3))
    extra = prefix_batch()
    off = model_with(RTCConfig())
    plain = off.sample(batch, gen, noise=noise)
    assert torch.equal(off.sample({**batch, **extra}, gen, noise=noise), plain)  # keys ignored while off
    on = model_with(RTCConfig(inference=True))
    guided = on.sample({**batch, **extra}, gen, noise=noise)
    assert torch.equal(on.sample(batch, gen, noise=noise), plain)  # no prefix: the same sample
    # the last DDIM step returns the blended x0: the committed rows are the prefix itself
    torch.testing.assert_close(guided[:, :2], extra["rtc_target"][:, :2], atol=1e-5, rtol=0)
    assert not torch.allclose(plain[:, :2], extra["rtc_target"][:, :2], atol=1e-2)
    # each step's x0 prediction: soft rows blended by their weight, rows past the plan left to the model
    guide = rtc.guidance_for(on, {**batch, **extra})
    x0 = torch.randn(2, 4, 4)
    blended = guide.after(x0)
    w = extra["rtc_weights"][0, 2]
    assert 0 < w < 1
    torch.testing.assert_close(blended[:, 2], x0[:, 2] + w * (extra["rtc_target"][:, 2] - x0[:, 2]))
    assert torch.equal(blended[:, 3], x0[:, 3])
    torch.testing.assert_close(blended[:, :2], extra["rtc_target"][:, :2])
    zero = model_with(RTCConfig(inference=True, strength=0.0))
    assert torch.equal(zero.sample({**batch, **extra}, gen, noise=noise), plain)


def test_training_rtc_conditions_on_a_clean_flagged_prefix_outside_the_loss():
    model = model_with(RTCConfig(training=True, max_delay=3))
    assert "rtc_flag" in dict(model.named_parameters())
    assert "rtc_flag" not in dict(model_with(RTCConfig()).named_parameters())  # old checkpoints load strictly
    batch = fake_batch(B=3)
    fixed = {"noise": torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(1)),
             "timesteps": torch.tensor([90, 50, 10]), "drop": torch.zeros(3, dtype=torch.bool)}
    actions = batch["action"]
    noisy = model.scheduler.add_noise(actions, fixed["noise"], fixed["timesteps"])
    x, bias, keep = rtc.training_prefix(model, actions, noisy, {"rtc_delay": torch.tensor([0, 2, 3])})
    assert torch.equal(x[1, :2], actions[1, :2]) and torch.equal(x[1, 2:], noisy[1, 2:])
    assert torch.equal(x[0], noisy[0]) and keep.tolist() == [[True] * 4, [False, False, True, True],
                                                             [False, False, False, True]]
    assert torch.equal(bias[1, 0], model.rtc_flag.detach()) and bias[1, 2].abs().sum() == 0
    # the prefix tokens are out of the loss: changing what the model predicts there changes nothing
    pred = torch.randn(3, 4, 4)
    moved = pred.clone()
    moved[2, :3] += 5
    assert rtc.masked_mse(pred, actions, keep) == rtc.masked_mse(moved, actions, keep)
    assert rtc.masked_mse(pred, actions, None) == torch.nn.functional.mse_loss(pred, actions)
    # delay 0 everywhere is the ordinary loss; a prefix trains the flag
    no_prefix = model_with(RTCConfig())
    no_prefix.load_state_dict({k: v for k, v in model.state_dict().items() if k != "rtc_flag"})
    base, _ = no_prefix.loss({**batch, **fixed})
    same, _ = model.loss({**batch, **fixed, "rtc_delay": torch.zeros(3, dtype=torch.long)})
    torch.testing.assert_close(same, base)
    loss, _ = model.loss({**batch, **fixed, "rtc_delay": torch.tensor([1, 2, 3])})
    loss.backward()
    assert model.rtc_flag.grad is not None and model.rtc_flag.grad.abs().sum() > 0
    drawn = [int(rtc.training_prefix(model, actions, noisy, {})[2].logical_not().sum(1).max()) for _ in range(50)]
    assert max(drawn) == 3 and min(drawn) == 0  # d ~ U{0..max_delay}


def test_training_rtc_feeds_the_hard_prefix_at_inference():
    model = model_with(RTCConfig(training=True, max_delay=2))
    batch, gen = fake_batch(B=2), fake_generalist(2)
    noise = torch.randn(2, 4, 4, generator=torch.Generator().manual_seed(3))
    extra = prefix_batch(delay=2)
    seen = []
    forward = model.dit.forward

    def record(x, *args, token_bias=None, **kw):
        seen.append((x.clone(), token_bias))
        return forward(x, *args, token_bias=token_bias, **kw)

    model.dit.forward = record
    with_prefix = model.sample({**batch, **extra}, gen, noise=noise)
    x, bias = seen[-1]
    torch.testing.assert_close(x[:2, :2], extra["rtc_target"][:, :2])  # the committed rows enter clean
    assert bias is not None and torch.equal(bias[0, 0], model.rtc_flag.detach()) and bias[0, 3].abs().sum() == 0
    seen.clear()
    without = model.sample(batch, gen, noise=noise)
    assert all(b is None for _, b in seen) and not torch.allclose(with_prefix, without)


def test_runner_takes_the_committed_prefix_through_the_runtime():
    from robodual_core.data import Normalizer

    model = model_with(RTCConfig(inference=True))
    model.normalizer = Normalizer({})
    runner = model.as_runner("cpu")
    assert runner.wants_prefix and not model_with(RTCConfig()).as_runner("cpu").wants_prefix

    def obs(t):
        return {"rgb_static": np.full((16, 16, 3), 10 * t, np.uint8), "proprio": np.full(3, 0.1 * t, np.float32)}

    prefix = CommittedPrefix(np.array([[0.5, -0.5, 0.25, 0.0], [0.4, -0.4, 0.2, 0.1]]), delay=2)
    chunk = runner.predict(obs(1), "go", None, 0, prefix=prefix)
    np.testing.assert_allclose(chunk[:2], prefix.actions, atol=1e-5)
    # a specialist-only policy at d = 2 hands it what the released chunk plans for the committed steps
    torch.manual_seed(0)
    policy = SpecialistOnlyPolicy(runner, aggregation=AggregationConfig(enabled=False, binarize_gripper=False),
                                  latency=LatencyConfig(specialist=2))
    policy.reset()
    seen = []
    predict = runner.predict

    def record(*args, prefix=None):
        out = predict(*args, prefix=prefix)
        seen.append((prefix, out))
        return out

    runner.predict = record
    actions = [policy.step(obs(t), "go") for t in range(4)]
    first, second = seen[0], seen[1]
    assert first[0].delay == 0 and len(first[0].actions) == 0
    np.testing.assert_allclose(second[0].actions, first[1][1:4], atol=1e-6)  # rows 1..3 of chunk 0 planned
    np.testing.assert_allclose(second[1][:2], first[1][1:3], atol=1e-5)  # inpainted onto the committed rows
    # the switch at step 3 continues from the rows the robot executed at steps 1 and 2
    np.testing.assert_allclose(actions[3], second[1][2], atol=1e-6)


def test_lockstep_batches_prefixed_and_unprefixed_sessions():
    from robodual_core.data import Normalizer

    model = model_with(RTCConfig(inference=True))
    model.normalizer = Normalizer({})
    root = model.as_runner("cpu")
    a, b = root.fork(), root.fork()
    gen = fake_generalist(1)
    o = {"rgb_static": np.full((16, 16, 3), 30, np.uint8), "proprio": np.zeros(3, np.float32)}
    prefix = CommittedPrefix(np.full((3, 4), 0.3), delay=1)
    noise = [torch.randn(root.noise_shape, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    prepared = [a.prepare(o, "x", gen, 0, prefix=prefix), b.prepare(o, "x", gen, 0)]
    batched = root.predict_prepared(prepared, noise)
    for i in range(2):
        np.testing.assert_allclose(batched[i], root.predict_prepared([prepared[i]], [noise[i]])[0], atol=1e-4)
    np.testing.assert_allclose(batched[0][0], 0.3, atol=1e-5)
    assert not np.allclose(batched[1][0], 0.3, atol=1e-3)


def test_bench_specialist_times_inference_rtc_beside_none():
    import warnings

    from robodual_core.data import Normalizer
    from robodual_specialist.bench import ControlLoop, time_rtc
    from robodual_specialist.bench import fake_generalist as bench_generalist
    from robodual_specialist.config import SensorConfig, SpecialistConfig

    vit = {"backbone": "vit", "image_size": 32, "width": 32, "depth": 1, "heads": 2, "head_dim": 16}
    sensors = [SensorConfig("rgb_static", {**vit, "history": 1, "trainable": False}),
               SensorConfig("depth_static", vit), SensorConfig("rgb_gripper", vit), SensorConfig("depth_gripper", vit)]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = DiTSpecialist(SpecialistConfig(hidden=32, depth=2, heads=2, generalist_dim=16, action_dim=7,
                                               proprio_dim=7, sensors=sensors)).eval()
    model.normalizer = Normalizer({})
    calls = []
    after = rtc.PrefixGuidance.after

    def counted(self, x0):
        calls.append(1)
        return after(self, x0)

    rtc.PrefixGuidance.after = counted
    try:
        row = time_rtc(model, ControlLoop(model, 1, bench_generalist(1, 24, 16, 8, 7), size=32), repeats=2)
    finally:
        rtc.PrefixGuidance.after = after
    assert row["n"] == 2 and row["control_step_ms"] > 0 and row["with_inference_rtc_ms"] > 0
    assert row["rtc_extra_ms"] == pytest.approx(row["with_inference_rtc_ms"] - row["control_step_ms"])
    assert len(calls) == 5 * 3 + 5 * (20 + 3)  # one blend per DDIM step: 3 control steps, then the work alone
    assert 0 < row["rtc_work_ms"] < row["with_inference_rtc_ms"]
    assert model.cfg.rtc.inference is False  # restored
