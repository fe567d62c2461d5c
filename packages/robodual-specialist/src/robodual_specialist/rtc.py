"""Real-time chunking for the DiT specialist: smooth chunk boundaries when a chunk starts executing ``d`` control
steps after its observation (``robodual_core.runtime.latency``), both forms off by default (``model.rtc``).

**Inference time** (``rtc.inference``; Black, Galliker & Levine 2025, "Real-Time Execution of Action Chunking Flow
Policies"). The runtime hands the specialist the *committed prefix*: what the chunks already released plan for the
steps the new chunk covers (:class:`robodual_core.runtime.latency.CommittedPrefix`), of which the first ``d`` will
run while the chunk is computed. RTC inpaints the new chunk onto it with soft weights (their eq. 5): ``W_i = 1`` for
``i < d``; for ``d <= i < n`` (``n``: the rows the previous plan covers) ``W_i = c_i (e^{c_i} - 1) / (e - 1)`` with
``c_i = (n - i) / (n - d + 1)``, decaying towards the end of the overlap; 0 beyond it. The paper guides a flow
model's velocity with a vector-Jacobian product through its denoiser; this specialist predicts the sample (x0), so
the guidance acts on the prediction directly: in every DDIM step the guided x0 prediction is blended toward the
prefix, ``x0 <- x0 + s W (Y - x0)`` (``s = rtc.strength``), before the DDIM update. No extra network evaluation:
the cost is the prefix's normalization and one blend per denoising step (``robodual bench specialist`` reports it).

**Training time** (``rtc.training``; Black et al., Dec 2025, "Training-Time Action Conditioning for Efficient
Real-Time Chunking"). Each training sample draws a delay ``d ~ U{0..rtc.max_delay}``; its first ``d`` action
tokens enter the denoiser clean (the ground truth, in place of the noised actions) with a learned flag embedding
added to their tokens, and are left out of the loss. At inference the committed prefix's first ``d`` rows enter the
same way in every denoising step, so no guidance is needed for them. This sits beside the paper's tau augmentation
(the generalist's delay), which is unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


def prefix_weights(n: int, delay: int, horizon: int) -> np.ndarray:
    """Soft inpainting weights ``[horizon]`` of RTC's eq. 5: 1 for the ``delay`` committed rows, exponentially
    decaying over the rest of the ``n`` rows the previous plan covers, 0 beyond."""
    w = np.zeros(horizon, dtype=np.float32)
    n = min(int(n), horizon)
    d = min(int(delay), n)
    w[:d] = 1.0
    for i in range(d, n):
        c = (n - i) / (n - d + 1)
        w[i] = c * (math.exp(c) - 1) / (math.e - 1)
    return w


def prepare_prefix(prefix: Any, k_s: int, action_dim: int, normalizer: Any,
                   device: torch.device | str) -> dict[str, torch.Tensor]:
    """A :class:`~robodual_core.runtime.latency.CommittedPrefix` (environment units, or None) -> the model's
    ``rtc_target [1, k_s, D]`` (normalized actions), ``rtc_weights [1, k_s]`` (soft) and ``rtc_hard [1, k_s]``
    (the ``delay`` committed rows)."""
    target = np.zeros((k_s, action_dim), dtype=np.float32)
    weights = np.zeros(k_s, dtype=np.float32)
    hard = np.zeros(k_s, dtype=bool)
    if prefix is not None and len(prefix.actions):
        actions = np.asarray(prefix.actions, dtype=np.float32)[:k_s]
        if actions.shape[-1] != action_dim:
            from robodual_core.errors import RobodualError

            raise RobodualError(f"committed prefix has actions of dimension {actions.shape[-1]}; this specialist "
                                f"predicts {action_dim}")
        if normalizer is not None and "action" in normalizer.entries:
            actions = np.asarray(normalizer.normalize("action", actions), dtype=np.float32)
        n = len(actions)
        target[:n] = actions
        weights = prefix_weights(n, prefix.delay, k_s)
        hard[: min(int(prefix.delay), n)] = True
    return {"rtc_target": torch.as_tensor(target, device=device)[None],
            "rtc_weights": torch.as_tensor(weights, device=device)[None],
            "rtc_hard": torch.as_tensor(hard, device=device)[None]}


@dataclass
class PrefixGuidance:
    """What :meth:`DiTSpecialist.sample` applies in each denoising step (``rtc=``): ``before(x)`` gives the denoiser's
    input and per-token bias (training-time RTC: the hard prefix clean, with the flag), ``after(x0)`` blends the
    guided x0 prediction toward the prefix (inference-time RTC)."""

    target: torch.Tensor  # [B, k_s, D] normalized
    weights: torch.Tensor  # [B, k_s] soft weights (inference-time)
    hard: torch.Tensor  # [B, k_s] bool: the committed rows
    strength: float = 1.0
    inpaint: bool = True  # inference-time blending
    flag: torch.Tensor | None = None  # [C]: training-time RTC's flag embedding (None: not trained for it)

    def before(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.flag is None:
            return x, None
        hard = self.hard[..., None]
        x = torch.where(hard, self.target.to(x.dtype), x)
        return x, hard.to(self.flag.dtype) * self.flag

    def after(self, x0: torch.Tensor) -> torch.Tensor:
        if not self.inpaint:
            return x0
        w = (self.strength * self.weights).clamp(0, 1)[..., None].to(x0.dtype)
        return x0 + w * (self.target.to(x0.dtype) - x0)


def guidance_for(model: Any, batch: dict[str, Any]) -> PrefixGuidance | None:
    """The guidance of a batch that carries a prefix (``rtc_target`` ...), as ``model.cfg.rtc`` asks; None when the
    batch has none or both forms are off."""
    cfg = model.cfg.rtc
    if "rtc_target" not in batch or not (cfg.inference or cfg.training):
        return None
    return PrefixGuidance(batch["rtc_target"], batch["rtc_weights"], batch["rtc_hard"].bool(), cfg.strength,
                          inpaint=cfg.inference, flag=getattr(model, "rtc_flag", None) if cfg.training else None)


def training_prefix(model: Any, actions: torch.Tensor, noisy: torch.Tensor,
                    batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Training-time RTC: ``(denoiser input, token bias [B, k_s, C] or None, loss mask [B, k_s] or None)``. A sample's
    first ``d ~ U{0..max_delay}`` tokens are the clean actions, flagged, and out of the loss (``batch["rtc_delay"]``
    fixes the draws)."""
    cfg = model.cfg.rtc
    if not cfg.training or cfg.max_delay <= 0:
        return noisy, None, None
    B, k_s = actions.shape[:2]
    dev = actions.device
    delay = (batch["rtc_delay"].to(dev).long() if "rtc_delay" in batch
             else torch.randint(0, min(cfg.max_delay, k_s - 1) + 1, (B,), device=dev))
    hard = torch.arange(k_s, device=dev)[None, :] < delay[:, None]  # [B, k_s]
    x = torch.where(hard[..., None], actions, noisy)
    bias = hard[..., None].to(model.rtc_flag.dtype) * model.rtc_flag
    return x, bias, ~hard


def masked_mse(pred: torch.Tensor, target: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Mean squared error over the tokens ``keep [B, k_s]`` marks (all when None)."""
    if keep is None:
        return torch.nn.functional.mse_loss(pred, target)
    w = keep[..., None].to(pred.dtype)
    return ((pred - target) ** 2 * w).sum() / (w.sum() * pred.shape[-1]).clamp(min=1)
