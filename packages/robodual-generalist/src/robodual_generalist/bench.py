"""``robodual bench generalist``: decoding speed of the tiny generalist and cache reads vs online inference.

Decoding: chunk latency (one free-running chunk of k_g actions) and action tokens/s at batch 1 and 8, with
and without the KV cache. Conditioning: the time to get a specialist batch's generalist outputs by running
the generalist online versus reading them from a generalist cache (random rows, as the sampler asks).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robodual_core.bench import measure, write_report
from robodual_generalist.config import GeneralistConfig
from robodual_generalist.model import VLAGeneralist

INSTRUCTION = "push the red block to the left"


def _batch(n: int, size: int, device: torch.device) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    return {"obs": {"rgb_static": torch.rand(n, 3, size, size, generator=g).to(device)},
            "instruction": [INSTRUCTION] * n}


def _cache_read(model: VLAGeneralist, batch_size: int, rows: int, repeats: int) -> dict[str, float]:
    import zarr

    from robodual_core.data.generalist_cache import GeneralistCache, GeneralistCacheWriter

    n_task = len(model.prompt_ids(INSTRUCTION)) - 1
    n_act = model.k_g * model.action_dim
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store.zarr"
        zarr.open_group(str(store), mode="w")
        w = GeneralistCacheWriter(store, "bench", rows, model.k_g, model.action_dim, n_task, n_act,
                                  model.hidden_size, dtype="float16")
        w.write(0, {"actions": rng.uniform(-1, 1, (rows, model.k_g, model.action_dim)).astype(np.float32),
                    "task_latents": rng.normal(size=(rows, n_task, model.hidden_size)).astype(np.float16),
                    "action_latents": rng.normal(size=(rows, n_act, model.hidden_size)).astype(np.float16),
                    "task_mask": np.ones((rows, n_task), bool), "action_mask": np.ones((rows, n_act), bool)})
        w.finalize()
        cache = GeneralistCache(store, "bench")
        idx = [torch.from_numpy(rng.integers(0, rows, batch_size)) for _ in range(64)]
        it = iter(range(10**9))
        return measure(lambda: cache.get(idx[next(it) % len(idx)]), warmup=2, repeats=max(repeats, 20))


def run_bench(out: str | Path, repeats: int = 5, device: str = "auto", cache_batch: int = 32) -> dict[str, Any]:
    from robodual_core.training import resolve_device

    dev = resolve_device(device)
    torch.manual_seed(0)
    model = VLAGeneralist(GeneralistConfig(base="tiny", lora=False), action_dim=7).to(dev).eval()
    size = model.cfg.tiny.image_size
    decode = []
    for b in (1, 8):
        batch = _batch(b, size, dev)
        for kv in (True, False):
            t = measure(lambda batch=batch, kv=kv: model.generate(batch, use_cache=kv), warmup=1, repeats=repeats)
            tokens = b * model.k_g * model.action_dim
            decode.append({"batch": b, "kv_cache": kv, "chunk_latency_s": t["median_s"],
                           "action_tokens_per_s": tokens / t["median_s"],
                           "tokens_per_s": b * model.action_tokenizer.chunk_len / t["median_s"], "timing": t})
    batch = _batch(cache_batch, size, dev)
    online = measure(lambda: model.generate(batch), warmup=1, repeats=max(2, repeats // 2))
    cached = _cache_read(model, cache_batch, rows=4096, repeats=repeats)
    results = {
        "model": {"params": sum(p.numel() for p in model.parameters()), "k_g": model.k_g,
                  "action_dim": model.action_dim, "chunk_tokens": model.action_tokenizer.chunk_len,
                  "image_size": size, "device": str(dev)},
        "decode": decode,
        "cache_vs_online": {"batch": cache_batch, "online_s": online["median_s"], "cache_s": cached["median_s"],
                            "speedup": online["median_s"] / cached["median_s"],
                            "note": "generalist conditioning per specialist batch: online free-running inference "
                                    "vs reading the cache (random rows, in memory)"},
    }
    return write_report(out, "generalist", results)
