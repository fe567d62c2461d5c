"""Free-running chunk decoding at the memory bound (issue 20): a static KV cache, constrained selection on the
device, and the single-token step as one CUDA graph.

The dynamic path (``VLAGeneralist.generate(..., decoding="dynamic")``) grows its cache by concatenation and picks
each token with a host-side branch: per token it launches hundreds of small kernels from Python and waits on the
GPU once. Here everything a decode step needs lives in fixed buffers:

- transformers' :class:`~transformers.StaticCache` (its write position is a device tensor that the cache advances
  in place, so a replayed step writes the next slot);
- a boolean 4-D attention mask ``[B, 1, 1, max_len]`` (True = attend) that the step itself extends, handed to the
  model as a prepared mask (transformers returns 4-D masks as they are: no mask building per token);
- the constrained choice (the separator at separator slots, the best action id elsewhere) as tensor ops indexed
  by a device slot counter: no ``.item()``, no Python branch on data.

On CUDA the step is captured once per (batch size, cache length) and replayed ``chunk_len`` times; on the CPU the
same step runs eagerly (the logic the CPU tests check against the dynamic path). The prefill runs eagerly with
SDPA on a causal, left-padding-aware 4-D mask written into the same cache.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

# a cache length bucket: prompts of different lengths share one captured graph
BUCKET = 64


def padded_length(n: int) -> int:
    return -(-n // BUCKET) * BUCKET


def prefill_mask(attention_mask: torch.Tensor, max_len: int) -> torch.Tensor:
    """``[B, 1, L, max_len]`` bool: causal over the left-padded prefix ``attention_mask [B, L]``; padding rows see
    themselves only (a fully masked SDPA row is NaN, and its keys and values would enter the cache)."""
    B, L = attention_mask.shape
    dev = attention_mask.device
    valid = attention_mask.bool()
    causal = torch.ones(L, L, dtype=torch.bool, device=dev).tril()
    mask = causal[None] & valid[:, None, :]
    mask |= torch.eye(L, dtype=torch.bool, device=dev)[None]
    full = torch.zeros(B, 1, L, max_len, dtype=torch.bool, device=dev)
    full[:, 0, :, :L] = mask
    return full


class StaticChunkDecoder:
    """Decodes ``chunk_len`` constrained tokens after a prefix, for one batch size and cache length.

    ``lm``: a transformers causal LM (``inputs_embeds``, ``cache``, ``output_hidden_states``); ``embed``: ids ->
    input embeddings; ``tokenizer``: the action tokenizer; ``layer``: the hidden-state index of the latents.
    ``graph``: capture the step with ``torch.cuda.graph`` (CUDA only; None = on CUDA).
    """

    def __init__(self, lm: Any, embed: Any, tokenizer: Any, layer: int, batch: int, max_len: int,
                 device: torch.device, dtype: torch.dtype, graph: bool | None = None):
        from transformers import StaticCache

        self.lm, self.embed, self.layer = lm, embed, layer
        self.batch, self.max_len, self.device = batch, max_len, device
        self.chunk_len = tokenizer.chunk_len
        self.first, self.end = tokenizer.first_action_id, tokenizer.vocab_size
        self.separator_id = tokenizer.separator_id
        self.graph_enabled = device.type == "cuda" if graph is None else bool(graph)
        if self.graph_enabled and device.type != "cuda":
            raise ValueError("graph capture needs a CUDA device")
        self.cache = StaticCache(config=lm.config, max_cache_len=max_len)
        self.is_sep = tokenizer.is_separator_slot().to(device)
        hidden = lm.config.hidden_size
        vocab = lm.config.vocab_size
        kw = {"device": device}
        self.tok = torch.zeros(batch, dtype=torch.long, **kw)
        self.pos = torch.zeros(batch, 1, dtype=torch.long, **kw)
        self.mask = torch.zeros(batch, 1, 1, max_len, dtype=torch.bool, **kw)
        self.slot = torch.zeros((), dtype=torch.long, **kw)
        self.logits = torch.zeros(batch, vocab, dtype=torch.float32, **kw)
        self.ids = torch.zeros(batch, self.chunk_len, dtype=torch.long, **kw)
        self.latents = torch.zeros(batch, self.chunk_len, hidden, dtype=dtype, **kw)
        self._graph: Any = None
        self.captures = 0

    # -- the step ---------------------------------------------------------------------------------
    def select(self, logits: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """Greedy constrained ids ``[B]`` for chunk position ``slot`` (a device scalar), without a host sync."""
        best = logits[:, self.first:self.end].argmax(-1) + self.first
        return torch.where(self.is_sep[slot], torch.full_like(best, self.separator_id), best)

    def _write_position(self) -> torch.Tensor:
        return self.cache.layers[0].cumulative_length.reshape(1)

    def _step(self) -> None:
        tok = self.select(self.logits, self.slot)
        self.ids.index_copy_(1, self.slot.reshape(1), tok[:, None])
        self.mask.index_fill_(-1, self._write_position(), True)  # the new token attends to itself
        out = self.lm(inputs_embeds=self.embed(tok[:, None]), attention_mask=self.mask, position_ids=self.pos,
                      cache=self.cache, use_cache=True, output_hidden_states=True, logits_to_keep=1)
        self.latents.index_copy_(1, self.slot.reshape(1), out.hidden_states[self.layer][:, -1:].to(self.latents.dtype))
        self.logits.copy_(out.logits[:, -1])
        self.pos.add_(1)
        self.slot.add_(1)

    def _capture(self) -> None:
        """One warm-up step on a side stream (state restored afterwards), then the capture."""
        layers = self.cache.layers
        saved = [t.clone() for t in (self.pos, self.mask, self.slot, self.logits, self.ids, self.latents)]
        lengths = [layer.cumulative_length.clone() for layer in layers]
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            self._step()
        torch.cuda.current_stream(self.device).wait_stream(stream)

        def restore() -> None:
            for buf, value in zip((self.pos, self.mask, self.slot, self.logits, self.ids, self.latents), saved,
                                  strict=True):
                buf.copy_(value)
            for layer, value in zip(layers, lengths, strict=True):
                layer.cumulative_length.copy_(value)

        restore()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # records the kernels without running them: the state stays as restored
            self._step()
        self._graph = graph
        self.captures += 1

    # -- a chunk ----------------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prefill ``embeds [B, L, H]`` (left-padded), then decode the chunk.

        Returns ``(hidden states of the prefix at the latent layer [B, L, H], ids [B, C], latents [B, C, H])``;
        the last two are this decoder's buffers (copy them before the next call).
        """
        B, L = attention_mask.shape
        if B != self.batch or L + self.chunk_len > self.max_len:
            raise ValueError(f"decoder for batch {self.batch} and {self.max_len} positions got batch {B} with "
                             f"{L} + {self.chunk_len}")
        if self.cache.is_initialized:
            for layer in self.cache.layers:
                layer.cumulative_length.zero_()  # the next writes start at 0; stale entries are masked
        out = self.lm(inputs_embeds=embeds, attention_mask=prefill_mask(attention_mask, self.max_len),
                      position_ids=position_ids, cache=self.cache, use_cache=True, output_hidden_states=True,
                      logits_to_keep=1)
        prefix_hidden = out.hidden_states[self.layer]
        self.logits.copy_(out.logits[:, -1])
        self.mask.zero_()
        self.mask[:, 0, 0, :L] = attention_mask.bool()
        self.pos.copy_(position_ids[:, -1:] + 1)
        self.slot.zero_()
        if self.graph_enabled:
            if self._graph is None:
                try:
                    self._capture()
                except Exception as exc:  # an op the capture cannot record: decode eagerly from now on
                    warnings.warn(f"CUDA graph capture of the decode step failed ({type(exc).__name__}: {exc}); "
                                  "decoding eagerly", RuntimeWarning, stacklevel=2)
                    self.graph_enabled = False  # the warm-up step was undone before the capture began
                    torch.cuda.synchronize(self.device)
            if self._graph is not None:
                for _ in range(self.chunk_len):
                    self._graph.replay()
                return prefix_hidden, self.ids, self.latents
        for _ in range(self.chunk_len):
            self._step()
        return prefix_hidden, self.ids, self.latents


class DecoderPool:
    """One :class:`StaticChunkDecoder` per (batch size, cache length bucket), kept between calls."""

    def __init__(self, limit: int = 4):
        self.limit = limit
        self._decoders: dict[tuple[int, int, str], StaticChunkDecoder] = {}

    def get(self, lm: Any, embed: Any, tokenizer: Any, layer: int, batch: int, prefix_len: int,
            device: torch.device, dtype: torch.dtype, graph: bool | None = None) -> StaticChunkDecoder:
        max_len = padded_length(prefix_len + tokenizer.chunk_len)
        key = (batch, max_len, str(device))
        dec = self._decoders.get(key)
        if dec is None or dec.lm is not lm:
            if len(self._decoders) >= self.limit:
                self._decoders.pop(next(iter(self._decoders)))
            dec = StaticChunkDecoder(lm, embed, tokenizer, layer, batch, max_len, device, dtype, graph)
            self._decoders[key] = dec
        return dec

    def clear(self) -> None:
        self._decoders.clear()
