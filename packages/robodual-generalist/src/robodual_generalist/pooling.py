"""Latent pooling of generalist outputs (the cache's and the runtime's: what the specialist trained on)."""

from __future__ import annotations

import torch

from robodual_core.data.generalist_cache import POOLINGS
from robodual_core.errors import RobodualError
from robodual_core.interfaces import GeneralistOutput

__all__ = ["POOLINGS", "pool_output"]


def pool_output(out: GeneralistOutput, pooling: str, k_g: int) -> GeneralistOutput:
    """Shrink the latents for the cache: ``step`` averages each time step's D action tokens, ``mean``
    averages the task tokens (valid ones) and the action tokens into one token each."""
    if pooling == "none":
        return out
    b, na, h = out.action_latents.shape
    if pooling == "step":
        act = out.action_latents.reshape(b, k_g, na // k_g, h).mean(2)
        return GeneralistOutput(out.actions, out.task_latents, act, out.task_mask,
                                torch.ones((b, k_g), dtype=torch.bool, device=act.device))
    if pooling == "mean":
        m = out.task_mask.unsqueeze(-1).float()
        task = (out.task_latents * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp(min=1)
        act = out.action_latents.mean(1, keepdim=True)
        ones = torch.ones((b, 1), dtype=torch.bool, device=act.device)
        return GeneralistOutput(out.actions, task, act, ones, ones.clone())
    raise RobodualError(f"--pooling is {pooling!r}; expected one of {', '.join(POOLINGS)}")
