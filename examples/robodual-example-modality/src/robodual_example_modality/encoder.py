"""A low-dimensional sensor encoded as tokens: force/torque ``[B, 6]`` -> ``[B, num_tokens, out_dim]``."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from robodual_core.data.preprocess import prepare_lowdim
from robodual_core.errors import RobodualError
from robodual_core.interfaces import SensorEncoder


class ForceTorqueEncoder(nn.Module, SensorEncoder):
    """An MLP from the (normalized) wrench to ``num_tokens`` tokens per frame, plus a frame embedding
    when ``history > 0`` (input ``[B, history + 1, 6]``, oldest first)."""

    def __init__(self, name: str = "force_torque", keys: tuple[str, ...] = ("force_torque",), dim: int = 6,
                 out_dim: int = 256, num_tokens: int = 2, hidden: int = 256, history: int = 0, **_: Any):
        super().__init__()
        self.name, self.keys, self.dim = name, tuple(keys), dim
        self.out_dim, self.history, self.trainable = out_dim, history, True
        self.tokens_per_frame = num_tokens
        self.num_tokens = num_tokens * (history + 1)
        self._config = dict(name=name, keys=list(keys), dim=dim, out_dim=out_dim, num_tokens=num_tokens,
                            hidden=hidden, history=history)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, num_tokens * out_dim))
        self.frame_embed = nn.Parameter(torch.zeros(history + 1, 1, out_dim))

    def config_dict(self) -> dict[str, Any]:
        return dict(self._config)

    def preprocess(self, arrays: dict[str, np.ndarray] | np.ndarray, normalizer: Any = None,
                   device: Any = None) -> torch.Tensor:
        """``[6]`` / ``[B, 6]`` / ``[B, T, 6]`` numpy (or a dict holding the key) -> float32 tensor with a batch dim,
        exactly what the training loader serves for the stored value (robodual_core.data.preprocess)."""
        arr = arrays[self.keys[0]] if isinstance(arrays, dict) else arrays
        # the training loader's own path: normalized with the dataset's statistics when it has them
        x = torch.from_numpy(prepare_lowdim(arr, self.keys[0], normalizer))
        x = x.unsqueeze(0) if x.dim() == 1 else x
        return x if device is None else x.to(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        if x.dim() != 3 or x.shape[1] != self.history + 1 or x.shape[2] != self.dim:
            raise RobodualError(f"sensor '{self.name}' expects [B, {self.history + 1}, {self.dim}] "
                                f"(or [B, {self.dim}] without history); found {list(x.shape)}")
        tokens = self.mlp(x).unflatten(-1, (self.tokens_per_frame, self.out_dim)) + self.frame_embed
        return tokens.flatten(1, 2)

    @classmethod
    def describe(cls, **cfg: Any) -> str:
        enc = cls(**cfg)
        params = sum(p.numel() for p in enc.parameters())
        return f"reads 'force_torque' [{enc.dim}] -> {enc.num_tokens} tokens of width {enc.out_dim}; {params / 1e6:.2f}M params"
