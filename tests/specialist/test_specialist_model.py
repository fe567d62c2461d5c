"""The DiT specialist: masks, guidance, caching, shifted window, parameter budget."""

import dataclasses

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
from torch.func import functional_call

from robodual_specialist.config import SensorConfig, SpecialistConfig
from robodual_specialist.model import DiTSpecialist, count_trainable

CONDITIONERS = ["cross_attention", "film", "in_context"]


@pytest.fixture(autouse=True)
def _fake_sensor():
    register_fake_sensor()


def dit_inputs(model, B=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    cfg = model.cfg
    x = torch.randn(B, cfg.k_s, cfg.action_dim, generator=g)
    gen_in = torch.randn(B, cfg.k_s, cfg.action_dim, generator=g)
    t = torch.tensor([37] * B)
    c = torch.randn(B, cfg.hidden, generator=g)
    cond = torch.randn(B, 6, cfg.hidden, generator=g)
    mask = torch.ones(B, 6, dtype=torch.bool)
    mask[:, -2:] = False
    return x, gen_in, t, c, cond, mask


@pytest.mark.parametrize("conditioner", CONDITIONERS)
def test_causal_mask_hides_future_tokens(conditioner):
    model = randomized(DiTSpecialist(tiny_config(conditioner=conditioner, causal=True)))
    x, gen_in, t, c, cond, mask = dit_inputs(model)
    pre = model.dit.precompute(cond, mask)
    base = model.dit(x, gen_in, t, c, pre)
    x2, gen2 = x.clone(), gen_in.clone()
    x2[:, 2] += 3.0
    gen2[:, 3] -= 2.0
    out = model.dit(x2, gen2, t, c, pre)
    torch.testing.assert_close(out[:, :2], base[:, :2])  # earlier positions do not see the change
    assert (out[:, 2:] - base[:, 2:]).abs().max() > 1e-3


@pytest.mark.parametrize("conditioner", CONDITIONERS)
def test_bidirectional_sees_future_tokens(conditioner):
    model = randomized(DiTSpecialist(tiny_config(conditioner=conditioner, causal=False)))
    x, gen_in, t, c, cond, mask = dit_inputs(model)
    pre = model.dit.precompute(cond, mask)
    base = model.dit(x, gen_in, t, c, pre)
    x2 = x.clone()
    x2[:, 3] += 3.0
    assert (model.dit(x2, gen_in, t, c, pre)[:, 0] - base[:, 0]).abs().max() > 1e-3


def test_padding_tokens_are_ignored():
    model = randomized(DiTSpecialist(tiny_config()))
    x, gen_in, t, c, cond, mask = dit_inputs(model)
    base = model.dit(x, gen_in, t, c, model.dit.precompute(cond, mask))
    cond2 = cond.clone()
    cond2[:, -2:] = 100.0  # masked tokens
    torch.testing.assert_close(model.dit(x, gen_in, t, c, model.dit.precompute(cond2, mask)), base)


def test_untrained_output_is_zero():
    model = DiTSpecialist(tiny_config()).eval()
    x, gen_in, t, c, cond, mask = dit_inputs(model)
    out = model.dit(x, gen_in, t, c, model.dit.precompute(cond, mask))
    assert torch.count_nonzero(out) == 0  # adaLN-Zero and a zero output layer


def _sample(model, batch, gen, **kw):
    from robodual_specialist.model import SamplingPath

    noise = torch.randn(batch["action"].shape, generator=torch.Generator().manual_seed(5))
    switches = {k: kw.pop(k) for k in ("cache_kv", "batch_cfg", "cache_adapters") if k in kw}
    model.sampling = SamplingPath(**switches)
    try:
        return model.sample(batch, gen, noise=noise, **kw)
    finally:
        model.sampling = SamplingPath()


@pytest.mark.parametrize("conditioner", CONDITIONERS)
def test_guidance_scale_one_equals_conditional(conditioner):
    model = randomized(DiTSpecialist(tiny_config(conditioner=conditioner)))
    batch, gen = fake_batch(), fake_generalist(3)
    conditional = _sample(model, batch, gen, guidance_scale=0.0)
    torch.testing.assert_close(_sample(model, batch, gen, guidance_scale=1.0), conditional, atol=1e-5, rtol=1e-5)
    guided = _sample(model, batch, gen, guidance_scale=3.0)
    assert (guided - conditional).abs().max() > 1e-3  # the unconditional pass really differs


def test_guidance_drops_generalist_tokens_and_proprio():
    model = randomized(DiTSpecialist(tiny_config()))
    batch, gen = fake_batch(), fake_generalist(3)
    obs = model.encode_observation(batch)
    drop = torch.ones(3, dtype=torch.bool)
    tok, mask = model.condition_tokens(obs, gen, drop)
    nt, na, nn = gen.task_latents.shape[1], gen.action_latents.shape[1], model.null_tokens.shape[0]
    assert not mask[:, : nt + na].any()  # every generalist token masked, not only a pooled vector
    assert mask[:, nt + na: nt + na + nn].all() and mask[:, nt + na + nn:].all()  # null + sensor tokens
    torch.testing.assert_close(model.proprio_embedding(batch["proprio"], drop),
                               model.null_proprio.expand(3, -1))
    # the unconditional output does not depend on the generalist latents or on proprio
    other = fake_generalist(3, seed=9)
    other.actions = gen.actions
    batch2 = dict(batch, proprio=batch["proprio"] + 1.0)
    for b, g in ((batch, gen), (batch2, other)):
        tok, mask = model.condition_tokens(model.encode_observation(b), g, drop)
        gen_in = model.generalist_action_input(g, b["tau"], 3, drop)
        out = model.dit(b["action"], gen_in, torch.tensor([10] * 3), model.proprio_embedding(b["proprio"], drop),
                        model.dit.precompute(tok, mask))
        if b is batch:
            ref = out
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("conditioner", CONDITIONERS)
def test_kv_cache_and_cfg_batching_do_not_change_samples(conditioner):
    # in float64, so that the comparison can be tight: in float32 the paths differ by rounding (batched
    # vs per-step matmuls), which 5 denoising steps through randomized weights amplify to ~3e-5
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model = randomized(DiTSpecialist(tiny_config(conditioner=conditioner)))
        batch, gen = fake_batch(), fake_generalist(3)
        assert batch["proprio"].dtype == torch.float64 and gen.task_latents.dtype == torch.float64
        ref = _sample(model, batch, gen)
        tol = {"atol": 1e-10, "rtol": 1e-10}
        torch.testing.assert_close(_sample(model, batch, gen, cache_kv=False), ref, **tol)
        torch.testing.assert_close(_sample(model, batch, gen, batch_cfg=False), ref, **tol)
        everything_off = _sample(model, batch, gen, cache_kv=False, batch_cfg=False, cache_adapters=False)
        torch.testing.assert_close(everything_off, ref, **tol)
    finally:
        torch.set_default_dtype(previous)


def test_kv_precomputed_once_per_control_step(monkeypatch):
    model = randomized(DiTSpecialist(tiny_config()))
    calls = {"precompute": 0, "encode": 0, "project": 0}

    def counting(obj, attr, key):
        fn = getattr(obj, attr)

        def wrapped(*a, **k):
            calls[key] += 1
            return fn(*a, **k)

        monkeypatch.setattr(obj, attr, wrapped)

    counting(model.dit, "precompute", "precompute")
    counting(model.dit, "precompute_pair", "precompute")
    counting(model, "encode_observation", "encode")
    counting(model.latent_proj, "forward", "project")
    calls["ada"] = 0
    counting(model.dit.blocks[0].ada, "forward", "ada")
    model.sample(fake_batch(), fake_generalist(3), steps=5)
    # encoders once, conditioner state once, generalist projection once per latent kind (task, action),
    # adaLN modulations of all 5 steps in one call per layer
    assert calls == {"precompute": 1, "encode": 1, "project": 2, "ada": 1}


def test_shifted_window_by_value():
    model = DiTSpecialist(tiny_config(k_s=6, k_g=4))
    with torch.no_grad():
        model.null_action.copy_(torch.tensor([9.0, 9.0, 9.0, 9.0]))
    gen = fake_generalist(3, k_g=4)
    tau = torch.tensor([0, 2, 3])
    out = model.generalist_action_input(gen, tau, 3)
    a, null = gen.actions, model.null_action
    # tau 0: generalist actions 0..3 at tokens 0..3, nothing for tokens 4, 5 (k_s > k_g)
    torch.testing.assert_close(out[0, :4], a[0])
    torch.testing.assert_close(out[0, 4:], null.expand(2, -1))
    # tau 2: the chunk is 2 steps old, token i (step t + i) pairs with generalist action i + 2
    torch.testing.assert_close(out[1, :2], a[1, 2:])
    torch.testing.assert_close(out[1, 2:], null.expand(4, -1))
    torch.testing.assert_close(out[2, :1], a[2, 3:])
    torch.testing.assert_close(out[2, 1:], null.expand(5, -1))
    # specialist-only: every token gets the null action
    torch.testing.assert_close(model.generalist_action_input(None, tau, 3), null.expand(3, 6, -1))


def test_tau_changes_the_prediction():
    model = randomized(DiTSpecialist(tiny_config()))
    gen = fake_generalist(3)
    a = _sample(model, fake_batch(tau=[0, 0, 0]), gen)
    b = _sample(model, fake_batch(tau=[0, 2, 0]), gen)
    torch.testing.assert_close(a[[0, 2]], b[[0, 2]])
    assert (a[1] - b[1]).abs().max() > 1e-4


def test_specialist_only_model_samples():
    model = randomized(DiTSpecialist(tiny_config(generalist_dim=0)))
    out = model.sample(fake_batch(), None)
    assert out.shape == (3, 4, 4) and torch.isfinite(out).all()


def test_paper_settings_parameter_count():
    """Table 5 settings: DiT 6x256, 8 heads, MLP 4; static RGB (frozen DINO) + one extra sensor (depth)."""
    def build(sensors):
        with torch.device("meta"):
            cfg = SpecialistConfig(generalist_dim=4096, sensors=[SensorConfig(n, o) for n, o in sensors])
            return DiTSpecialist(cfg, load_weights=False)

    dit_only = build([])
    assert 8.5e6 < count_trainable(dit_only) < 10.5e6  # DiT + generalist latent projection
    two = build([("rgb_static", {"history": 1}), ("depth_static", {})])
    assert 16e6 <= count_trainable(two) <= 20e6, count_trainable(two)
    assert sum(p.numel() for p in two.parameters() if not p.requires_grad) > 20e6  # frozen DINO ViT-S


def test_inference_autocast_settings():
    """bf16 encoders (auto where the CPU has native bf16, or on) keep samples close to fp32's; the setting is
    checked when the model is built; training and autograd never autocast."""
    from robodual_core.errors import RobodualError
    from robodual_specialist.model import autocast_enabled, native_bf16

    assert autocast_enabled("auto", "cpu") == native_bf16("cpu")
    assert autocast_enabled("auto", "cuda") is False and autocast_enabled("on", "cuda") is True  # measured slower
    assert autocast_enabled(False, "cpu") is False and autocast_enabled("on", "cpu") is True  # old checkpoints
    with pytest.raises(RobodualError, match="model.inference_autocast"):
        DiTSpecialist(tiny_config(inference_autocast="sometimes"))
    model = randomized(DiTSpecialist(tiny_config(inference_autocast="off"))).eval()
    batch, gen = fake_batch(), fake_generalist(3)
    with torch.no_grad():
        ref = _sample(model, batch, gen)
        model.cfg.inference_autocast = "on"
        bf16 = _sample(model, batch, gen)
        obs = model.encode_observation(batch)
    assert not torch.equal(bf16, ref)  # the encoders really ran in bf16
    torch.testing.assert_close(bf16, ref, atol=2e-2, rtol=0)
    assert obs.dtype == torch.float32


def test_bf16_weight_copies_match_autocast_and_follow_the_weights():
    """Inference autocast runs the encoders on kept bf16 weight copies: the same tokens as autocast casting the
    fp32 weights itself, and new copies as soon as the weights change (loaded or modified in place)."""
    model = randomized(DiTSpecialist(tiny_config(inference_autocast="on"))).eval()
    batch = fake_batch()
    with torch.no_grad():
        obs = model.encode_observation(batch)
        name, enc = next(iter(model.sensors.items()))
        x = model._sensor_input(enc, batch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plain = enc(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            kept = functional_call(enc, model._bf16_weights(name, enc), (x,), strict=False)
        assert torch.equal(kept, plain)
        other = randomized(DiTSpecialist(tiny_config(inference_autocast="on")), seed=7).eval()
        model.load_state_dict(other.state_dict())
        assert torch.equal(model.encode_observation(batch), other.encode_observation(batch))
        assert not torch.equal(model.encode_observation(batch), obs)
        before = model.encode_observation(batch)
        next(p for n, p in enc.named_parameters() if n.endswith("weight") and p.ndim == 2).mul_(2.0)
        assert not torch.equal(model.encode_observation(batch), before)


def test_rotary_matches_diffusers_reference():
    from diffusers.models.embeddings import apply_rotary_emb, get_1d_rotary_pos_embed

    from robodual_specialist.layers import apply_rotary, rotary

    x = torch.randn(2, 5, 3, 4, 16)  # [B, T, (q/k/v), heads, head_dim]
    ours = apply_rotary(x, rotary(5, 16, torch.device("cpu")))
    as_bhtd = x.permute(0, 2, 3, 1, 4).reshape(2, 12, 5, 16)
    ref = apply_rotary_emb(as_bhtd, get_1d_rotary_pos_embed(16, 5, use_real=True))
    torch.testing.assert_close(ours.permute(0, 2, 3, 1, 4).reshape(2, 12, 5, 16), ref)
    assert not torch.allclose(ours[:, 1:], x[:, 1:])  # positions > 0 really rotate


def test_block_is_adaln_zero_with_rotary_self_attention():
    """The fused ops (addcmul modulation and gates, joint q/k rotary) against the block written out."""
    import torch.nn.functional as F
    from diffusers.models.embeddings import apply_rotary_emb, get_1d_rotary_pos_embed

    from robodual_specialist.layers import causal_mask, rotary

    model = randomized(DiTSpecialist(tiny_config()))
    block, dim, heads = model.dit.blocks[0], model.cfg.hidden, model.cfg.heads
    B, T, N = 2, model.cfg.k_s, 6
    x, c, cond = torch.randn(B, T, dim), torch.randn(B, dim), torch.randn(B, N, dim)
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[0, -2:] = False
    pre = block.cond.precompute(cond, mask)
    with torch.no_grad():
        out = block(x, c, pre, rotary(T, dim // heads, x.device), causal_mask(T, x.device))
        sh1, sc1, g1, sh2, sc2, g2 = (m.unsqueeze(1) for m in block.ada(c).chunk(6, dim=-1))
        h = F.layer_norm(x, (dim,), eps=1e-6) * (1 + sc1) + sh1
        q, k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in block.attn.qkv(h).chunk(3, dim=-1))
        rope = get_1d_rotary_pos_embed(dim // heads, T, use_real=True)
        q, k = apply_rotary_emb(q, rope), apply_rotary_emb(k, rope)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(T, T, dtype=torch.bool).tril())
        x1 = x + g1 * block.attn.proj(a.transpose(1, 2).flatten(2))
        x2 = x1 + block.cond(x1, pre)
        ref = x2 + g2 * block.mlp(F.layer_norm(x2, (dim,), eps=1e-6) * (1 + sc2) + sh2)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_sensor_tokens_take_the_specialist_width_unless_configured():
    small = {"image_size": 32, "width": 32, "depth": 1, "heads": 2, "head_dim": 16}
    cfg = tiny_config(sensors=[SensorConfig("depth_static", dict(small)),
                               SensorConfig("depth_gripper", {**small, "out_dim": 24})])
    model = DiTSpecialist(cfg)
    assert model.sensors["depth_static"].out_dim == cfg.hidden  # no width given: the specialist's
    assert isinstance(model.sensor_proj["depth_static"], torch.nn.Identity)
    assert model.sensors["depth_gripper"].out_dim == 24  # configured: kept, projected
    assert isinstance(model.sensor_proj["depth_gripper"], torch.nn.Linear)
    # the resolved config records the width, so a checkpoint rebuilds the same encoder
    resolved = {s.name: s.options for s in model.resolved_config().sensors}
    assert resolved["depth_static"]["out_dim"] == cfg.hidden and resolved["depth_gripper"]["out_dim"] == 24
    rebuilt = DiTSpecialist(model.resolved_config())
    rebuilt.load_state_dict(model.state_dict())


@pytest.mark.parametrize("autocast", ["off", "on"])
def test_sensors_sharing_a_frozen_backbone_encode_in_one_batch(autocast):
    small = {"backbone": "vit", "trainable": False, "image_size": 32, "width": 32, "depth": 1, "heads": 2,
             "head_dim": 16}
    sensors = [SensorConfig("rgb_static", {**small, "history": 1}), SensorConfig("rgb_gripper", dict(small))]
    model = DiTSpecialist(tiny_config(sensors=sensors, inference_autocast=autocast)).eval()
    static, gripper = model.sensors["rgb_static"], model.sensors["rgb_gripper"]
    assert model.shared_backbone_groups() == []  # independently initialised: different weights
    gripper.backbone.load_state_dict(static.backbone.state_dict())  # as both loading the same DINO
    assert model.shared_backbone_groups() == [["rgb_static", "rgb_gripper"]]
    calls = []
    for enc in (static, gripper):
        enc.backbone.register_forward_pre_hook(lambda mod, args: calls.append(args[0].shape[0]))
    frames = [torch.rand(2, 3, 32, 32) for _ in range(3)]

    def batch(t):
        return {"obs": {"rgb_static": torch.stack([frames[t], frames[t + 1]], dim=1), "rgb_gripper": frames[t + 1]}}

    reference = dataclasses.replace(model.cfg, batch_shared_backbones=False)
    separate = DiTSpecialist(reference).eval()
    separate.load_state_dict(model.state_dict())
    with torch.no_grad():
        for t in range(2):
            calls.clear()
            tokens = model.encode_observation(batch(t))
            # step 0: 2 static frames + 1 gripper frame in one call; step 1: the history frame is cached
            assert calls == ([6] if t == 0 else [4])
            torch.testing.assert_close(tokens, separate.encode_observation(batch(t)), atol=1e-5, rtol=1e-5)
        with torch.no_grad():
            next(gripper.backbone.parameters()).add_(0.1)  # weights differ again: no longer shared
        assert model.shared_backbone_groups() == []


def test_runner_history_is_one_control_step_back_for_sensors_sharing_a_camera():
    """Two sensors on one camera key each see (previous, current) frames; a step the specialist skips
    (``observe``) still moves the history, so it stays one control step back, as in training windows."""
    from robodual_core.errors import RobodualError
    from robodual_specialist.runner import DiTRunner

    sensors = {"a": FakeImageSensor(history=1, name="a"), "b": FakeImageSensor(history=1, name="b")}
    cfg = tiny_config(sensors=[SensorConfig("a"), SensorConfig("b")], generalist_dim=0, proprio_dim=0)
    model = DiTSpecialist(cfg, sensors=sensors)
    seen: dict[str, list[float]] = {}
    for name, enc in sensors.items():
        forward = enc.forward

        def record(x, name=name, forward=forward):
            seen[name] = [round(float(v) * 255) for v in x[0, :, 0, 0, 0]]
            return forward(x)

        enc.forward = record
    runner = DiTRunner(model)

    def obs(v):
        return {"rgb_static": np.full((8, 8, 3), v, np.uint8)}

    runner.predict(obs(10), "go", None, 0)
    assert seen == {"a": [10, 10], "b": [10, 10]}  # the first step repeats its frame
    runner.predict(obs(20), "go", None, 0)
    assert seen == {"a": [10, 20], "b": [10, 20]}
    runner.observe(obs(30))  # a step the specialist skipped
    runner.predict(obs(40), "go", None, 0)
    assert seen == {"a": [30, 40], "b": [30, 40]}
    with pytest.raises(RobodualError, match="'proprio' has 5 values; this specialist was trained on 3"):
        DiTRunner(DiTSpecialist(tiny_config(sensors=[], generalist_dim=0), sensors={})).predict(
            {"proprio": np.zeros(5)}, "go", None, 0)


def test_rotary_cache_serves_any_dtype():
    """The cached rotary tables, built first under float64, still give float32 models float32 (test order)."""
    from robodual_specialist.layers import apply_rotary, rotary

    rotary.cache_clear()
    torch.set_default_dtype(torch.float64)
    try:
        rope = rotary(4, 8, torch.device("cpu"))
    finally:
        torch.set_default_dtype(torch.float32)
        rotary.cache_clear()
    assert apply_rotary(torch.randn(2, 4, 1, 1, 8), rope).dtype == torch.float32


@pytest.mark.parametrize("prediction_type", ["sample", "epsilon"])
@pytest.mark.parametrize("spacing", ["trailing", "leading", "linspace"])
@pytest.mark.parametrize("clip", [True, False])
def test_ddim_chain_equals_the_diffusers_scheduler_step(prediction_type, spacing, clip):
    """The host-sync-free DDIM coefficients (issue 20) give diffusers' DDIMScheduler.step, every step."""
    from diffusers import DDIMScheduler

    from robodual_specialist.ddim import DDIMChain

    sched = DDIMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type,
                          clip_sample=clip, timestep_spacing=spacing)
    chain = DDIMChain.from_scheduler(sched, 5)
    sched.set_timesteps(5)
    assert torch.equal(chain.timesteps, sched.timesteps)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 8, 7, generator=g)
    y = x.clone()
    for i, t in enumerate(sched.timesteps):
        out = torch.randn(3, 8, 7, generator=g) * 1.5
        x = sched.step(out, t, x).prev_sample
        y = chain.step(i, out, y)
        torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("conditioner", CONDITIONERS)
def test_generalist_inputs_select_the_conditioning_sources(conditioner):
    """``generalist_inputs`` (the conditioning-source ablation): "latents" ignores the generalist's actions,
    "actions" ignores its latents, "both" reads both; the static control step follows the same switch."""
    from robodual_specialist.graphed import StepPool

    batch, gen = fake_batch(), fake_generalist(3)
    other_latents = fake_generalist(3, seed=9)
    other_latents.actions = gen.actions
    other_actions = fake_generalist(3)
    other_actions.actions = -gen.actions
    for inputs, reads_latents, reads_actions in (("both", True, True), ("latents", True, False),
                                                 ("actions", False, True)):
        model = randomized(DiTSpecialist(tiny_config(conditioner=conditioner, generalist_inputs=inputs)))
        ref = _sample(model, batch, gen, guidance_scale=1.0)
        for other, reads in ((other_latents, reads_latents), (other_actions, reads_actions)):
            changed = (_sample(model, batch, other, guidance_scale=1.0) - ref).abs().max()
            assert (changed > 1e-4) == reads, (inputs, reads, float(changed))
        step = StepPool().get(model, batch, gen, torch.device("cpu"))
        noise = torch.randn(batch["action"].shape, generator=torch.Generator().manual_seed(5))
        model.sampling = type(model.sampling)()
        torch.testing.assert_close(step(batch, gen, noise=noise), model.sample(batch, gen, noise=noise),
                                   atol=1e-4, rtol=1e-3)


def test_runner_batches_sessions_like_single_predictions():
    """Several sessions' steps through one predict_prepared (lockstep evaluation) give each session what its own
    prediction with the same noise gives, with generalist outputs of other token lengths (padded, masked) and
    each session's own history frames."""
    from robodual_core.errors import RobodualError
    from robodual_specialist.runner import DiTRunner

    cfg = tiny_config(sensors=[SensorConfig("fake_rgb", {"out_dim": 32, "tokens": 2, "history": 1})])
    model = randomized(DiTSpecialist(cfg, sensors={"fake_rgb": FakeImageSensor(out_dim=32, tokens=2, history=1)}))
    root = DiTRunner(model)
    sessions = [root.fork() for _ in range(3)]
    gens = [fake_generalist(1, nt=nt, seed=i) for i, nt in enumerate((3, 6, 4))]
    noise = [torch.randn(root.noise_shape, generator=torch.Generator().manual_seed(i)) for i in range(3)]

    def obs(i, step):
        return {"rgb_static": np.full((16, 16, 3), 20 * i + 5 * step, np.uint8),
                "proprio": np.full(3, 0.1 * i - 0.2, np.float32)}

    for step in range(2):  # the second step sees a history frame
        prepared = [s.prepare(obs(i, step), f"task {i}", gens[i], tau=i) for i, s in enumerate(sessions)]
        batched = root.predict_prepared(prepared, noise)
        for i in range(3):
            alone = root.predict_prepared([prepared[i]], [noise[i]])[0]
            np.testing.assert_allclose(batched[i], alone, atol=1e-4, rtol=1e-3)  # batched matmul rounding
        assert not np.allclose(batched[0], batched[1])
    mixed = [sessions[0].prepare(obs(0, 2), "a", gens[0], 0), sessions[1].prepare(obs(1, 2), "b", None, 0)]
    with pytest.raises(RobodualError, match="every prepared step has a generalist output or none"):
        root.predict_prepared(mixed, noise[:2])
