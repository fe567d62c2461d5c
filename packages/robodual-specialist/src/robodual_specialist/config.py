"""Typed configs of the DiT specialist (paper section 3.2, Table 5, Appendix A/B) and of its training run.

Defaults are the paper's settings. Load with ``robodual_core.config.load_config(SpecialistTrainConfig,
path, ["model.guidance.scale=2", ...])``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from robodual_core.config import Check, fits_in_memory, ranged
from robodual_core.training import TrainerConfig


@dataclass
class SensorConfig:
    """One sensor encoder, built through ``registry("sensors").get(name)(**options)``. In a config file a bare
    name is the short form of a sensor without options: ``sensors: [rgb_static, force_torque]``."""

    __config_shorthand__ = "name"

    name: str = "rgb_static"
    options: dict[str, Any] = field(default_factory=dict)


def _paper_sensors() -> list[SensorConfig]:
    # Appendix A: static and gripper RGB + depth on CALVIN; the static camera with one history frame
    return [SensorConfig("rgb_static", {"history": 1}), SensorConfig("depth_static"), SensorConfig("rgb_gripper"),
            SensorConfig("depth_gripper")]


@dataclass
class DiffusionConfig:
    """diffusers ``DDIMScheduler`` settings."""

    train_steps: int = ranged(100, ge=1)
    inference_steps: int = ranged(5, ge=1)
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "squaredcos_cap_v2"
    prediction_type: Literal["sample", "epsilon"] = "sample"
    clip_sample: bool = True
    # "trailing" starts the 5-step chain at t=99 (pure noise in, as sampled); "leading" would start at t=80
    timestep_spacing: Literal["trailing", "leading", "linspace"] = "trailing"

    __config_checks__ = (Check("inference_steps", "at most {prefix}train_steps ({train_steps})",
                               lambda c: c.inference_steps <= c.train_steps),)


@dataclass
class GuidanceConfig:
    """Classifier-free guidance on generalist latents and proprio (Appendix A/B)."""

    drop_prob: float = ranged(0.1, ge=0, le=1)
    scale: float = ranged(3.0, ge=0)  # 1: no guidance
    null_tokens: int = ranged(8, ge=1)  # learned tokens that stand in for the generalist latents when they are dropped
    drop_generalist_actions: bool = False  # also replace the discretized generalist actions when dropping
    # what the unconditional pass (and the training drop that teaches it) removes: "all" (the paper: the
    # generalist's latents and proprio, plus its actions with drop_generalist_actions) or "generalist" (the
    # generalist's latents and actions only; proprio stays in both passes, so guidance amplifies what the
    # generalist adds and never proprio)
    target: Literal["all", "generalist"] = "all"


@dataclass
class ConditioningConfig:
    """How the generalist's outputs enter the specialist beyond the paper's form (all off: the paper's).

    Cached latents are computed on demonstration frames and are off-distribution at control time; these keep
    the specialist from leaning on them as a shortcut (issue 30).
    """

    # training: each sample independently loses its generalist latents (null tokens) / its generalist actions
    # (the null action) with these probabilities, beside the guidance drop
    latent_dropout: float = ranged(0.0, ge=0, le=1)
    action_dropout: float = ranged(0.0, ge=0, le=1)
    # each latent vector is layer-normalised (no affine) before its projection
    latent_norm: bool = False
    # > 0: the latents pass through a linear bottleneck of this width before the projection to the hidden width
    latent_bottleneck: int = ranged(0, ge=0)
    # training: Gaussian noise added to each latent vector, with this standard deviation relative to the
    # vector's own (after latent_norm when on), so training sees latents as perturbed as at control time
    latent_noise: float = ranged(0.0, ge=0)


@dataclass
class RTCConfig:
    """Real-time chunking (robodual_specialist.rtc), both forms off by default: ``inference`` blends each denoising
    step's x0 prediction toward the committed prefix with RTC's soft weights (``strength`` scales them);
    ``training`` gives the first ``d ~ U{0..max_delay}`` action tokens clean, flagged and out of the loss."""

    inference: bool = False
    strength: float = ranged(1.0, ge=0, le=1)
    training: bool = False
    max_delay: int = ranged(4, ge=0)


def saved_specialist(model: dict[str, Any]) -> dict[str, Any]:
    """A specialist config saved by an earlier version (a checkpoint's ``specialist`` or a run's ``model``), with
    the defaults it was trained under where they have since changed: before ``generalist_inputs`` existed the
    specialist read both of the generalist's outputs (the default is "actions" since issue 30)."""
    return {"generalist_inputs": "both", **model}


@dataclass
class SpecialistConfig:
    family: str = "dit"
    action_dim: int = ranged(7, ge=1)  # D; set from the dataset by `robodual train specialist`
    proprio_dim: int = ranged(7, ge=0)  # P; set from the dataset (0: no proprio)
    k_s: int = ranged(8, ge=1)
    k_g: int = ranged(8, ge=1)
    generalist_dim: int = ranged(0, ge=0)  # H of the generalist latents; 0 = specialist-only (no generalist tokens)
    hidden: int = ranged(256, ge=2)
    depth: int = ranged(6, ge=1)
    heads: int = ranged(8, ge=1)
    mlp_ratio: float = ranged(4.0, gt=0)
    causal: bool = True  # False = bidirectional self-attention over the action tokens
    conditioner: str = "cross_attention"  # a registry("conditioners") name: cross_attention, film, in_context
    # which generalist outputs condition the specialist: "both" (the paper, 3.2: latents through the
    # conditioner and discretized actions beside the noised actions), "latents" (the actions are replaced by
    # the learned null action) or "actions" (the latent tokens are masked as if always dropped; the learned null
    # tokens take their place). The default is "actions": issue 30's pre-registered rule chose it
    # (docs/results/dual-earns/report), after the data-efficiency study found the paper's form below the
    # specialist alone; "both" is the paper's
    generalist_inputs: Literal["both", "latents", "actions"] = "actions"
    sensors: list[SensorConfig] = field(default_factory=_paper_sensors)
    # bf16 autocast for the sensor encoders at inference (not in training): "auto" (on for CPUs that compute
    # bf16 natively, AVX512-BF16 or AMX: ~1.5x faster encoders there; off on CUDA, where it was slower at
    # control-time batch sizes),
    # "on" or "off" (fp32). Features then differ from fp32 at bf16 precision (tested: sampled actions stay
    # within 2e-2 of fp32's); the denoiser always runs in fp32.
    inference_autocast: str = "auto"
    # at inference, sensors whose frozen backbones are the same network with the same weights (the static
    # and gripper RGB cameras both use the pretrained DINO) encode their frames in one backbone batch
    batch_shared_backbones: bool = True
    # the control step on static buffers (robodual_specialist.graphed): "auto" (on CUDA, captured as a CUDA graph
    # and replayed per step), "on" (also on the CPU, run eagerly: the same logic), "off" (DiTSpecialist.sample)
    static_step: Literal["auto", "on", "off"] = "auto"
    # the static step's sensor encoders: "auto" (bf16 on CUDA, fp32 elsewhere), "bf16", "fp32"
    static_precision: Literal["auto", "bf16", "fp32"] = "auto"
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    rtc: RTCConfig = field(default_factory=RTCConfig)
    conditioning: ConditioningConfig = field(default_factory=ConditioningConfig)

    # rotary position embeddings rotate pairs of each head's channels
    __config_checks__ = (Check("hidden", "a multiple of {prefix}heads ({heads}) with an even width per head",
                               lambda c: c.hidden % c.heads == 0 and (c.hidden // c.heads) % 2 == 0),
                         # each block holds about (4 + 2 mlp_ratio) hidden^2 weights (attention, cross-attention, MLP)
                         Check("hidden", "small enough that {depth} blocks of about (4 + 2 x {prefix}mlp_ratio) x "
                                         "hidden^2 float32 weights fit in this machine's free memory",
                               lambda c: fits_in_memory(c.depth * (4 + 2 * c.mlp_ratio) * float(c.hidden) ** 2)))


@dataclass
class DataConfig:
    """How windows are cut from the Zarr store (robodual_core.data.WindowDataset).

    The number of history frames is the largest ``history`` option among the sensors.
    """

    image_size: int | None = ranged(224, ge=1)  # null: each sensor resizes its own frames
    val_ratio: float = ranged(0.1, ge=0, lt=1)
    augment_tau: bool = True  # latency-aware shifted-window augmentation, tau in [0, k_g)
    # image frames served as stored (uint8) and converted/resized on the training device: "auto" (on CUDA),
    # "on", "off" (converted in the loader's workers); the same tensors either way (tested)
    device_images: Literal["auto", "on", "off"] = "auto"
    # frozen-backbone sensors (the paper's DINO) train on backbone features computed once per stored frame and
    # cached in the store (features/<fingerprint>), instead of running the backbone on every batch
    feature_cache: bool = False
    # decode every chunk of every array before training (as `robodual dataset validate`); the cheap structural
    # checks always run, and every read refuses a missing or damaged chunk anyway
    full_check: bool = False
    feature_dtype: Literal["float16", "float32"] = "float16"
    # {store key: mode}; keys must be the store's (checked when training starts), modes these
    normalization: dict[str, Literal["min_max", "mean_std", "q99", "none"]] = field(
        default_factory=lambda: {"action": "q99", "proprio": "min_max"})


@dataclass
class SpecialistTrainConfig:
    model: SpecialistConfig = field(default_factory=SpecialistConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
