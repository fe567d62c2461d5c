"""Runners from checkpoints, through the plugin registry, and the generic runner of any generalist model.

A ``generalists`` registry entry is a :class:`~robodual_core.interfaces.GeneralistFamily`, a ``specialists``
entry a :class:`~robodual_core.interfaces.SpecialistFamily`: what they can do is declared by those protocols
(checked with ``isinstance`` when an entry is used), never probed attribute by attribute.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from robodual_core.errors import RobodualError
from robodual_core.families import generalist_family, generalist_family_of
from robodual_core.interfaces import GeneralistOutput, SpecialistFamily

__all__ = ["GeneralistModelRunner", "generalist_family", "generalist_family_of", "load_runner"]

def load_runner(kind: str, path: str | Path, **options: Any) -> Any:
    """Build a generalist or specialist runner from a checkpoint through the registry.

    A generalist's family comes from :func:`generalist_family_of` (checkpoints and merged folders); a
    specialist checkpoint's ``model_config.json`` names its ``family``, whose registered entry provides
    ``load_runner(ckpt_dir)`` (:class:`~robodual_core.interfaces.SpecialistFamily`).
    """
    from robodual_core.checkpoint import read_checkpoint_meta, resolve_checkpoint
    from robodual_core.plugins import registry

    if kind == "generalist":
        from robodual_core.checkpoint import pin_checkpoint

        path = pin_checkpoint(path)  # a run folder's latest checkpoint, fixed
        _, family = generalist_family_of(path)
        return family.load_runner(path, **options)
    ckpt = resolve_checkpoint(path)
    meta = read_checkpoint_meta(ckpt)
    family = meta.get("family")
    if family is None:
        raise RobodualError(f"checkpoint '{ckpt}' has no 'family' in model_config.json; cannot tell what it is")
    reg = registry("specialists")
    entry = reg.get(family)
    if not isinstance(entry, SpecialistFamily):
        raise RobodualError(f"specialist family '{family}' of plugin '{reg.entry(family).plugin}' is not a "
                            "robodual_core.interfaces.SpecialistFamily (no load_runner); it cannot run in a policy")
    return entry.load_runner(ckpt, **options)


class GeneralistModelRunner:
    """Any :class:`~robodual_core.interfaces.Generalist` as the runtime and online specialist training drive
    it: one observation (or a batch of frames) in, one :class:`GeneralistOutput` out, pooled and rounded as
    the cache the specialist trained on was (``pooling``, ``latent_dtype``)."""

    def __init__(self, model: Any, normalizer: Any, observation_spec: dict | None = None, pooling: str = "none",
                 latent_dtype: str = "float32"):
        import torch

        from robodual_core.data.generalist_cache import POOLINGS

        if pooling not in POOLINGS:
            raise RobodualError(f"generalist latent pooling {pooling!r}; expected one of {', '.join(POOLINGS)}")
        if latent_dtype not in ("float16", "float32"):
            raise RobodualError(f"generalist latent dtype {latent_dtype!r}; expected float16 or float32")
        self.model = model.eval()
        self.pooling = pooling
        self.latent_dtype = getattr(torch, latent_dtype)
        self.normalizer = normalizer
        self.k_g = model.k_g
        self.action_dim = model.action_dim
        self.image_key = model.image_key
        self.observation_spec = observation_spec or {}

    @classmethod
    def load(cls, path: str | Path, from_checkpoint: Any, device: str = "cpu", pooling: str = "none",
             latent_dtype: str = "float32") -> GeneralistModelRunner:
        """``from_checkpoint(path, device=...)``: the family's loader. The action normalizer is the run's
        (``normalizer.json`` of the checkpoint, or of a model folder beside its config.json)."""
        from robodual_core.checkpoint import read_json, resolve_checkpoint, run_dataset_spec
        from robodual_core.data import Normalizer

        path = Path(path)
        if (path / "normalizer.json").is_file():
            ckpt = path
        elif (path / "config.json").is_file() and not (path / "checkpoints").is_dir():
            raise RobodualError(f"model folder '{path}' has no normalizer.json, which the policy needs to turn actions "
                                "into dataset units; merge from a training run (`robodual generalist merge RUN OUT` "
                                "writes it) or copy the run's normalizer.json beside its config.json")
        else:
            ckpt = resolve_checkpoint(path)
        if from_checkpoint is None:
            raise RobodualError("GeneralistModelRunner.load needs the generalist family's loader (from_checkpoint)")
        model = from_checkpoint(path, device=device)
        normalizer = Normalizer.from_dict(read_json(ckpt, "normalizer"))
        if "action" not in normalizer.entries:  # its actions would leave the policy in normalized units
            raise RobodualError(f"'{ckpt}' normalizer.json has no 'action' entry (it has: "
                                f"{', '.join(normalizer.keys) or 'none'}); expected the one training writes, which "
                                "turns the policy's actions into dataset units")
        return cls(model, normalizer, run_dataset_spec(ckpt, [model.image_key]), pooling=pooling,
                   latent_dtype=latent_dtype)

    def predict(self, observation: dict[str, Any], instruction: str) -> GeneralistOutput:
        import numpy as np

        return self.predict_batch(np.asarray(observation[self.image_key])[None], [instruction])

    def predict_batch(self, images: Any, instructions: list[str]) -> GeneralistOutput:
        """``images [B, H, W, 3]`` uint8 and one instruction each -> pooled, rounded outputs."""
        import numpy as np
        import torch

        from robodual_core.data.generalist_cache import pool_output
        from robodual_core.data.preprocess import prepare_images

        device = next(iter(self.model.parameters()), torch.empty(0)).device
        # BHWC uint8 -> [B, 3, H, W] in [0, 1] through the kernel's preprocessing: the loader's tensor, bit for bit
        x = prepare_images(torch.from_numpy(np.ascontiguousarray(images)).to(device), self.image_key, "rgb")
        with torch.no_grad():  # not inference_mode: online training feeds these outputs into autograd
            out = self.model.generate({"obs": {self.image_key: x}, "instruction": list(instructions)})
        out = pool_output(out, self.pooling, self.k_g)
        for name in ("task_latents", "action_latents"):
            setattr(out, name, getattr(out, name).to(self.latent_dtype).float())
        return out

    def actions_to_env(self, actions: Any) -> Any:
        """Normalized actions ``[k_g, D]`` -> the environment's units."""
        import numpy as np

        a = actions.detach().cpu().numpy() if hasattr(actions, "detach") else np.asarray(actions)
        return np.asarray(self.normalizer.unnormalize("action", a), dtype=np.float32)
