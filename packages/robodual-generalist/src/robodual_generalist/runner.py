"""The generalist as the runtime drives it: one observation in, one :class:`GeneralistOutput` out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from robodual_core.checkpoint import read_json, resolve_checkpoint, run_dataset_spec
from robodual_core.data import Normalizer
from robodual_core.errors import RobodualError
from robodual_core.interfaces import GeneralistOutput


class VLARunner:
    """Wraps a generalist (either family) for :mod:`robodual_core.runtime` and for online conditioning of
    specialist training (``robodual train specialist --generalist RUN``)."""

    def __init__(self, model: Any, normalizer: Normalizer, observation_spec: dict | None = None,
                 pooling: str = "none", latent_dtype: str = "float32"):
        from robodual_generalist.pooling import POOLINGS

        if pooling not in POOLINGS:
            raise RobodualError(f"generalist latent pooling {pooling!r}; expected one of {', '.join(POOLINGS)}")
        self.model = model.eval()
        self.pooling = pooling
        # the cache stores latents at this precision; rounding the same way keeps inference on what training saw
        self.latent_dtype = getattr(torch, latent_dtype)
        self.normalizer = normalizer
        self.k_g = model.k_g
        self.action_dim = model.action_dim
        self.image_key = model.cfg.image_key
        self.observation_spec = observation_spec or {}

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", pooling: str = "none", latent_dtype: str = "float32",
             model_cls: Any = None) -> VLARunner:
        """``pooling`` must be the one of the cache the specialist was trained on (its generalist.json).

        ``model_cls`` is the generalist family's class (its ``load_runner`` passes itself).
        """
        path = Path(path)
        if (path / "normalizer.json").is_file():
            ckpt = path
        elif (path / "config.json").is_file() and not (path / "checkpoints").is_dir():
            raise RobodualError(f"model folder '{path}' has no normalizer.json, which the policy needs to turn actions "
                                "into dataset units; merge from a training run (`robodual generalist merge RUN OUT` "
                                "writes it) or copy the run's normalizer.json beside its config.json")
        else:
            ckpt = resolve_checkpoint(path)
        if model_cls is None:
            raise RobodualError("VLARunner.load needs the generalist family's class (model_cls)")
        model = model_cls.from_checkpoint(path, device=device)
        normalizer = Normalizer.from_dict(read_json(ckpt, "normalizer"))
        return cls(model, normalizer, run_dataset_spec(ckpt, [model.cfg.image_key]), pooling=pooling,
                   latent_dtype=latent_dtype)

    @torch.inference_mode()
    def predict(self, observation: dict[str, np.ndarray], instruction: str) -> GeneralistOutput:
        return self.predict_batch(np.asarray(observation[self.image_key])[None], [instruction])

    @torch.no_grad()  # not inference_mode: online training feeds these outputs into autograd
    def predict_batch(self, images: np.ndarray, instructions: list[str]) -> GeneralistOutput:
        """``images [B, H, W, 3]`` uint8 (the ``image_key`` camera) and one instruction each -> outputs pooled
        and rounded as the runner's cache was (what the specialist trained on)."""
        from robodual_generalist.pooling import pool_output

        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.model.device)
        x = x.permute(0, 3, 1, 2).float() / 255.0  # BHWC uint8 -> [B, 3, H, W] in [0, 1], as the loader
        out = self.model.generate({"obs": {self.image_key: x}, "instruction": list(instructions)})
        out = pool_output(out, self.pooling, self.k_g)
        for name in ("task_latents", "action_latents"):
            setattr(out, name, getattr(out, name).to(self.latent_dtype).float())
        return out

    def actions_to_env(self, actions: Any) -> np.ndarray:
        """Normalized actions ``[k_g, D]`` -> the environment's units."""
        a = actions.detach().cpu().numpy() if isinstance(actions, torch.Tensor) else np.asarray(actions)
        return np.asarray(self.normalizer.unnormalize("action", a), dtype=np.float32)
