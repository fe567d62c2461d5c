"""``robodual bench generalist``: decoding speed of the tiny generalist and cache reads vs online inference.

Decoding: chunk latency (one free-running chunk of k_g actions) and action tokens/s at batch 1 and 8, with
and without the KV cache. Conditioning: the time to get a specialist batch's generalist outputs by running
the generalist online versus reading them from a generalist cache (random rows, as the sampler asks).
Specialist training: steps/s of the trainer ``robodual train specialist`` builds, on a small synthetic
store, conditioned on a tiny generalist's cache (``--generalist-cache``) versus the same generalist run
online (``--generalist``), the two trainers stepping in turn in one process, latents pooled per action step
as the demo caches them; optionally also with ``trainer.compile``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robodual_core.bench import measure, write_report
from robodual_core.errors import RobodualError
from robodual_core.interfaces import TrainableSpecialistFamily
from robodual_generalist.config import GeneralistConfig, TinyConfig
from robodual_generalist.model import VLAGeneralist

INSTRUCTION = "push the red block to the left"


def _batch(n: int, size: int, device: torch.device) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    return {"obs": {"rgb_static": torch.rand(n, 3, size, size, generator=g).to(device)},
            "instruction": [INSTRUCTION] * n}


def _cache_read(model: VLAGeneralist, batch_size: int, rows: int, repeats: int) -> dict[str, float]:
    import zarr

    from robodual_core.data.generalist_cache import GeneralistCache, GeneralistCacheWriter

    n_task = model.task_token_count(INSTRUCTION)
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


SPECIALIST = {"model": {"hidden": 128, "depth": 4, "heads": 4, "k_s": 8,
                        "sensors": [{"name": "rgb_static", "options": {"backbone": "vit", "image_size": 64, "width": 64,
                                                                       "depth": 2, "heads": 4, "head_dim": 16}}]},
              "data": {"image_size": 64}, "trainer": {"num_workers": 0, "warmup_steps": 1, "log_every": 1}}


def _synthetic_store(path: Path, episodes: int = 4, length: int = 40, size: int = 64) -> Path:
    from robodual_core.data import DatasetWriter

    rng = np.random.default_rng(0)
    with DatasetWriter(path, fps=10, modalities={"rgb_static": "rgb", "proprio": "proprio", "action": "action"},
                       overwrite=True) as w:
        for e in range(episodes):
            w.add_episode({"rgb_static": rng.integers(0, 255, (length, size, size, 3), dtype=np.uint8),
                           "proprio": rng.normal(size=(length, 8)).astype(np.float32),
                           "action": rng.uniform(-1, 1, (length, 7)).astype(np.float32)},
                          instruction=f"{INSTRUCTION} {e}", task=f"task{e}")
    return path


def _tiny_generalist_run(store: Path, run: Path, tiny: dict[str, Any] | None = None) -> Path:
    """One training step of a tiny generalist (``tiny``: TinyConfig overrides): a real checkpoint folder for
    the cache and for --generalist."""
    from robodual_core.data import WindowDataset
    from robodual_core.training import Trainer
    from robodual_generalist.config import TINY_TRAIN_DEFAULTS, GeneralistTrainConfig, TinyConfig

    cfg = GeneralistTrainConfig()
    m = GeneralistConfig(base="tiny", lora=False, freeze_vision=False, tiny=TinyConfig(**(tiny or {})))
    ds = WindowDataset(store, obs_keys=[m.image_key], horizon=m.k_g, k_g=m.k_g, image_size=None, split="train",
                       normalization={"action": "q99"}, augment_tau=False)
    tcfg = dataclasses.replace(cfg.trainer, **{**TINY_TRAIN_DEFAULTS["trainer"], "steps": 1, "ckpt_every": 1,
                                                "num_workers": 0})
    model = VLAGeneralist(m, action_dim=ds.action_dim)
    Trainer(model, ds, tcfg, run, extra_json={"normalizer": ds.normalizer.to_dict()}, show_progress=False).fit()
    return run


def _specialist_config(root: Path, name: str, batch: int, steps: int, compile: bool, flat_params: bool = True) -> Path:
    config = root / f"{name}.json"
    cfg = json.loads(json.dumps(SPECIALIST))
    cfg["trainer"].update({"batch_size": batch, "steps": steps, "compile": compile, "flat_params": flat_params})
    config.write_text(json.dumps(cfg))
    return config


class _Timed:
    """A batch transform that records how long each call took (the online generalist's share of a step)."""

    def __init__(self, fn: Any):
        self.fn, self.times = fn, []

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        out = self.fn(batch)
        self.times.append(time.perf_counter() - t0)
        return out


POOLING = "step"  # as the demo caches the tiny generalist (`robodual demo`: generalist cache --pooling step)
# a generalist larger than the bench's specialist (the paper's is ~400x larger): the regime the cache is for
LARGER = {"num_layers": 4, "hidden_size": 256, "intermediate_size": 512}


def _pair(times: dict[str, list[float]], cache: str, online: str, generalist_s: list[float]) -> dict[str, Any]:
    """Cache vs online figures of one generalist from the rotation's step times."""
    cached, on = float(np.median(times[cache])), float(np.median(times[online]))
    return {"cache_steps_per_s": 1 / cached, "online_steps_per_s": 1 / on, "speedup": on / cached,
            "speedup_per_pair_median": float(np.median(np.asarray(times[online]) / np.asarray(times[cache]))),
            "cache_step_s": times[cache], "online_step_s": times[online],
            "online_generalist_s": float(np.median(generalist_s)),
            "online_specialist_s": float(np.median(np.asarray(times[online]) - np.asarray(generalist_s)))}


def _sizes(trainers: dict[str, Any], suffix: str) -> dict[str, int]:
    """Parameters of the online trainer's generalist and the cache trainer's trained specialist parameters."""
    runner = trainers[f"online{suffix}"].batch_transform.fn.runner
    return {"generalist": sum(p.numel() for p in runner.model.parameters()),
            "specialist_trainable": sum(p.numel() for p in trainers[f"cache{suffix}"].model.parameters()
                                        if p.requires_grad)}


def specialist_training(steps: int = 40, batch: int = 8, warmup: int = 3, compile: bool = False,
                        larger: bool = True) -> dict[str, Any]:
    """Specialist training steps/s with the generalist cache vs the generalist run online.

    Both trainers are built as ``robodual train specialist --generalist-cache HASH`` and ``--generalist RUN``
    build them (the specialist plugin's ``build_trainer``, reached through the registry) on one store, in
    this process, and take optimizer steps in turn (cache, online, online, cache, ...): the machine's speed
    drift hits both alike, so the ratio of their median step times is a side-by-side figure. A third trainer,
    the cache one with ``trainer.flat_params=false`` (one optimizer/EMA/clipping tensor per parameter), steps
    in the same rotation: ``flat_params_speedup`` is what the flat buffers gain. ``compile`` adds the same
    pair with ``trainer.compile`` (compiled during the warm-up steps).

    The online step splits into the generalist's inference (timed inside the step) and the specialist's own
    step: the speedup is about ``1 + generalist / specialist step``, so it is set by how the generalist's
    inference compares with the specialist's training step; both sizes are reported (parameters). The tiny
    generalist is smaller than this specialist; with ``larger``, a cache/online pair conditioned on a tiny
    generalist of ``LARGER`` size (larger than the specialist, as generalists are) steps in the same rotation.
    """
    from robodual_core.plugins import registry
    from robodual_generalist.caching import build_cache

    dit = registry("specialists").get("dit")
    if not isinstance(dit, TrainableSpecialistFamily):  # declared by the protocol, not probed
        raise RobodualError("the 'dit' specialist entry declares no build_trainer "
                            "(robodual_core.interfaces.TrainableSpecialistFamily)")
    with tempfile.TemporaryDirectory(prefix="robodual-bench-generalist-") as tmp:
        root = Path(tmp)
        store = _synthetic_store(root / "store.zarr")
        gens = {"": _tiny_generalist_run(store, root / "generalist")}
        if larger:
            gens["_larger"] = _tiny_generalist_run(store, root / "generalist_larger", tiny=LARGER)
        sources: dict[str, dict[str, Any]] = {}
        for suffix, gen in gens.items():
            h = build_cache(gen, store, batch_size=32, dtype="float16", pooling=POOLING,
                            show_progress=False)["checkpoint_hash"]
            sources[f"cache{suffix}"] = {"generalist_cache": h}
            sources[f"online{suffix}"] = {"generalist": gen, "generalist_pooling": POOLING}
        kinds = {"eager": False, **({"compiled": True} if compile else {})}
        out: dict[str, Any] = {"batch": batch, "steps": steps, "warmup": warmup, "pooling": POOLING,
                               "target_speedup": 5.0, "specialist": SPECIALIST["model"],
                               "generalist": "tiny (VLAGeneralist, 64x64 images, word tokenizer)"}
        for kind, flag in kinds.items():
            config = _specialist_config(root, kind, batch, warmup + steps, flag)
            names = list(sources) if kind == "eager" else ["cache", "online"]
            trainers = {src: dit.build_trainer(store, root / f"{kind}_{src}", config=config, overwrite=True,
                                               show_progress=False, **sources[src]) for src in names}
            if kind == "eager":
                per_tensor = _specialist_config(root, "per_tensor", batch, warmup + steps, flag, flat_params=False)
                trainers["cache_per_tensor"] = dit.build_trainer(store, root / "per_tensor", config=per_tensor,
                                                                 overwrite=True, show_progress=False,
                                                                 **sources["cache"])
            timed = {src: _Timed(t.batch_transform) for src, t in trainers.items() if src.startswith("online")}
            for src, wrapper in timed.items():
                trainers[src].batch_transform = wrapper
            batches = {}
            for src, trainer in trainers.items():
                trainer.model.train()
                batches[src] = trainer.batches()
                for _ in range(warmup):
                    trainer.train_step(batches[src])
            times: dict[str, list[float]] = {src: [] for src in trainers}
            for wrapper in timed.values():
                wrapper.times.clear()
            for i in range(steps):
                for src in (list(trainers) if i % 2 == 0 else list(trainers)[::-1]):
                    t0 = time.perf_counter()
                    trainers[src].train_step(batches[src])
                    times[src].append(time.perf_counter() - t0)
            row = _pair(times, "cache", "online", timed["online"].times)
            row["generalist_source"] = {src: {"online": bool(t.extra_json["generalist"].get("online")),
                                              "hash": t.extra_json["generalist"]["hash"]}
                                        for src, t in trainers.items()}
            if kind == "eager":
                out["params"] = _sizes(trainers, "")
                per = float(np.median(times["cache_per_tensor"]))
                row.update({"flat_params_speedup": per / float(np.median(times["cache"])),
                            "cache_per_tensor_step_s": times["cache_per_tensor"],
                            "flat_params_note": "the cache trainer with trainer.flat_params=false, in the same rotation"})
                if larger:
                    out["larger_generalist"] = {"tiny": LARGER, "params": _sizes(trainers, "_larger"),
                                                **_pair(times, "cache_larger", "online_larger",
                                                        timed["online_larger"].times)}
                out.update(row)
            else:
                out["compiled"] = row
    return out


# --size: the tiny generalist, or an OpenVLA-7B-sized one (random weights, bf16: Prismatic ViT-L/14 at 224 +
# a LLaMA-2-7B-shaped decoder), built through the same classes
MODEL_SIZES: dict[str, tuple[dict[str, Any], str]] = {
    "tiny": ({}, "float32"),
    "7b": ({"image_size": 224, "patch_size": 14, "vision_dim": 1024, "vision_depth": 24, "vision_heads": 16,
            "hidden_size": 4096, "num_layers": 32, "num_heads": 32, "intermediate_size": 11008}, "bfloat16"),
}
DECODINGS = ("static", "dynamic", "recompute")


def _model_row(model: VLAGeneralist, dev: torch.device) -> dict[str, Any]:
    lm = model.vla.language_model
    return {"params": sum(p.numel() for p in model.parameters()), "k_g": model.k_g, "action_dim": model.action_dim,
            "chunk_tokens": model.action_tokenizer.chunk_len, "image_size": model.cfg.tiny.image_size,
            "lm_bytes": sum(p.numel() * p.element_size() for p in lm.parameters()), "dtype": model.cfg.dtype,
            "device": str(dev)}


def _decode_limits(model: VLAGeneralist, dev: torch.device) -> dict[str, Any] | None:
    from robodual_core.bench import gpu_limits, memory_floor_ms

    if dev.type != "cuda":
        return None
    limits = gpu_limits(dev)
    lm_bytes = _model_row(model, dev)["lm_bytes"]
    return {**(limits or {}), "decode_floor_ms_per_token": memory_floor_ms(lm_bytes, limits),
            "targets": {"ms_per_token_batch_1": 6.0, "ms_per_token_batch_8": 8.0, "chunk_s": 0.4,
                        "single_action_hz": 25.0}}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def decode_table(model: VLAGeneralist, dev: torch.device, repeats: int, heavy: bool = False
                 ) -> list[dict[str, Any]]:
    """Chunk decoding (k_g steps) and OpenVLA's single action (k_g = 1: action_dim tokens, a model sharing the
    weights) at batch 1 and 8, each decoding mode timed in interleaved rounds. ``heavy`` (a 7B model) skips the
    no-cache recompute at batch 8."""
    from robodual_core.bench import interleaved

    single = VLAGeneralist(dataclasses.replace(model.cfg, k_g=1), action_dim=model.action_dim, vla=model.vla,
                           text_tokenizer=model.text_tokenizer, meta=model.meta).eval()
    rows = []
    size = model.cfg.tiny.image_size
    for b in (1, 8):
        batch = _batch(b, size, dev)
        for label, m in (("chunk", model), ("single_action", single)):
            modes = [d for d in DECODINGS if not (heavy and b == 8 and d == "recompute")]

            def run(mode: str, m: VLAGeneralist = m, batch: dict[str, Any] = batch) -> None:
                m.generate(batch, decoding=mode)
                _sync(dev)

            with torch.inference_mode():
                times = interleaved({mode: functools.partial(run, mode) for mode in modes}, repeats, warmup=2)
            tokens = m.action_tokenizer.chunk_len
            for mode in modes:
                t = sorted(times[mode]["total"])
                med = t[len(t) // 2]
                rows.append({"batch": b, "what": label, "decoding": mode, "kv_cache": mode != "recompute",
                             "tokens": tokens, "chunk_latency_s": med, "ms_per_token": 1e3 * med / tokens,
                             "tokens_per_s": b * tokens / med, "action_tokens_per_s": b * m.k_g * m.action_dim / med,
                             "hz": 1.0 / med, "n": len(t)})
    return rows


def lora_training(model_size: str, dev: torch.device, steps: int, batch_size: int) -> dict[str, Any]:
    """LoRA fine-tuning steps of a generalist of ``model_size`` (bf16 autocast on CUDA, fused AdamW on the
    adapters): tokens/s, step time, peak memory, FLOPs counted on one step and, on CUDA, the model FLOP
    utilisation against the card's bf16 peak."""
    from torch.utils.flop_counter import FlopCounterMode

    from robodual_core.bench import gpu_limits

    tiny, dtype = MODEL_SIZES[model_size]
    cfg = GeneralistConfig(base="tiny", lora=True, lora_rank=32, dtype=dtype, tiny=TinyConfig(**tiny),
                           gradient_checkpointing=model_size != "tiny")
    torch.manual_seed(0)
    with torch.device(dev):
        model = VLAGeneralist(cfg, action_dim=7)
    model = model.to(dev).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=dev.type in ("cpu", "cuda"))
    size = model.cfg.tiny.image_size
    batch = _batch(batch_size, size, dev)
    batch["action"] = torch.rand(batch_size, model.k_g, model.action_dim, device=dev) * 2 - 1
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda"
                else contextlib.nullcontext())
    prefix_len = 1 + model.vla.num_patches + model.task_token_count(INSTRUCTION)
    tokens = batch_size * (prefix_len + model.action_tokenizer.chunk_len)

    def step() -> None:
        with autocast:
            loss, _ = model.loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(dev)

    step()  # warm-up (and the optimizer's state)
    with FlopCounterMode(display=False) as counter:
        step()
    flop = counter.get_total_flops()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t = measure(step, warmup=0, repeats=steps)
    out = {"size": model_size, "batch_size": batch_size, "tokens_per_step": tokens, "step_s": t["median_s"],
           "tokens_per_s": tokens / t["median_s"], "flop_per_step": flop, "n": t["n"],
           "trainable_params": sum(p.numel() for p in params),
           "params": sum(p.numel() for p in model.parameters()), "gradient_checkpointing": cfg.gradient_checkpointing}
    if dev.type == "cuda":
        limits = gpu_limits(dev)
        out["peak_gpu_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
        if limits and limits.get("bf16_tflop_s"):
            out["mfu"] = flop / t["median_s"] / (limits["bf16_tflop_s"] * 1e12)
            out["mfu_target"] = 0.30
    return out


def run_bench(out: str | Path, repeats: int = 5, device: str = "auto", cache_batch: int = 32,
              train_steps: int = 40, compile: bool = False, model_size: str = "tiny",
              lora_steps: int = 2, lora_batch: int = 4) -> dict[str, Any]:
    from robodual_core.training import resolve_device

    dev = resolve_device(device)
    torch.manual_seed(0)
    if model_size not in MODEL_SIZES:
        raise RobodualError(f"--size is {model_size!r}; expected one of {', '.join(MODEL_SIZES)}")
    tiny, dtype = MODEL_SIZES[model_size]
    cfg = GeneralistConfig(base="tiny", lora=False, dtype=dtype, tiny=TinyConfig(**tiny))
    with torch.device(dev):
        model = VLAGeneralist(cfg, action_dim=7)
    model = model.to(dev).eval()
    size = model.cfg.tiny.image_size
    decode = decode_table(model, dev, repeats, heavy=model_size != "tiny")
    if model_size != "tiny":  # a 7B model: the decoding figures are the point; no cache/training comparison
        results = {"model": _model_row(model, dev), "decode": decode, "hardware": _decode_limits(model, dev)}
        del model
        if lora_steps > 0:
            results["lora_training"] = lora_training(model_size, dev, lora_steps, lora_batch)
        return write_report(out, "generalist", results)
    batch = _batch(cache_batch, size, dev)
    online = measure(lambda: model.generate(batch), warmup=1, repeats=max(2, repeats // 2))
    cached = _cache_read(model, cache_batch, rows=4096, repeats=repeats)
    results = {
        "model": _model_row(model, dev),
        "decode": decode,
        "cache_vs_online": {"batch": cache_batch, "online_s": online["median_s"], "cache_s": cached["median_s"],
                            "speedup": online["median_s"] / cached["median_s"],
                            "note": "generalist conditioning per specialist batch: online free-running inference "
                                    "vs reading the cache (random rows, in memory)"},
    }
    if lora_steps > 0:
        results["lora_training"] = lora_training(model_size, dev, lora_steps, lora_batch)
    if train_steps > 0:
        results["specialist_training"] = specialist_training(steps=train_steps, compile=compile)
    return write_report(out, "generalist", results)
