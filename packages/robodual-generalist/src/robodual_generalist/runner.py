"""The generalist as the runtime drives it: one observation in, one :class:`GeneralistOutput` out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from robodual_core.checkpoint import read_json, resolve_checkpoint, run_dataset_spec
from robodual_core.data import Normalizer
from robodual_core.interfaces import GeneralistOutput


class GeneralistRunner:
    """Wraps a :class:`~robodual_generalist.model.VLAGeneralist` for :mod:`robodual_core.runtime`."""

    def __init__(self, model: Any, normalizer: Normalizer, observation_spec: dict | None = None):
        self.model = model.eval()
        self.normalizer = normalizer
        self.k_g = model.k_g
        self.action_dim = model.action_dim
        self.image_key = model.cfg.image_key
        self.observation_spec = observation_spec or {}

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> GeneralistRunner:
        from robodual_generalist.model import VLAGeneralist

        path = Path(path)
        model = VLAGeneralist.from_checkpoint(path, device=device)
        ckpt = path if (path / "normalizer.json").is_file() else resolve_checkpoint(path)
        normalizer = Normalizer.from_dict(read_json(ckpt, "normalizer"))
        return cls(model, normalizer, run_dataset_spec(ckpt, [model.cfg.image_key]))

    @torch.inference_mode()
    def predict(self, observation: dict[str, np.ndarray], instruction: str) -> GeneralistOutput:
        image = np.asarray(observation[self.image_key])
        x = torch.from_numpy(np.ascontiguousarray(image)).to(self.model.device)
        x = x.permute(2, 0, 1)[None].float() / 255.0  # HWC uint8 -> [1, 3, H, W] in [0, 1], as the loader
        return self.model.generate({"obs": {self.image_key: x}, "instruction": [instruction]})

    def actions_to_env(self, actions: Any) -> np.ndarray:
        """Normalized actions ``[k_g, D]`` -> the environment's units."""
        a = actions.detach().cpu().numpy() if isinstance(actions, torch.Tensor) else np.asarray(actions)
        return np.asarray(self.normalizer.unnormalize("action", a), dtype=np.float32)
