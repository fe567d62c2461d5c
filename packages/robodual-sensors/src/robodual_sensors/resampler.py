"""Perceiver resampler (Flamingo, Alayrac et al. 2022): a few learned queries attend to many tokens.

Each layer: the latents attend to ``[tokens ; latents]`` (multi-head attention with heads of width
``head_dim``, so the inner width is ``heads * head_dim``), then a pointwise MLP, both residual. At width 256,
8 heads of 64 and MLP ratio 4 this is 1.05M parameters per layer, the paper's "1.1M" (Table 5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PerceiverAttention(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """x: [B, N, dim] tokens, latents: [B, Q, dim] -> [B, Q, dim] (the update, without the residual)."""
        x, latents = self.norm_media(x), self.norm_latents(latents)
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).flatten(2))


class PerceiverResampler(nn.Module):
    """``[B, N, in_dim]`` tokens -> ``[B, num_queries, dim]``.

    Tokens wider or narrower than ``dim`` are first projected to ``dim`` (e.g. DINO's 384 -> 256).
    """

    def __init__(self, in_dim: int, dim: int = 256, num_queries: int = 8, depth: int = 1, heads: int = 8,
                 head_dim: int = 64, mlp_ratio: float = 4.0):
        super().__init__()
        self.proj_in = nn.Linear(in_dim, dim) if in_dim != dim else nn.Identity()
        self.latents = nn.Parameter(torch.randn(num_queries, dim) * dim**-0.5)
        hidden = int(dim * mlp_ratio)
        self.layers = nn.ModuleList(
            nn.ModuleList([
                PerceiverAttention(dim, heads, head_dim),
                nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden, bias=False), nn.GELU(),
                              nn.Linear(hidden, dim, bias=False)),
            ])
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj_in(x)
        latents = self.latents.unsqueeze(0).expand(x.shape[0], -1, -1)
        for attn, mlp in self.layers:
            latents = latents + attn(x, latents)
            latents = latents + mlp(latents)
        return self.norm(latents)
