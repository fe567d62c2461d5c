"""model.conditioning and guidance.target: ways for the generalist's outputs to help or stay out of the way.

Each option is checked by what it must make the loss or the sample (in)dependent of, with the paper's form
(every option off) as the control that does depend on it.
"""

import dataclasses

import pytest
import torch
from specialist_helpers import fake_batch, fake_generalist, randomized, register_fake_sensor, tiny_config

from robodual_core.config import load_config, to_dict
from robodual_core.errors import RobodualError
from robodual_specialist.config import ConditioningConfig, GuidanceConfig, SpecialistConfig
from robodual_specialist.model import DiTSpecialist


@pytest.fixture(autouse=True)
def _fake_sensor():
    register_fake_sensor()


def model_with(guidance=None, **conditioning):
    cfg = tiny_config(conditioning=ConditioningConfig(**conditioning),
                      guidance=guidance or GuidanceConfig(null_tokens=2))
    return randomized(DiTSpecialist(cfg))


def fixed_loss(model, batch, gen, drop=False, train=False):
    """The loss with the noise, timesteps and guidance drop fixed."""
    g = torch.Generator().manual_seed(3)
    b = dict(batch, noise=torch.randn(batch["action"].shape, generator=g), timesteps=torch.tensor([20, 50, 80]),
             drop=torch.full((3,), drop))
    model.train(train)
    torch.manual_seed(0)
    return model.loss(b, gen)[0]


def other_latents(gen, seed=9):
    other = fake_generalist(3, seed=seed)
    return dataclasses.replace(gen, task_latents=other.task_latents, action_latents=other.action_latents)


def test_latent_dropout_one_makes_the_loss_blind_to_latents():
    batch, gen = fake_batch(), fake_generalist(3)
    paper = model_with()
    assert abs(fixed_loss(paper, batch, gen) - fixed_loss(paper, batch, other_latents(gen))) > 1e-6
    dropped = model_with(latent_dropout=1.0)
    torch.testing.assert_close(fixed_loss(dropped, batch, gen), fixed_loss(dropped, batch, other_latents(gen)))
    # the actions still count
    moved = dataclasses.replace(gen, actions=-gen.actions)
    assert abs(fixed_loss(dropped, batch, gen) - fixed_loss(dropped, batch, moved)) > 1e-6


def test_action_dropout_one_makes_the_loss_blind_to_actions():
    batch, gen = fake_batch(), fake_generalist(3)
    moved = dataclasses.replace(gen, actions=-gen.actions)
    paper = model_with()
    assert abs(fixed_loss(paper, batch, gen) - fixed_loss(paper, batch, moved)) > 1e-6
    dropped = model_with(action_dropout=1.0)
    torch.testing.assert_close(fixed_loss(dropped, batch, gen), fixed_loss(dropped, batch, moved))
    assert abs(fixed_loss(dropped, batch, gen) - fixed_loss(dropped, batch, other_latents(gen))) > 1e-6


def test_latent_norm_ignores_the_latents_scale_and_offset():
    batch, gen = fake_batch(), fake_generalist(3)
    rescaled = dataclasses.replace(gen, task_latents=gen.task_latents * 7 + 2,
                                   action_latents=gen.action_latents * 7 + 2)
    paper = model_with()
    assert abs(fixed_loss(paper, batch, gen) - fixed_loss(paper, batch, rescaled)) > 1e-6
    normed = model_with(latent_norm=True)
    torch.testing.assert_close(fixed_loss(normed, batch, gen), fixed_loss(normed, batch, rescaled),
                               atol=1e-5, rtol=1e-5)


def test_latent_bottleneck_limits_the_projection_rank_and_round_trips():
    model = model_with(latent_bottleneck=2)
    proj = model.latent_proj
    weight = proj[1].weight @ proj[0].weight  # [hidden, H]
    assert torch.linalg.matrix_rank(weight) <= 2
    rebuilt = DiTSpecialist.from_config_dict(model.robodual_config())
    assert rebuilt.state_dict().keys() == model.state_dict().keys()
    assert rebuilt.cfg.conditioning.latent_bottleneck == 2


def test_latent_noise_perturbs_training_only():
    batch, gen = fake_batch(), fake_generalist(3)
    noisy = model_with(latent_noise=0.5)
    clean = model_with()
    # evaluation (validation loss, sampling): no noise, the same as without the option
    torch.testing.assert_close(fixed_loss(noisy, batch, gen), fixed_loss(clean, batch, gen))
    train_noisy = fixed_loss(noisy, batch, gen, train=True)
    train_clean = fixed_loss(clean, batch, gen, train=True)
    assert abs(train_noisy - train_clean) > 1e-6


