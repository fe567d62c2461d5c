"""``robodual bench sensors``: encode time and FLOPs per frame, optimized versus naive path.

Optimized: ``eval()``, ``torch.inference_mode()``, the frozen backbone without autograd (as at control
time). Naive: the same weights in fp32 with autograd on for every parameter, no inference mode (what a
straightforward ``module(x)`` in a training script costs).
"""

from __future__ import annotations

import copy
import statistics
import warnings
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from robodual_core.bench import interleaved
from robodual_core.plugins import registry
from robodual_sensors.backbones import find_dino_weights


def _build(name: str, image_size: int, **extra: Any) -> tuple[Any, str]:
    cls = registry("sensors").get(name)
    if name == "language":
        return cls(), "pretrained"
    cfg: dict[str, Any] = dict(image_size=image_size, **extra)
    weights = "n/a (trainable)"
    if name.startswith("rgb"):
        if find_dino_weights(None) is None:
            cfg["random_init"] = True
            weights = "random init (no DINO weights on disk; timing and FLOPs are the same)"
        else:
            weights = "pretrained"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(**cfg).eval(), weights


def _naive(enc: Any) -> Any:
    naive = copy.deepcopy(enc)
    naive.requires_grad_(True)
    naive.trainable = True  # backbone runs with autograd like any trainable module
    return naive


def _inputs(enc: Any, batch: int, image_size: int, step: int = 0) -> Any:
    if enc.name == "language":
        return [f"instruction number {step}-{i}: open the drawer" for i in range(batch)]
    g = torch.Generator().manual_seed(step)
    return torch.rand(batch, enc.cfg.in_chans, image_size, image_size, generator=g)


def _interleaved(fns: dict[str, Any], repeats: int, warmup: int = 1) -> dict[str, dict[str, float]]:
    """Time several paths call by call in turn (A B A B ...), so that load from other processes on a
    shared machine hits them alike; per path: median and min seconds per call."""
    times = {k: v["total"] for k, v in interleaved(fns, repeats, warmup).items()}
    return {k: {"median_s": statistics.median(v), "min_s": min(v), "n": len(v)} for k, v in times.items()}


def _per_item(t: dict[str, dict[str, float]], fast: str, slow: str, n: int, unit: str, names: tuple[str, str]
              ) -> dict[str, float]:
    return {
        f"ms_per_{unit}{names[0]}": 1e3 * t[fast]["median_s"] / n,
        f"ms_per_{unit}{names[1]}": 1e3 * t[slow]["median_s"] / n,
        f"ms_per_{unit}{names[0]}_min": 1e3 * t[fast]["min_s"] / n,
        f"ms_per_{unit}{names[1]}_min": 1e3 * t[slow]["min_s"] / n,
        "speedup": t[slow]["median_s"] / t[fast]["median_s"],
        "speedup_min": t[slow]["min_s"] / t[fast]["min_s"],
        "n": t[fast]["n"],
    }


def _flops(fn: Any) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def bench_modality(name: str, batch_sizes: list[int], image_size: int, repeats: int) -> dict[str, Any]:
    """Times and FLOPs of one registered sensor, per frame."""
    enc, weights = _build(name, image_size)
    result: dict[str, Any] = {"weights": weights, "description": registry("sensors").entry(name).description,
                              "params": sum(p.numel() for p in enc.parameters()),
                              "trainable_params": sum(p.numel() for p in enc.parameters() if p.requires_grad)}
    if name == "language":
        return {**result, **_bench_language(enc, batch_sizes, repeats)}
    naive = _naive(enc)
    x1 = _inputs(enc, 1, image_size)
    # FlopCounterMode's module tracker fails under no_grad/inference_mode; forward FLOPs do not depend on it.
    result["flops_per_frame"] = _flops(lambda: enc(x1))
    for b in batch_sizes:
        x = _inputs(enc, b, image_size)

        def fast(x=x):
            with torch.inference_mode():
                enc(x)

        def slow(x=x):
            with torch.enable_grad():
                naive(x)

        t = _interleaved({"fast": fast, "slow": slow}, repeats)
        result[f"batch_{b}"] = _per_item(t, "fast", "slow", b, "frame", ("", "_naive"))
    return result


