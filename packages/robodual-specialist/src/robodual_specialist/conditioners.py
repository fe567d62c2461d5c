"""How condition tokens enter a DiT block (registered as ``conditioners``): cross-attention (the paper's
default), FiLM and in-context (the ablation of the paper's Fig. 6c).

Each block owns one conditioner. ``precompute(cond [B, N, C], cond_mask [B, N])`` runs once per control
step (keys/values, pooled FiLM parameters); ``forward(x [B, T, C], pre)`` runs in every denoising step
and returns the residual update of ``x``. The in-context conditioner instead joins the block's
self-attention (``joins_self_attention``): its precomputed keys/values are appended to the action tokens'.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from robodual_core.interfaces import Conditioner
from robodual_specialist.layers import attend, merge_heads, split_heads


def precompute_pair(cond_module: Any, cond: torch.Tensor, mask_a: torch.Tensor, mask_b: torch.Tensor) -> Any:
    """State for a batch of 2B rows: ``cond [B, N, C]`` with ``mask_a`` (rows 0..B-1) and ``mask_b``
    (rows B..2B-1), as classifier-free guidance needs (same tokens, different masks). Conditioners whose
    projections ignore the mask compute them once for B rows (``precompute_pair`` method)."""
    if hasattr(cond_module, "precompute_pair"):
        return cond_module.precompute_pair(cond, mask_a, mask_b)
    return cond_module.precompute(torch.cat([cond, cond]), torch.cat([mask_a, mask_b]))


class CrossAttentionConditioner(nn.Module, Conditioner):
    """Action tokens (queries) attend to the condition tokens (keys/values) with a key padding mask."""

    joins_self_attention = False

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm_x = nn.LayerNorm(dim)
        self.norm_cond = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def precompute(self, cond: torch.Tensor, cond_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        k, v = (split_heads(t, self.heads) for t in self.kv(self.norm_cond(cond)).chunk(2, dim=-1))
        return {"k": k, "v": v, "mask": cond_mask[:, None, None, :]}

    def precompute_pair(self, cond: torch.Tensor, mask_a: torch.Tensor, mask_b: torch.Tensor) -> dict[str, Any]:
        """Keys/values of B rows shared by both halves of the 2B-row batch: :meth:`forward` puts each
        sample's two query sets side by side (one attention over ``2T`` queries) instead of repeating them."""
        pre = self.precompute(cond, mask_a)
        return {"k": pre["k"], "v": pre["v"], "mask": torch.stack([mask_a, mask_b], dim=1)[:, None, :, None, :],
                "pair": True}

    def forward(self, x: torch.Tensor, pre: dict[str, Any]) -> torch.Tensor:
        q = self.q(self.norm_x(x))
        if not pre.get("pair"):
            return self.proj(merge_heads(attend(split_heads(q, self.heads), pre["k"], pre["v"], pre["mask"])))
        B2, T, C = q.shape
        B = B2 // 2
        q = q.view(2, B, T, C).transpose(0, 1).reshape(B, 2 * T, C)  # [B, (pair, T), C]
        mask = pre["mask"].expand(-1, -1, -1, T, -1).flatten(2, 3)  # [B, 1, 2T, N]: each half its own mask
        out = merge_heads(attend(split_heads(q, self.heads), pre["k"], pre["v"], mask))
        return self.proj(out.view(B, 2, T, C).transpose(0, 1).reshape(B2, T, C))


class FiLMConditioner(nn.Module, Conditioner):
    """FiLM (Perez et al. 2018): the masked mean of the condition tokens regresses a per-channel scale
    and shift of the action tokens. Zero-initialised, so it starts as the identity."""

    joins_self_attention = False

    def __init__(self, dim: int, heads: int):
        super().__init__()
        del heads
        self.norm_x = nn.LayerNorm(dim)
        self.norm_cond = nn.LayerNorm(dim)
        self.film = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        nn.init.zeros_(self.film[-1].weight)
        nn.init.zeros_(self.film[-1].bias)

    def precompute(self, cond: torch.Tensor, cond_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        w = cond_mask.to(cond.dtype).unsqueeze(-1)
        pooled = (self.norm_cond(cond) * w).sum(1) / w.sum(1).clamp_min(1.0)
        gamma, beta = self.film(pooled).chunk(2, dim=-1)
        return {"gamma": gamma, "beta": beta}

    def forward(self, x: torch.Tensor, pre: dict[str, torch.Tensor]) -> torch.Tensor:
        h = self.norm_x(x)
        return h * pre["gamma"].unsqueeze(1) + pre["beta"].unsqueeze(1)


class InContextConditioner(nn.Module, Conditioner):
    """Condition tokens as extra keys/values of the block's self-attention (prefix tokens).

    Unlike prepending tokens to the input sequence, the condition tokens are re-projected from the same
    input in every block instead of being updated by the blocks, so their keys/values stay cacheable.
    """

    joins_self_attention = True

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm_cond = nn.LayerNorm(dim)
        self.kv = nn.Linear(dim, 2 * dim)

    def precompute(self, cond: torch.Tensor, cond_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        k, v = (split_heads(t, self.heads) for t in self.kv(self.norm_cond(cond)).chunk(2, dim=-1))
        return k, v, cond_mask

    def precompute_pair(self, cond: torch.Tensor, mask_a: torch.Tensor, mask_b: torch.Tensor) -> tuple[torch.Tensor, ...]:
        k, v, _ = self.precompute(cond, mask_a)
        return k.repeat(2, 1, 1, 1), v.repeat(2, 1, 1, 1), torch.cat([mask_a, mask_b])

    def forward(self, x: torch.Tensor, pre: Any) -> torch.Tensor:
        raise RuntimeError("the in-context conditioner joins the self-attention; the block passes its "
                           "precomputed keys/values there instead of calling it")
