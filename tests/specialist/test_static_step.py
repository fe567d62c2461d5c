"""The specialist's control step on static buffers (issue 20): the logic CUDA graphs replay, checked on the CPU
against ``DiTSpecialist.sample``; the captured replay itself against eager on a CUDA device (``cuda`` mark)."""

import pytest
import torch
from specialist_helpers import fake_batch, fake_generalist, randomized, register_fake_sensor, tiny_config

from robodual_specialist.config import SensorConfig
from robodual_specialist.graphed import StaticControlStep, StepPool, pad_generalist
from robodual_specialist.model import DiTSpecialist

CONDITIONERS = ["cross_attention", "film", "in_context"]
# float32 rounding of padded vs unpadded token sets through 5 steps of randomized weights: ~3e-5; a wrong mask,
# coefficient or buffer gives differences of 1e-2 and more
TOL = {"atol": 1e-4, "rtol": 1e-3}


@pytest.fixture(autouse=True)
def _sensor():
    register_fake_sensor()


def _noise(batch, seed=5):
    return torch.randn(batch["action"].shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("conditioner", CONDITIONERS)
def test_static_step_equals_sample_and_reuses_its_buffers(conditioner):
    model = randomized(DiTSpecialist(tiny_config(conditioner=conditioner)))
    batch, gen = fake_batch(tau=[0, 1, 3]), fake_generalist(3, nt=5)
    pool = StepPool()
    step = pool.get(model, batch, gen, torch.device("cpu"))
    assert not step.graph_enabled  # the CPU runs the same step eagerly
    for seed in (5, 6):
        noise = _noise(batch, seed)
        torch.testing.assert_close(step(batch, gen, noise=noise), model.sample(batch, gen, noise=noise),
                                   **TOL)
    # another instruction length (7 task tokens) fits the same token bucket: same buffers, same answer
    gen7 = fake_generalist(3, nt=7, seed=1)
    assert pool.get(model, batch, gen7, torch.device("cpu")) is step
    noise = _noise(batch, 7)
    torch.testing.assert_close(step(batch, gen7, noise=noise), model.sample(batch, gen7, noise=noise),
                               **TOL)
    # batch size 1 is another step
    one = {k: (v[:1] if torch.is_tensor(v) else v) for k, v in batch.items()}
    one["obs"] = {k: v[:1] for k, v in batch["obs"].items()}
    assert pool.get(model, one, fake_generalist(1), torch.device("cpu")) is not step


def test_static_step_without_generalist_and_without_guidance():
    model = randomized(DiTSpecialist(tiny_config(generalist_dim=0)))
    batch = fake_batch()
    noise = _noise(batch)
    for scale in (0.0, 3.0):
        step = StaticControlStep(model, batch, None, torch.device("cpu"), guidance_scale=scale)
        torch.testing.assert_close(step(batch, None, noise=noise),
                                   model.sample(batch, None, noise=noise, guidance_scale=scale), **TOL)


def test_static_step_bf16_stays_within_bf16_tolerance():
    model = randomized(DiTSpecialist(tiny_config()))
    batch, gen = fake_batch(), fake_generalist(3)
    noise = _noise(batch)
    ref = model.sample(batch, gen, noise=noise)
    got = StaticControlStep(model, batch, gen, torch.device("cpu"), precision="bf16")(batch, gen, noise=noise)
    assert (got - ref).abs().max() < 5e-2


def test_static_step_with_history_sensor_encodes_every_frame_and_restores_the_frame_cache():
    """Real image encoders with a history frame: the step turns their host-side frame cache off while it runs
    (and restores it), and equals ``sample`` on consecutive control steps of a moving stream."""
    sensors = [SensorConfig("rgb_static", {"history": 1, "image_size": 32, "backbone": "vit", "width": 32, "depth": 1, "heads": 2,
                                            "head_dim": 16, "num_queries": 2, "resampler_heads": 2,
                                            "resampler_head_dim": 16, "trainable": False})]
    model = DiTSpecialist(tiny_config(sensors=sensors)).eval()
    g = torch.Generator().manual_seed(0)
    frames = [torch.rand(2, 3, 32, 32, generator=g) for _ in range(3)]
    gen = fake_generalist(2)
    step = None
    for t in (1, 2):
        batch = {"obs": {"rgb_static": torch.stack([frames[t - 1], frames[t]], 1)},
                 "proprio": torch.rand(2, 3, generator=g), "tau": torch.zeros(2, dtype=torch.long),
                 "action": torch.zeros(2, 4, 4)}
        step = step or StaticControlStep(model, batch, gen, torch.device("cpu"))
        noise = _noise(batch, t)
        got = step(batch, gen, noise=noise)
        assert model.sensors["rgb_static"].cfg.cache_features  # restored after the step
        torch.testing.assert_close(got, model.sample(batch, gen, noise=noise), **TOL)


def test_padding_generalist_tokens_refuses_more_than_the_bucket():
    gen = fake_generalist(1, nt=5)
    padded = pad_generalist(gen, 32, 32)
    assert padded.task_latents.shape[1] == 32 and not padded.task_mask[:, 5:].any()
    with pytest.raises(ValueError, match="do not fit"):
        pad_generalist(gen, 4, 32)


@pytest.mark.cuda
@pytest.mark.parametrize("batch_size", [1, 8])
def test_captured_step_equals_eager_on_cuda(batch_size):
    from robodual_specialist.bench import ControlLoop, paper_model
    from robodual_specialist.bench import fake_generalist as paper_generalist

    dev = torch.device("cuda")
    model = paper_model(generalist_dim=4096).to(dev).eval()
    gen = paper_generalist(batch_size, 100, 4096, 8, 7, device=dev)
    loop = ControlLoop(model, batch_size, gen)
    batch = loop.batch()
    noise = torch.randn(batch_size, 8, 7, device=dev)
    eager = model.sample(batch, gen, noise=noise)
    graphed = StaticControlStep(model, batch, gen, dev, graph=True)
    got = graphed(batch, gen, noise=noise)
    assert graphed.captures == 1 and graphed.graph_enabled
    torch.testing.assert_close(got, eager, atol=1e-3, rtol=1e-3)
    bf16 = StaticControlStep(model, batch, gen, dev, graph=True, precision="bf16")(batch, gen, noise=noise)
    assert (bf16 - eager).abs().max() < 5e-2


def test_runner_with_the_static_step_gives_the_same_actions():
    """``model.static_step: on`` (the CUDA path's logic, eager on the CPU) against ``off``, same seeds, over
    consecutive control steps with instructions of different lengths."""
    import dataclasses

    import numpy as np

    from robodual_specialist.runner import DiTRunner

    model = randomized(DiTSpecialist(tiny_config()))
    rng = np.random.default_rng(0)
    obs = [{"rgb_static": rng.integers(0, 255, (16, 16, 3), dtype=np.uint8),
            "proprio": rng.uniform(-1, 1, 3).astype(np.float32)} for _ in range(3)]
    gens = [fake_generalist(1, nt=n, seed=n) for n in (5, 9, 5)]
    results = {}
    for setting in ("off", "on"):
        model.cfg = dataclasses.replace(model.cfg, static_step=setting)
        runner = DiTRunner(model)
        assert runner.static_step_enabled() == (setting == "on")
        torch.manual_seed(0)
        results[setting] = [runner.predict(o, "pick", g, tau) for o, g, tau in zip(obs, gens, (0, 1, 2), strict=True)]
    for a, b in zip(results["off"], results["on"], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-3)