def test_options_off_keep_the_papers_loss_and_random_stream():
    batch, gen = fake_batch(), fake_generalist(3)
    torch.manual_seed(4)
    a = model_with().loss(dict(batch), gen)[0]
    after_a = torch.rand(1)
    torch.manual_seed(4)
    b = model_with(latent_dropout=0.0, action_dropout=0.0, latent_noise=0.0).loss(dict(batch), gen)[0]
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(torch.rand(1), after_a)  # no extra draws when the options are off


def test_guidance_target_generalist_never_drops_proprio():
    batch, gen = fake_batch(), fake_generalist(3)
    drop = torch.ones(3, dtype=torch.bool)
    paper = model_with()
    torch.testing.assert_close(paper.proprio_embedding(batch["proprio"], drop), paper.null_proprio.expand(3, -1))
    gen_only = model_with(guidance=GuidanceConfig(null_tokens=2, target="generalist"))
    torch.testing.assert_close(gen_only.proprio_embedding(batch["proprio"], drop),
                               gen_only.proprio_embedding(batch["proprio"], ~drop))
    # its unconditional pass drops the generalist's actions too (the paper's keeps them by default)
    null = gen_only.null_action.expand(3, 4, -1)
    torch.testing.assert_close(gen_only.generalist_action_input(gen, batch["tau"], 3, drop), null)
    assert not torch.equal(paper.generalist_action_input(gen, batch["tau"], 3, drop), null)


def test_guidance_target_generalist_unconditional_pass_sees_proprio_not_the_generalist():
    batch, gen = fake_batch(), fake_generalist(3)
    drop = torch.ones(3, dtype=torch.bool)
    model = model_with(guidance=GuidanceConfig(null_tokens=2, target="generalist"))

    def uncond(b, g):
        tok, mask = model.condition_tokens(model.encode_observation(b), g, drop)
        return model.dit(b["action"], model.generalist_action_input(g, b["tau"], 3, drop), torch.tensor([10] * 3),
                         model.proprio_embedding(b["proprio"], drop), model.dit.precompute(tok, mask))

    ref = uncond(batch, gen)
    other = dataclasses.replace(other_latents(gen), actions=-gen.actions)
    torch.testing.assert_close(uncond(batch, other), ref)  # blind to every generalist output
    assert (uncond(dict(batch, proprio=batch["proprio"] + 1.0), gen) - ref).abs().max() > 1e-4  # not to proprio


def test_static_step_matches_sample_with_the_new_options():
    from robodual_specialist.model import SamplingPath

    batch, gen = fake_batch(), fake_generalist(3)
    model = model_with(guidance=GuidanceConfig(null_tokens=2, target="generalist"), latent_norm=True,
                       latent_bottleneck=3)
    noise = torch.randn(batch["action"].shape, generator=torch.Generator().manual_seed(5))
    model.sampling = SamplingPath()
    ref = model.sample(batch, gen, noise=noise)
    model.sampling = SamplingPath(cache_kv=False, batch_cfg=False, cache_adapters=False)
    torch.testing.assert_close(model.sample(batch, gen, noise=noise), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.hostile
@pytest.mark.parametrize("override", ["model.conditioning.latent_dropout=1.5", "model.conditioning.latent_noise=-1",
                                      "model.conditioning.latent_bottleneck=-2", "model.guidance.target=proprio",
                                      "model.conditioning.latent_dropuot=0.1"])
def test_bad_conditioning_values_are_refused_naming_the_key(override):
    with pytest.raises(RobodualError) as err:
        load_config(SpecialistConfig, base=to_dict(tiny_config()), overrides=[override])
    assert override.split("=")[0].rsplit(".", 1)[-1] in str(err.value)


def test_a_specialist_saved_before_generalist_inputs_existed_keeps_the_papers_sources():
    """The default became "actions" (issue 30); a saved config without the key was trained on both outputs and
    must rebuild that way, while a saved choice and the default for new models stay as they are."""
    model = model_with()
    saved = model.robodual_config()
    del saved["specialist"]["generalist_inputs"]
    assert DiTSpecialist.from_config_dict(saved).cfg.generalist_inputs == "both"
    for inputs in ("actions", "latents", "both"):
        saved["specialist"]["generalist_inputs"] = inputs
        assert DiTSpecialist.from_config_dict(saved).cfg.generalist_inputs == inputs
    assert SpecialistConfig().generalist_inputs == "actions"
