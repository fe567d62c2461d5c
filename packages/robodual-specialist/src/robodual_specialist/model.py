"""The DiT specialist policy (registered as specialist ``dit``): sensors + conditioning + diffusion.

Conditioning (paper 3.2):

- proprio -> 2-layer MLP, added to the timestep embedding -> adaLN-Zero of every block;
- generalist discretized actions: concatenated with the noised action of the same time step;
- generalist task and action latents -> Linear -> condition tokens, followed by the resampled sensor
  tokens (``[task ; action ; null ; sensors]`` with a key padding mask), entering through the conditioner.

Shifted window (paper 3.2, and the reference runtime): a generalist chunk produced ``tau`` steps before
the current observation covers steps ``t - tau .. t - tau + k_g - 1``. Specialist token ``i`` predicts
the action at ``t + i``, so it is paired with generalist action ``i + tau``: the first ``tau`` (stale)
generalist actions are dropped, the remaining ``k_g - tau`` are shifted to positions ``0 .. k_g - tau - 1``
and positions with no generalist action (``i + tau >= k_g``) get the learned ``null_action``.

Classifier-free guidance (Appendix A/B): with probability ``drop_prob`` a training sample loses its
generalist latents (all their cross-attention tokens are masked and learned null tokens take their
place) and its proprio (a learned null embedding). At inference the conditional and unconditional
passes run as one batch of 2B; observation tokens are encoded once and conditioner keys/values are
computed once per control step. Sensor tokens are in both passes.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from robodual_core.config import load_config, to_dict
from robodual_core.errors import RobodualError
from robodual_core.interfaces import GeneralistOutput, Specialist
from robodual_specialist import rtc
from robodual_specialist.config import SensorConfig, SpecialistConfig, saved_specialist
from robodual_specialist.ddim import DDIMChain
from robodual_specialist.dit import DiT


def build_sensor(spec: SensorConfig, load_weights: bool = True, width: int | None = None) -> nn.Module:
    """A sensor encoder from the ``sensors`` registry. ``load_weights=False`` (when a checkpoint will
    overwrite every weight) skips loading pretrained backbones where the encoder supports it. ``width``:
    the token width to ask for when the options leave the encoder's ``width_option`` unset (the
    specialist's hidden width: its tokens then enter without a projection)."""
    from robodual_core.plugins import registry

    factory = registry("sensors").get(spec.name)
    options = dict(spec.options)
    width_option = getattr(factory, "width_option", None)
    if width is not None and isinstance(width_option, str) and width_option not in options:
        options[width_option] = width
    try:
        if "load_weights" in inspect.signature(factory).parameters:
            options["load_weights"] = load_weights
    except (TypeError, ValueError):
        pass
    try:
        return factory(**options)
    except TypeError as exc:
        raise RobodualError(f"sensor '{spec.name}' rejected its options {sorted(spec.options)}: {exc}") from exc


def conditioner_class(name: str) -> type[nn.Module]:
    from robodual_core.plugins import registry

    return registry("conditioners").get(name)


AUTOCAST_CHOICES = {"auto": None, "on": True, "true": True, "bf16": True, "off": False, "false": False,
                    "fp32": False}


@dataclass(frozen=True)
class SamplingPath:
    """How ``DiTSpecialist.sample`` organises its loop; the default is the fast path, and each switch exists to
    measure what it saves (``robodual bench specialist``), never changing the result (tested).

    ``cache_kv``: conditioner keys/values once per control step; ``batch_cfg``: the conditional and unconditional
    passes as one batch; ``cache_adapters``: condition tokens and adaLN modulations once per control step (off:
    rebuilt every denoising step, the sensor tokens from ``obs_tokens_fn()`` when given).
    """

    cache_kv: bool = True
    batch_cfg: bool = True
    cache_adapters: bool = True
    obs_tokens_fn: Any = None


