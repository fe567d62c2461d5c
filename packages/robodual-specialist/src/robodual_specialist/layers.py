"""Building blocks of the DiT specialist: attention with rotary embeddings and masks, adaLN helpers.

Masks are boolean with True = may attend (``torch.nn.functional.scaled_dot_product_attention``'s
convention). The causal mask is passed to the attention call itself, so it cannot be a no-op.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import get_1d_rotary_pos_embed
from torch import nn


def modulate(x: torch.Tensor, shift: torch.Tensor, scale_plus_one: torch.Tensor) -> torch.Tensor:
    """adaLN: ``x [B, T, C]`` scaled by ``1 + scale`` and shifted, with per-sample ``[B, C]`` vectors
    (one fused op; the block adds the 1 to all its scales at once)."""
    return torch.addcmul(shift.unsqueeze(1), x, scale_plus_one.unsqueeze(1))


def gated_residual(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x + gate[:, None] * y`` in one op."""
    return torch.addcmul(x, gate.unsqueeze(1), y)


@functools.lru_cache(maxsize=32)
def rotary(seq_len: int, head_dim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary position embedding for positions 0..T-1 (cached), as ``(cos, signed sin)`` of shape
    ``[T, 1, 1, head_dim]`` for :func:`apply_rotary` on ``[B, T, n, heads, head_dim]`` tensors.

    diffusers' ``get_1d_rotary_pos_embed(use_real=True)`` gives ``cos, sin`` with each frequency repeated
    for a pair of channels ``(2i, 2i + 1)``; the pair rotates as ``(x0, x1) -> (x0 cos - x1 sin,
    x1 cos + x0 sin)``, i.e. ``x * cos + swap(x) * [-sin, +sin]``: the sign is folded into ``sin`` here.
    """
    with torch.inference_mode(False), torch.no_grad():  # cached: must stay usable outside inference mode
        cos, sin = get_1d_rotary_pos_embed(head_dim, seq_len, use_real=True)
        sign = torch.tensor([-1.0, 1.0], dtype=cos.dtype).repeat(head_dim // 2)
        return cos[:, None, None].to(device), (sin * sign)[:, None, None].to(device)


def apply_rotary(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotary embedding of ``x [B, T, ..., head_dim]`` (queries and keys together): three ops, equal to
    diffusers' ``apply_rotary_emb(use_real=True, use_real_unbind_dim=-1)`` (tested)."""
    cos, sin = (r.to(x.dtype) for r in rope)  # no-op in the cached dtype; a float64 model gets float64
    swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    return torch.addcmul(x * cos, swapped, sin)


@functools.lru_cache(maxsize=32)
def causal_mask(seq_len: int, device: torch.device) -> torch.Tensor:
    """``[T, T]`` bool, True where query i may attend key j (j <= i) (cached)."""
    with torch.inference_mode(False):
        return torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril()


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[B, N, C]`` -> ``[B, heads, N, C / heads]``."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2).flatten(2)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Scaled dot-product attention on ``[B, h, N, d]`` tensors; ``mask`` broadcasts to ``[B, h, Nq, Nk]``."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the action tokens with rotary embeddings.

    ``extra_kv``: keys and values ``[B, h, N, d]`` of condition tokens that every action token may also
    attend to (used by the in-context conditioner), with ``extra_mask [B, N]`` (True = valid).
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None,
                extra_kv: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        qkv = self.qkv(x).unflatten(-1, (3, self.heads, -1))  # [B, T, 3, h, d]
        qk = apply_rotary(qkv[:, :, :2], rope).permute(2, 0, 3, 1, 4)  # [2, B, h, T, d]
        q, k, v = qk[0], qk[1], qkv[:, :, 2].transpose(1, 2)
        if extra_kv is not None:
            ek, ev, emask = extra_kv
            t = x.shape[1]
            self_mask = mask if mask is not None else torch.ones(t, t, dtype=torch.bool, device=x.device)
            # [B, 1, T, T + N]: the action-token part keeps its causal structure, condition tokens are all visible
            mask = torch.cat([self_mask.expand(x.shape[0], 1, t, t),
                              emask[:, None, None, :].expand(-1, 1, t, -1)], dim=-1)
            k, v = torch.cat([k, ek], dim=2), torch.cat([v, ev], dim=2)
        return self.proj(merge_heads(attend(q, k, v, mask)))


class Mlp(nn.Sequential):
    def __init__(self, dim: int, ratio: float):
        hidden = int(dim * ratio)
        super().__init__(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