def _bench_language(enc: Any, batch_sizes: list[int], repeats: int) -> dict[str, Any]:
    """Language: a new instruction runs the text model; a seen one is a cache lookup + projection."""
    out: dict[str, Any] = {"model": enc.cfg.model, "embed_dim": enc.embed_dim}
    enc.embed(["warm up the text model"])
    impl = enc.embedder._load()
    if not isinstance(impl, tuple):
        out["flops_per_instruction"] = _flops(lambda: impl.encode(["open the drawer"], convert_to_numpy=True))
    counter = iter(range(10**9))
    for b in batch_sizes:
        def fresh(b=b):
            step = next(counter)
            with torch.inference_mode():
                enc(_inputs(enc, b, 0, step))

        cached_texts = _inputs(enc, b, 0, -1)
        enc.embed(cached_texts)

        def cached(texts=cached_texts):
            with torch.inference_mode():
                enc(texts)

        t = _interleaved({"cached": cached, "fresh": fresh}, repeats)
        out[f"batch_{b}"] = _per_item(t, "cached", "fresh", b, "instruction", ("_cached", "_uncached"))
    return out


def bench_rgb_history_cache(image_size: int, repeats: int) -> dict[str, Any]:
    """``rgb_static`` with one history frame at batch 1, stepping through new frames: features of the
    previous frame reused (cache) versus both frames encoded every step (two copies, one stream each)."""
    enc, _ = _build("rgb_static", image_size, history=1)
    plain = copy.deepcopy(enc)
    plain.cfg.cache_features = False
    streams = {}
    for key, model in (("cached", enc), ("plain", plain)):
        frames = iter(_inputs(enc, 1, image_size, step) for step in range(10**9))
        streams[key] = (model, frames, [next(frames)])

    def step(key: str) -> None:
        model, frames, prev = streams[key]
        cur = next(frames)
        with torch.inference_mode():
            model(torch.stack([prev[0], cur], dim=1))
        prev[0] = cur

    t = _interleaved({"cached": lambda: step("cached"), "plain": lambda: step("plain")}, repeats)
    return {**_per_item(t, "cached", "plain", 1, "step", ("_cached", "_uncached")), "cache_hits": enc.cache_hits}


def print_table(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"sensor encoders at {results['image_size']} px (per frame / instruction)")
    for col in ("sensor", "batch", "ms (median)", "ms naive/uncached", "speedup", "speedup (min)", "GFLOPs"):
        table.add_column(col, justify="right" if col != "sensor" else "left")
    for name, r in results["modalities"].items():
        flops = r.get("flops_per_frame", r.get("flops_per_instruction"))
        for b in results["batch_sizes"]:
            m = r.get(f"batch_{b}", {})
            fast = m.get("ms_per_frame", m.get("ms_per_instruction_cached", float("nan")))
            slow = m.get("ms_per_frame_naive", m.get("ms_per_instruction_uncached", float("nan")))
            table.add_row(name, str(b), f"{fast:.2f}", f"{slow:.2f}", f"{m.get('speedup', float('nan')):.2f}x",
                          f"{m.get('speedup_min', float('nan')):.2f}x", f"{flops / 1e9:.3f}" if flops else "-")
    cache = results.get("rgb_history_cache")
    if cache:
        table.add_row("rgb_static history=1 (cache)", "1", f"{cache['ms_per_step_cached']:.2f}",
                      f"{cache['ms_per_step_uncached']:.2f}", f"{cache['speedup']:.2f}x", f"{cache['speedup_min']:.2f}x", "-")
    Console().print(table)