def native_bf16(device_type: str) -> bool:
    """Whether ``device_type`` computes bf16 natively (where autocasting to bf16 is faster, not slower)."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        cpu = getattr(torch, "cpu", None)
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)
    return False


def autocast_enabled(setting: Any, device_type: str) -> bool:
    """``model.inference_autocast`` (auto/on/off; old checkpoints hold booleans) on this device."""
    key = str(setting).strip().lower()
    if key not in AUTOCAST_CHOICES:
        raise RobodualError(f"config key 'model.inference_autocast' is {setting!r}; expected auto, on or off")
    choice = AUTOCAST_CHOICES[key]
    if choice is None:
        # auto: bf16 encoders where they are faster. On CPUs with native bf16 they are (~1.5x); on CUDA the
        # encoders at control-time batch sizes are launch-bound and autocast's casts made them slower
        # (H100, batch 1: 20 ms vs 11 ms fp32, `robodual bench specialist --device cuda`)
        return device_type == "cpu" and native_bf16("cpu")
    return choice


class DiTSpecialist(nn.Module, Specialist):
    """``loss(batch) -> (loss, metrics)``; ``sample(batch, cond) -> normalized actions [B, k_s, D]``.

    ``batch`` is a collated ``WindowDataset`` dict (``obs``, ``proprio``, ``action``, ``tau``, ...) with an
    optional ``batch["generalist"]`` (:class:`GeneralistOutput`); ``cond`` overrides it.
    ``sensors``: prebuilt encoders keyed by name (tests); default: built from ``cfg.sensors``.
    """

    def __init__(self, cfg: SpecialistConfig, sensors: dict[str, nn.Module] | None = None,
                 load_weights: bool = True):
        super().__init__()
        from diffusers import DDIMScheduler

        autocast_enabled(cfg.inference_autocast, "cpu")  # a bad value fails here, naming the key

        self.cfg = cfg
        self.k_s = cfg.k_s
        if cfg.hidden % cfg.heads or (cfg.hidden // cfg.heads) % 2:
            raise RobodualError(f"specialist hidden ({cfg.hidden}) must split into {cfg.heads} heads of even width")
        names = [s.name for s in cfg.sensors]
        if len(set(names)) != len(names):
            raise RobodualError(f"specialist sensors {names} name one sensor twice")
        if sensors is None:
            sensors = {s.name: build_sensor(s, load_weights, width=cfg.hidden) for s in cfg.sensors}
        self.sensors = nn.ModuleDict(sensors)
        dim = cfg.hidden
        self.sensor_proj = nn.ModuleDict({
            name: (nn.Linear(enc.out_dim, dim) if enc.out_dim != dim else nn.Identity())
            for name, enc in self.sensors.items()
        })
        # which source a condition token comes from: 0 task latent, 1 action latent, 2 null, 3+ sensors
        self.source_embed = nn.Parameter(torch.zeros(3 + len(self.sensors), dim))
        if cfg.generalist_dim > 0:
            # one projection for task and action latents (they share the VLA's hidden space); the source
            # embedding tells them apart
            width = cfg.conditioning.latent_bottleneck
            self.latent_proj = (nn.Sequential(nn.Linear(cfg.generalist_dim, width, bias=False), nn.Linear(width, dim))
                                if width > 0 else nn.Linear(cfg.generalist_dim, dim))
        self.null_tokens = nn.Parameter(torch.randn(max(1, cfg.guidance.null_tokens), dim) * 0.02)
        self.null_action = nn.Parameter(torch.zeros(cfg.action_dim))
        self.proprio_mlp = (nn.Sequential(nn.Linear(cfg.proprio_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
                            if cfg.proprio_dim > 0 else None)
        self.null_proprio = nn.Parameter(torch.zeros(dim))
        if cfg.rtc.training:  # training-time real-time chunking: flags the clean prefix tokens (robodual_specialist.rtc)
            self.rtc_flag = nn.Parameter(torch.randn(dim) * 0.02)
        self.dit = DiT(cfg.action_dim, dim, cfg.depth, cfg.heads, cfg.mlp_ratio, cfg.causal,
                       conditioner_class(cfg.conditioner))
        d = cfg.diffusion
        self.scheduler = DDIMScheduler(num_train_timesteps=d.train_steps, beta_schedule=d.beta_schedule,
                                       prediction_type=d.prediction_type, clip_sample=d.clip_sample,
                                       timestep_spacing=d.timestep_spacing)
        self.normalizer: Any = None  # robodual_core.data.Normalizer, set by from_checkpoint / the trainer
        # robodual_core.data.preprocess.Preprocessing (the loader's modalities and image size), set likewise
        self.preprocessing: Any = None
        self._low_precision: dict[str, tuple[tuple[tuple[int, int], ...], dict[str, torch.Tensor]]] = {}
        self._backbone_groups: tuple[tuple[tuple[int, int], ...], list[list[str]]] | None = None
        self._ddim_chains: dict[tuple[int, str], DDIMChain] = {}
        self.sampling = SamplingPath()

    def compile_targets(self) -> list[nn.Module]:
        """What ``trainer.compile`` compiles: the DiT and each sensor encoder (the loss around them has
        data-dependent Python: random drops, the scheduler's noise)."""
        return [self.dit, *self.sensors.values()]

    # -- config and checkpoints ------------------------------------------------------------------
    def resolved_config(self) -> SpecialistConfig:
        """``cfg`` with each sensor's full config (as the encoder reports it), enough to rebuild it."""
        sensors = [SensorConfig(name, enc.config_dict() if hasattr(enc, "config_dict") else dict(spec.options))
                   for (name, enc), spec in zip(self.sensors.items(), self.cfg.sensors, strict=True)]
        return dataclasses.replace(self.cfg, sensors=sensors)

    def robodual_config(self) -> dict[str, Any]:
        return {"family": "dit", "kind": "specialist", "specialist": to_dict(self.resolved_config())}

    @classmethod
    def from_config_dict(cls, d: dict[str, Any], load_weights: bool = True) -> DiTSpecialist:
        if d.get("family") != "dit" or "specialist" not in d:
            raise RobodualError(f"model config {sorted(d)} (family {d.get('family')!r}) is not a 'dit' specialist")
        cfg = load_config(SpecialistConfig, base=saved_specialist(d["specialist"]))
        return cls(cfg, load_weights=load_weights)

    @classmethod
    def from_checkpoint(cls, ckpt: str | Path, ema: bool = True, device: str | torch.device = "cpu") -> DiTSpecialist:
        """Rebuild from ``model_config.json`` and load the (EMA) weights strictly, plus ``normalizer.json`` and
        ``preprocessing.json`` (how the loader prepared each observation key; the runtime does the same)."""
        from robodual_core.checkpoint import (
            load_model_state,
            load_state_checked,
            read_checkpoint_meta,
            read_json,
            resolve_checkpoint,
            weights_file,
        )

        ckpt = resolve_checkpoint(ckpt)
        meta = read_checkpoint_meta(ckpt, kind="specialist")
        model = cls.from_config_dict(meta, load_weights=False)
        # damaged or foreign weights: one line naming the file (and the config keys that differ)
        load_state_checked(model, load_model_state(ckpt, ema=ema), weights_file(ckpt, ema), meta)
        if (ckpt / "normalizer.json").is_file():
            from robodual_core.data import Normalizer

            model.normalizer = Normalizer.from_dict(read_json(ckpt, "normalizer"))
        from robodual_core.data.preprocess import Preprocessing

        model.preprocessing = Preprocessing.from_checkpoint(ckpt, model.obs_keys)
        return model.to(device).eval()

    # -- conditioning ----------------------------------------------------------------------------
    @property
    def obs_keys(self) -> list[str]:
        """Dataset keys the sensors read."""
        return sorted({k for enc in self.sensors.values() for k in enc.keys})

    def _sensor_input(self, enc: nn.Module, batch: dict[str, Any]) -> Any:
        # observation keys live in batch["obs"]; per-sample keys such as "instruction" at the top level
        obs = {**{k: v for k, v in batch.items() if k != "obs"}, **batch.get("obs", {})}
        keys = list(enc.keys)
        missing = [k for k in keys if k not in obs]
        if missing:
            raise RobodualError(f"sensor '{getattr(enc, 'name', '?')}' reads {missing}, the batch has obs keys "
                                f"{sorted(batch.get('obs', {}))}; build the dataset with these obs_keys")
        if len(keys) != 1:
            return {k: obs[k] for k in keys}
        x = obs[keys[0]]
        history = getattr(enc, "history", None)
        if isinstance(x, torch.Tensor) and history is not None and x.dim() == 5:
            # the dataset gives every image key the longest history; keep the frames this sensor uses
            x = x[:, x.shape[1] - history - 1:]
            if history == 0:
                x = x[:, 0]
        return x

    def _bf16_weights(self, name: str, enc: nn.Module) -> dict[str, torch.Tensor]:
        """bf16 copies of the encoder's linear and convolution weights, for autocast inference.

        Autocast converts every fp32 weight again in every call, i.e. each control step re-reads and converts
        all encoder weights (DINO ViT-S/16 at 224: 72 ms with fp32 weights, 61 ms with these, same output).
        The copies are rebuilt when any parameter of the encoder changed (storage or in-place version).
        """
        params = dict(enc.named_parameters())
        key = tuple((p.data_ptr(), p._version) for p in params.values())
        hit = self._low_precision.get(name)
        if hit is None or hit[0] != key:
            layers = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
            weights = {f"{n}.weight" if n else "weight" for n, m in enc.named_modules() if isinstance(m, layers)}
            hit = (key, {n: p.detach().to(torch.bfloat16) for n, p in params.items() if n in weights})
            self._low_precision[name] = hit
        return hit[1]

    def shared_backbone_groups(self) -> list[list[str]]:
        """Sensors (two or more per group) whose frozen backbones are the same network holding the same
        weights, e.g. static and gripper RGB both on the pretrained DINO. Compared tensor by tensor once and
        again only when a backbone parameter changes (storage or in-place version)."""
        candidates = {name: enc for name, enc in self.sensors.items()
                      if hasattr(enc, "frames_to_encode") and hasattr(enc, "backbone")
                      and not getattr(enc, "trainable", True)}
        key = tuple((p.data_ptr(), p._version) for enc in candidates.values() for p in enc.backbone.parameters())
        if self._backbone_groups is None or self._backbone_groups[0] != key:
            groups: list[list[str]] = []
            for name, enc in candidates.items():
                for group in groups:
                    if _same_network(self.sensors[group[0]].backbone, enc.backbone):
                        group.append(name)
                        break
                else:
                    groups.append([name])
            self._backbone_groups = (key, [g for g in groups if len(g) > 1])
        return self._backbone_groups[1]

    def _batched_backbone_features(self, inputs: dict[str, Any], autocast: bool) -> dict[str, torch.Tensor]:
        """Backbone features of every shared-backbone group's frames, one backbone call per group."""
        features: dict[str, torch.Tensor] = {}
        for group in self.shared_backbone_groups():
            frames = {name: self.sensors[name].frames_to_encode(inputs[name]) for name in group}
            todo = [name for name in group if frames[name].shape[0]]
            if len(todo) < 2 or len({tuple(frames[n].shape[1:]) for n in todo}) > 1:
                continue  # nothing to share (the frame cache had the rest) or different frame sizes
            first = self.sensors[todo[0]]
            stacked = torch.cat([frames[n] for n in todo])
            if autocast:
                weights = {k.removeprefix("backbone."): v for k, v in self._bf16_weights(todo[0], first).items()
                           if k.startswith("backbone.")}
                with torch.autocast(stacked.device.type, dtype=torch.bfloat16):
                    out = functional_call(first.backbone, weights, (stacked,), strict=False)
            else:
                out = first.backbone(stacked)
            features.update(zip(todo, out.split([frames[n].shape[0] for n in todo]), strict=True))
        return features

    def encode_observation(self, batch: dict[str, Any]) -> torch.Tensor:
        """Sensor tokens ``[B, N_s, hidden]`` (encoders and resamplers: once per control step)."""
        tokens = []
        dev_type = self.null_tokens.device.type
        inference = not self.training and not torch.is_grad_enabled()
        autocast = inference and autocast_enabled(self.cfg.inference_autocast, dev_type)
        cached = batch.get("features") or {}  # frozen-backbone features from a feature cache (training)
        inputs = {name: self._sensor_input(enc, batch) for name, enc in self.sensors.items() if name not in cached}
        features = (self._batched_backbone_features(inputs, autocast)
                    if inference and self.cfg.batch_shared_backbones else {})
        for i, (name, enc) in enumerate(self.sensors.items()):
            if name in cached:
                feats = cached[name]
                if feats.dim() == 4:  # the dataset's longest history: keep the frames this sensor uses
                    feats = feats[:, feats.shape[1] - enc.history - 1:]
                tokens.append(self.sensor_proj[name](enc.encode_features(feats)) + self.source_embed[3 + i])
                continue
            x = inputs[name]
            kwargs = {"features": features[name]} if name in features else {}
            if autocast:
                with torch.autocast(dev_type, dtype=torch.bfloat16):
                    raw = functional_call(enc, self._bf16_weights(name, enc), (x,), kwargs, strict=False)
                raw = raw.float()
            else:
                raw = enc(x, **kwargs)
            tokens.append(self.sensor_proj[name](raw) + self.source_embed[3 + i])
        if not tokens:
            B = batch["proprio"].shape[0]
            return self.null_tokens.new_zeros(B, 0, self.cfg.hidden)
        return torch.cat(tokens, dim=1)

    def condition_tokens(self, obs_tokens: torch.Tensor, gen: GeneralistOutput | None,
                         drop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[task ; action ; null ; sensor]`` tokens ``[B, N, C]`` and mask ``[B, N]`` (True = valid).

        ``drop [B]`` bool: samples whose generalist latents are replaced by the null tokens (only the
        mask depends on it).
        """
        return self.condition_token_values(obs_tokens, gen), self.condition_mask(obs_tokens, gen, drop)

    def condition_token_values(self, obs_tokens: torch.Tensor, gen: GeneralistOutput | None) -> torch.Tensor:
        B = obs_tokens.shape[0]
        parts = []
        if gen is not None:
            if self.cfg.generalist_dim <= 0:
                raise RobodualError("this specialist was built without generalist conditioning "
                                    "(generalist_dim = 0) but was given generalist outputs")
            H = gen.task_latents.shape[-1]
            if H != self.cfg.generalist_dim:
                raise RobodualError(f"generalist latents have width {H}; this specialist expects "
                                    f"generalist_dim = {self.cfg.generalist_dim}")
            dtype = obs_tokens.dtype
            parts += [self.latent_proj(self._latents(gen.task_latents.to(dtype))) + self.source_embed[0],
                      self.latent_proj(self._latents(gen.action_latents.to(dtype))) + self.source_embed[1]]
        parts.append((self.null_tokens + self.source_embed[2]).unsqueeze(0).expand(B, -1, -1))
        parts.append(obs_tokens)
        return torch.cat(parts, dim=1)

    def _latents(self, x: torch.Tensor) -> torch.Tensor:
        """Generalist latents ``[B, N, H]`` as the projection sees them (``model.conditioning``): layer-normalised
        when asked, and perturbed by relative Gaussian noise in training."""
        c = self.cfg.conditioning
        if c.latent_norm:
            x = F.layer_norm(x, x.shape[-1:])
        if self.training and c.latent_noise > 0:
            x = x + c.latent_noise * x.std(dim=-1, keepdim=True) * torch.randn_like(x)
        return x

    def condition_mask(self, obs_tokens: torch.Tensor, gen: GeneralistOutput | None,
                       drop: torch.Tensor) -> torch.Tensor:
        B, dev = obs_tokens.shape[0], obs_tokens.device
        masks = []
        if gen is not None:
            # generalist_inputs "actions": the latents are masked as if dropped on every sample
            keep = ~drop if self.cfg.generalist_inputs != "actions" else torch.zeros_like(drop)
            masks += [gen.task_mask.bool() & keep[:, None], gen.action_mask.bool() & keep[:, None]]
            null_valid = ~keep
        else:
            null_valid = torch.ones(B, dtype=torch.bool, device=dev)
        masks.append(null_valid[:, None].expand(B, self.null_tokens.shape[0]))
        masks.append(torch.ones(B, obs_tokens.shape[1], dtype=torch.bool, device=dev))
        return torch.cat(masks, dim=1)

    def generalist_action_input(self, gen: GeneralistOutput | None, tau: torch.Tensor | None, B: int,
                                drop: torch.Tensor | None = None,
                                action_drop: torch.Tensor | None = None) -> torch.Tensor:
        """The generalist action paired with each specialist token, ``[B, k_s, D]`` (shifted window).

        Token ``i`` gets generalist action ``i + tau``; where that is past the chunk (or the generalist is
        absent or dropped) it gets the learned ``null_action``. ``drop``: the guidance drop (it removes the
        actions with ``guidance.drop_generalist_actions`` or ``guidance.target: generalist``);
        ``action_drop``: samples whose actions are dropped regardless (``conditioning.action_dropout``).
        """
        k_s, D = self.cfg.k_s, self.cfg.action_dim
        null = self.null_action.view(1, 1, D).expand(B, k_s, D)
        if gen is None or self.cfg.generalist_inputs == "latents":
            return null
        acts = gen.actions.to(null.dtype)
        if acts.shape[-1] != D:
            raise RobodualError(f"generalist actions have dimension {acts.shape[-1]}; the specialist expects {D}")
        k_g = acts.shape[1]
        tau = torch.zeros(B, dtype=torch.long, device=acts.device) if tau is None else tau.to(acts.device).long()
        src = torch.arange(k_s, device=acts.device)[None, :] + tau[:, None]  # [B, k_s]
        valid = src < k_g
        gathered = torch.gather(acts, 1, src.clamp(max=k_g - 1)[..., None].expand(B, k_s, D))
        g = self.cfg.guidance
        if drop is not None and (g.drop_generalist_actions or g.target == "generalist"):
            valid = valid & ~drop[:, None]
        if action_drop is not None:
            valid = valid & ~action_drop[:, None]
        return torch.where(valid[..., None], gathered, null)

    def proprio_embedding(self, proprio: torch.Tensor | None, drop: torch.Tensor) -> torch.Tensor:
        B = drop.shape[0]
        null = self.null_proprio.unsqueeze(0).expand(B, -1)
        if self.cfg.guidance.target == "generalist":
            drop = torch.zeros_like(drop)  # guidance on the generalist's outputs alone: proprio is never dropped
        if self.proprio_mlp is None or proprio is None or proprio.numel() == 0:
            return null
        return torch.where(drop[:, None], null, self.proprio_mlp(proprio.reshape(B, -1).to(null.dtype)))

    # -- training --------------------------------------------------------------------------------
    def loss(self, batch: dict[str, Any], cond: GeneralistOutput | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        gen = cond if cond is not None else batch.get("generalist")
        actions = batch["action"][:, : self.cfg.k_s]
        if actions.shape[1] != self.cfg.k_s:
            raise RobodualError(f"batch actions cover {actions.shape[1]} steps; the specialist predicts k_s = "
                                f"{self.cfg.k_s} (build WindowDataset with horizon >= k_s)")
        B, dev = actions.shape[0], actions.device
        # batch["noise"] / ["timesteps"] / ["drop"] fix the random draws (reproducible loss evaluation, tests)
        drop = batch["drop"] if "drop" in batch else torch.rand(B, device=dev) < self.cfg.guidance.drop_prob
        c = self.cfg.conditioning
        # independent drops of the latents and of the actions (no random draw when off: the paper's stream)
        latent_drop = drop | (torch.rand(B, device=dev) < c.latent_dropout) if c.latent_dropout > 0 else drop
        action_drop = torch.rand(B, device=dev) < c.action_dropout if c.action_dropout > 0 else None
        obs_tokens = self.encode_observation(batch)
        cond_tok, cond_mask = self.condition_tokens(obs_tokens, gen, latent_drop)
        gen_in = self.generalist_action_input(gen, batch.get("tau"), B, drop, action_drop)
        c_obs = self.proprio_embedding(batch.get("proprio"), drop)
        noise = batch["noise"] if "noise" in batch else torch.randn_like(actions)
        t = (batch["timesteps"] if "timesteps" in batch
             else torch.randint(0, self.scheduler.config.num_train_timesteps, (B,), device=dev))
        noisy = self.scheduler.add_noise(actions, noise, t)
        noisy, token_bias, keep = rtc.training_prefix(self, actions, noisy, batch)  # off unless model.rtc.training
        pred = self.dit(noisy, gen_in, t, c_obs, self.dit.precompute(cond_tok, cond_mask), token_bias=token_bias)
        target = actions if self.cfg.diffusion.prediction_type == "sample" else noise
        # padded steps repeat the episode's last action: a valid "hold still" target, kept in the loss
        loss = F.mse_loss(pred, target) if keep is None else rtc.masked_mse(pred, target, keep)
        return loss, {"mse": float(loss.detach())}

    # -- inference -------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, batch: dict[str, Any], cond: GeneralistOutput | None = None, steps: int | None = None,
               guidance_scale: float | None = None, generator: torch.Generator | None = None,
               noise: torch.Tensor | None = None, obs_tokens: torch.Tensor | None = None,
               prefix: rtc.PrefixGuidance | None = None) -> torch.Tensor:
        """Denoise an action chunk: normalized actions ``[B, k_s, D]``.

        ``guidance_scale``: default ``cfg.guidance.scale``; 0 turns guidance off (conditional pass only).
        ``obs_tokens``: precomputed ``encode_observation(batch)``. How the loop is organised (caches, batched
        guidance) is ``self.sampling`` (:class:`SamplingPath`), which benches switch; it never changes the result.
        ``prefix``: real-time chunking of the committed prefix (default: from the batch's ``rtc_*`` keys when
        ``cfg.rtc`` turns a form on; :mod:`robodual_specialist.rtc`).
        """
        path = self.sampling
        cache_kv, batch_cfg, cache_adapters = path.cache_kv, path.batch_cfg, path.cache_adapters
        obs_tokens_fn = path.obs_tokens_fn
        gen = cond if cond is not None else batch.get("generalist")
        scale = self.cfg.guidance.scale if guidance_scale is None else guidance_scale
        if obs_tokens is None:
            obs_tokens = self.encode_observation(batch)
        B, dev = obs_tokens.shape[0], obs_tokens.device
        shape = (B, self.cfg.k_s, self.cfg.action_dim)
        x = torch.randn(shape, generator=generator, device=dev) if noise is None else noise.to(dev)
        tau = batch.get("tau")
        prefix = prefix if prefix is not None else rtc.guidance_for(self, batch)
        no_drop = torch.zeros(B, dtype=torch.bool, device=dev)
        guided = scale > 0  # scale 1 still runs both passes: equal to the conditional output (tested)

        def branch(drop: torch.Tensor) -> tuple[Any, ...]:
            cond_tok, cond_mask = self.condition_tokens(obs_tokens, gen, drop)
            return (cond_tok, cond_mask, self.generalist_action_input(gen, tau, B, drop),
                    self.proprio_embedding(batch.get("proprio"), drop))

        def build_passes() -> tuple[list[tuple[Any, ...]], list[Any] | None]:
            """[(cond tokens, mask, generalist action input, proprio embedding)] per forward, and the
            conditioner state of each (None when it is recomputed in every step)."""
            if guided and batch_cfg:
                # one batch of 2B rows: the same condition tokens (projected once) with two masks
                tokens = self.condition_token_values(obs_tokens, gen)
                masks = [self.condition_mask(obs_tokens, gen, d) for d in (no_drop, ~no_drop)]
                gen_in = torch.cat([self.generalist_action_input(gen, tau, B, d) for d in (no_drop, ~no_drop)])
                c_obs = torch.cat([self.proprio_embedding(batch.get("proprio"), d) for d in (no_drop, ~no_drop)])
                passes = [(torch.cat([tokens, tokens]), torch.cat(masks), gen_in, c_obs)]
                pres = [self.dit.precompute_pair(tokens, *masks)] if cache_kv else None
                return passes, pres
            passes = [branch(no_drop), branch(~no_drop)] if guided else [branch(no_drop)]
            return passes, ([self.dit.precompute(p[0], p[1]) for p in passes] if cache_kv else None)

        passes, pres = build_passes()
        chain = self.ddim_chain(steps or self.cfg.diffusion.inference_steps, dev)
        timesteps = chain.timesteps
        # adaLN modulations of every step at once (they depend on proprio and the known timesteps only)
        mods = [self.dit.modulations(timesteps, p[3]) for p in passes] if cache_adapters else None
        for i, t in enumerate(timesteps):
            if not cache_adapters:
                if obs_tokens_fn is not None:
                    obs_tokens = obs_tokens_fn()
                passes, _ = build_passes()
                pres = None
            outs = []
            x_in, bias = prefix.before(x) if prefix is not None else (x, None)
            for j, (cond_tok, cond_mask, gen_in, c_obs) in enumerate(passes):
                pre = pres[j] if pres is not None else self.dit.precompute(cond_tok, cond_mask)
                reps = gen_in.shape[0] // B
                outs.append(self.dit(x_in.repeat(reps, 1, 1), gen_in, t.to(dev), c_obs, pre,
                                     mods=mods[j][i] if mods is not None else None,
                                     token_bias=None if bias is None else bias.repeat(reps, 1, 1)))
            out = torch.cat(outs, dim=0)
            if guided:
                c, u = out.chunk(2, dim=0)
                out = u + scale * (c - u)
            if prefix is not None:
                out = prefix.after(out)
            x = chain.step(i, out, x)
        return x

    def ddim_chain(self, steps: int, device: torch.device | str) -> DDIMChain:
        """The deterministic DDIM chain of ``steps`` steps (coefficients computed once per steps and device)."""
        key = (int(steps), str(device))
        chain = self._ddim_chains.get(key)
        if chain is None:
            chain = self._ddim_chains[key] = DDIMChain.from_scheduler(self.scheduler, int(steps), device)
        return chain

    @classmethod
    def build_trainer(cls, dataset: str | Path, out: str | Path, **options: Any) -> Any:
        """The trainer ``robodual train specialist`` would run (options as its flags: ``config``,
        ``overrides``, ``generalist_cache``, ``generalist``, ``generalist_pooling``, ...), for plugins
        that drive specialist training themselves (``robodual bench generalist``)."""
        from robodual_specialist.train import build_trainer

        return build_trainer(Path(dataset), Path(out), **options)

    @classmethod
    def load_runner(cls, ckpt: str | Path) -> Any:
        """The runtime's adapter (robodual_core.runtime.SpecialistRunner) for a checkpoint."""
        from robodual_core.checkpoint import resolve_checkpoint, run_dataset_spec
        from robodual_specialist.runner import DiTRunner

        ckpt = resolve_checkpoint(ckpt)
        model = cls.from_checkpoint(ckpt)
        if model.normalizer is None:
            raise RobodualError(f"checkpoint '{ckpt}' has no normalizer.json: the policy cannot scale proprio or "
                                "actions to dataset units; copy it from the run's checkpoints (training writes it)")
        if "action" not in model.normalizer.entries:  # the actions would leave the policy in normalized units
            raise RobodualError(f"checkpoint '{ckpt}' normalizer.json has no 'action' entry (it has: "
                                f"{', '.join(model.normalizer.keys) or 'none'}); expected the one training writes, "
                                "which turns the policy's actions into dataset units")
        keys = [*model.obs_keys, "proprio"] if model.cfg.proprio_dim > 0 else list(model.obs_keys)
        return DiTRunner(model, observation_spec=run_dataset_spec(ckpt, keys))

    def as_runner(self, device: str | torch.device | None = None,
                  observation_spec: dict[str, tuple[tuple[int, ...], str]] | None = None) -> Any:
        """This model as the runtime drives it (``load_runner`` without a checkpoint: benches of freshly built
        models). Frames go through the kernel's preprocessing (``self.preprocessing`` when a trainer or a checkpoint
        set it; else each sensor's ``modality``, or one guessed from the frame, at the frame's own size). Depth
        needs ``self.normalizer`` (an empty ``Normalizer`` passes raw values through)."""
        from robodual_specialist.runner import DiTRunner

        return DiTRunner(self, device=device, observation_spec=observation_spec)

    def reset(self) -> None:
        """Forget per-episode caches of the sensors (frame features of the previous step)."""
        for enc in self.sensors.values():
            if hasattr(enc, "reset_cache"):
                enc.reset_cache()


def _same_network(a: nn.Module, b: nn.Module) -> bool:
    """Same module type, same state keys and shapes, equal values."""
    if type(a) is not type(b):
        return False
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in sa)


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
