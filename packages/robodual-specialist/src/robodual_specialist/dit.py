"""The diffusion transformer of the specialist (paper section 3.2, Table 5; DiT of Peebles & Xie).

Each action step is one token: ``Linear(concat(noised action_t, generalist action_t))``. A block is
adaLN-Zero (shift, scale, gate regressed from the timestep embedding plus the proprio embedding), a
self-attention over the action tokens with rotary embeddings (causal unless ``bidirectional``), the
conditioner (cross-attention to the condition tokens by default) and a pointwise MLP. Modulations and
the output layer start at zero, so an untrained network predicts 0.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn

from robodual_specialist.conditioners import precompute_pair
from robodual_specialist.layers import Mlp, SelfAttention, causal_mask, gated_residual, modulate, rotary


class AdaLNZero(nn.Module):
    """Base of the layers modulated by ``c``: ``ada = SiLU -> Linear(dim, chunks * dim)``, zero-initialised;
    :meth:`modulation` returns its output with 1 added to the scale chunks (scales act as ``1 + scale``)."""

    def _init_ada(self, dim: int, chunks: int, scale_chunks: tuple[int, ...]) -> None:
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, chunks * dim))
        nn.init.zeros_(self.ada[-1].weight)
        nn.init.zeros_(self.ada[-1].bias)
        offset = torch.zeros(chunks, dim)
        offset[list(scale_chunks)] = 1.0
        self.register_buffer("mod_offset", offset.flatten(), persistent=False)

    def modulation(self, c: torch.Tensor) -> torch.Tensor:
        """``[B, chunks * dim]`` from ``c [B, dim]``: shifts, ``1 + scale``s and gates in the layer's order."""
        return self.ada(c) + self.mod_offset


class DiTBlock(AdaLNZero):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, conditioner: nn.Module):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(dim, heads)
        self.cond = conditioner
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, mlp_ratio)
        self._init_ada(dim, 6, (1, 4))  # shift, scale, gate of the attention, then of the MLP

    def forward(self, x: torch.Tensor, c: torch.Tensor, pre: Any, rope: tuple[torch.Tensor, torch.Tensor],
                mask: torch.Tensor | None, mod: torch.Tensor | None = None) -> torch.Tensor:
        """``mod``: ``self.modulation(c)`` when already computed (:meth:`DiT.modulations`)."""
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.modulation(c) if mod is None else mod).chunk(6, dim=-1)
        h = modulate(self.norm1(x), shift1, scale1)
        if self.cond.joins_self_attention:
            x = gated_residual(x, gate1, self.attn(h, rope, mask, extra_kv=pre))
        else:
            x = gated_residual(x, gate1, self.attn(h, rope, mask))
            x = x + self.cond(x, pre)
        return gated_residual(x, gate2, self.mlp(modulate(self.norm2(x), shift2, scale2)))



class FinalLayer(AdaLNZero):
    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self._init_ada(dim, 2, (1,))  # shift, scale
        self.linear = nn.Linear(dim, out_dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor, mod: torch.Tensor | None = None) -> torch.Tensor:
        shift, scale = (self.modulation(c) if mod is None else mod).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiT(nn.Module):
    """``forward(x [B, T, D], gen_actions [B, T, D], t [B], c_obs [B, C], pre) -> [B, T, D]``.

    ``c_obs`` is the per-sample conditioning vector added to the timestep embedding (the proprio
    embedding); ``pre`` is ``precompute(cond, cond_mask)``, one entry per block.
    """

    def __init__(self, action_dim: int, dim: int, depth: int, heads: int, mlp_ratio: float, causal: bool,
                 conditioner_cls: type[nn.Module]):
        super().__init__()
        self.dim, self.heads, self.causal = dim, heads, causal
        self.x_in = nn.Linear(2 * action_dim, dim)
        self.t_proj = Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.t_emb = TimestepEmbedding(dim, dim)
        self.blocks = nn.ModuleList(DiTBlock(dim, heads, mlp_ratio, conditioner_cls(dim, heads)) for _ in range(depth))
        self.final = FinalLayer(dim, action_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        for block in self.blocks:
            for m in (block.attn.qkv, block.attn.proj, block.mlp[0], block.mlp[2]):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def precompute(self, cond: torch.Tensor, cond_mask: torch.Tensor) -> list[Any]:
        """Per-block conditioner state from ``cond [B, N, C]`` and ``cond_mask [B, N]`` (True = valid)."""
        return [block.cond.precompute(cond, cond_mask) for block in self.blocks]

    def precompute_pair(self, cond: torch.Tensor, mask_a: torch.Tensor, mask_b: torch.Tensor) -> list[Any]:
        """Per-block state for 2B rows sharing ``cond [B, N, C]`` with masks ``mask_a`` then ``mask_b``."""
        return [precompute_pair(block.cond, cond, mask_a, mask_b) for block in self.blocks]

    def modulations(self, timesteps: torch.Tensor, c_obs: torch.Tensor) -> list[list[torch.Tensor]]:
        """adaLN outputs of every block (and the final layer) for every denoising step, in one batched
        matmul per layer: ``[step][layer] -> [B, k * dim]``. The conditioning vector depends only on the
        proprio embedding and the step's timestep, both known before denoising starts; per-step calls
        would stream each layer's modulation weights once per step (bench: ~15% of batch-1 denoising)."""
        S, B = timesteps.shape[0], c_obs.shape[0]
        t_emb = self.t_emb(self.t_proj(timesteps.to(c_obs.device)).to(c_obs.dtype))
        c = (t_emb[:, None] + c_obs[None]).reshape(S * B, -1)
        per_layer = [layer.modulation(c).reshape(S, B, -1) for layer in (*self.blocks, self.final)]
        return [[m[i] for m in per_layer] for i in range(S)]

    def forward(self, x: torch.Tensor, gen_actions: torch.Tensor, t: torch.Tensor, c_obs: torch.Tensor,
                pre: list[Any], mods: list[torch.Tensor] | None = None,
                token_bias: torch.Tensor | None = None) -> torch.Tensor:
        """``mods``: this step's entry of :meth:`modulations` (then ``t`` and ``c_obs`` are not used).
        ``token_bias [B, T, dim]``: added to the action tokens (training-time real-time chunking's prefix flag)."""
        T = x.shape[1]
        h = self.x_in(torch.cat([x, gen_actions], dim=-1))
        if token_bias is not None:
            h = h + token_bias.to(h.dtype)
        c = None if mods is not None else self.t_emb(self.t_proj(t.expand(x.shape[0])).to(h.dtype)) + c_obs
        rope = rotary(T, self.dim // self.heads, h.device)
        mask = causal_mask(T, h.device) if self.causal else None
        for i, (block, p) in enumerate(zip(self.blocks, pre, strict=True)):
            h = block(h, c, p, rope, mask, mod=None if mods is None else mods[i])
        return self.final(h, c, mod=None if mods is None else mods[-1])
