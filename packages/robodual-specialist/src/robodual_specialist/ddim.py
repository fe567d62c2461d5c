"""Deterministic DDIM (eta = 0) steps as fixed coefficients: the same arithmetic as diffusers'
``DDIMScheduler.step``, without its host-side indexing.

``DDIMScheduler.step`` looks up ``alphas_cumprod[timestep]`` on the CPU with the step's timestep, so on a GPU every
denoising step waits for the device, and a step cannot be captured in a CUDA graph. The coefficients depend only
on the schedule and the number of inference steps, so they are computed once per chain as Python floats.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DDIMChain:
    """``timesteps`` of the chain and per step ``(sqrt a_t, sqrt(1 - a_t), sqrt a_prev, sqrt(1 - a_prev))``."""

    timesteps: torch.Tensor
    coefficients: tuple[tuple[float, float, float, float], ...]
    prediction_type: str
    clip: float | None

    @classmethod
    def from_scheduler(cls, scheduler: object, steps: int, device: torch.device | str = "cpu") -> DDIMChain:
        cfg = scheduler.config  # type: ignore[attr-defined]
        if getattr(cfg, "thresholding", False):
            raise ValueError("DDIMChain does not implement dynamic thresholding")
        if cfg.prediction_type not in ("sample", "epsilon"):
            raise ValueError(f"DDIMChain supports prediction_type sample or epsilon, not {cfg.prediction_type!r}")
        scheduler.set_timesteps(steps, device="cpu")  # type: ignore[attr-defined]
        timesteps = scheduler.timesteps.clone()  # type: ignore[attr-defined]
        alphas = scheduler.alphas_cumprod.double()  # type: ignore[attr-defined]
        final = float(scheduler.final_alpha_cumprod)  # type: ignore[attr-defined]
        stride = cfg.num_train_timesteps // steps
        coeffs = []
        for t in timesteps.tolist():
            a_t = float(alphas[t])
            prev = t - stride
            a_prev = float(alphas[prev]) if prev >= 0 else final
            coeffs.append((a_t ** 0.5, (1 - a_t) ** 0.5, a_prev ** 0.5, (1 - a_prev) ** 0.5))
        clip = float(cfg.clip_sample_range) if cfg.clip_sample else None
        return cls(timesteps.to(device), tuple(coeffs), cfg.prediction_type, clip)

    def step(self, i: int, model_output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``x_{t_i}`` and the model's output at step ``i`` -> ``x`` at the next step (pure tensor ops)."""
        sa, sb, sa_prev, sb_prev = self.coefficients[i]
        if self.prediction_type == "sample":
            x0 = model_output
            eps = (x - sa * x0) / sb
        else:
            eps = model_output
            x0 = (x - sb * eps) / sa
        if self.clip is not None:
            x0 = x0.clamp(-self.clip, self.clip)
        return sa_prev * x0 + sb_prev * eps
