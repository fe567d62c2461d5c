"""``robodual bench specialist``: control-step latency, FLOPs and training throughput at paper settings.

One control step = the sensor encoders (static RGB with one history frame, static depth, gripper RGB,
gripper depth) + 5 DDIM steps with classifier-free guidance, conditioned on ~100 generalist tokens.
Variants switch off, one at a time and then all together, what this implementation does to be fast:

- ``kv_cache``: conditioner keys/values computed once per control step, not per denoising step;
- ``adapter_cache``: observation-only conditioning (generalist latent projection, sensor resamplers)
  computed once per control step;
- ``cfg_batching``: conditional and unconditional passes as one batch;
- ``frame_cache``: the history frame's frozen-backbone features reused from the previous control step;
- ``modulation cache`` (part of ``adapter_cache``): the adaLN modulations of all denoising steps in one
  batched call per layer;
- ``backbone_batching``: the static and gripper RGB frames through the shared frozen DINO in one batch.

``optimized`` is the default configuration: its encoders run under bf16 autocast where the hardware has
native bf16 (``model.inference_autocast: auto``; the report says which); ``optimized_fp32`` forces fp32.
The ablations switch one thing off from ``optimized_fp32``; ``all_off`` is the reference implementation's
structure (fp32). The frozen DINO RGB encoders are built with
random weights (a speed benchmark needs none; the report says so), the same in both RGB sensors, as when
both load the pretrained DINO.
"""

from __future__ import annotations

import contextlib
import os
import resource
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from robodual_core.bench import interleaved, measure, write_report
from robodual_core.interfaces import GeneralistOutput
from robodual_specialist.config import SensorConfig, SpecialistConfig
from robodual_specialist.model import DiTSpecialist, SamplingPath, autocast_enabled, count_trainable

ANCHOR = {"control_step_ms": 560.0, "encoders_ms": 307.0, "denoising_ms": 257.0, "gflop": 44.0,
          "source": "authors' implementation at these settings on the 2-core machines (issue 5)"}
TARGETS = {"control_step_ratio": 0.4, "denoising_ratio": 0.25}
FP32 = {"inference_autocast": "off"}
VARIANTS = {
    "optimized": {"inference_autocast": "auto"},
    "optimized_fp32": FP32,
    "no_kv_cache": {**FP32, "cache_kv": False},
    "no_adapter_cache": {**FP32, "cache_adapters": False},
    "no_cfg_batching": {**FP32, "batch_cfg": False},
    "no_frame_cache": {**FP32, "frame_cache": False},
    "no_backbone_batching": {**FP32, "backbone_batching": False},
    "all_off": {**FP32, "cache_kv": False, "cache_adapters": False, "batch_cfg": False, "frame_cache": False,
                "backbone_batching": False},
}


def paper_model(generalist_dim: int) -> DiTSpecialist:
    sensors = [SensorConfig("rgb_static", {"history": 1, "random_init": True}), SensorConfig("depth_static"),
               SensorConfig("rgb_gripper", {"random_init": True}), SensorConfig("depth_gripper")]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "DINO randomly initialised": intended here
        model = DiTSpecialist(SpecialistConfig(generalist_dim=generalist_dim, sensors=sensors)).eval()
    # one DINO for both cameras, as the pretrained weights would be
    model.sensors["rgb_gripper"].backbone.load_state_dict(model.sensors["rgb_static"].backbone.state_dict())
    return model


def fake_generalist(B: int, tokens: int, H: int, k_g: int, D: int, device: Any = "cpu") -> GeneralistOutput:
    na = min(tokens - 1, k_g * (D + 1))  # OpenVLA: D action tokens + a separator per step
    nt = tokens - na
    kw = {"device": device}
    return GeneralistOutput(torch.rand(B, k_g, D, **kw) * 2 - 1, torch.randn(B, nt, H, **kw),
                            torch.randn(B, na, H, **kw), torch.ones(B, nt, dtype=torch.bool, **kw),
                            torch.ones(B, na, dtype=torch.bool, **kw))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ControlLoop:
    """Consecutive control steps on a moving camera stream (each step's history frame is the previous
    step's current frame, as at run time)."""

    def __init__(self, model: DiTSpecialist, B: int, gen: GeneralistOutput, size: int = 224):
        self.model, self.B, self.gen, self.size = model, B, gen, size
        self.device = gen.actions.device
        self.frames = [torch.rand(B, 3, size, size, device=self.device) for _ in range(4)]
        self.i = 0

    def batch(self) -> dict[str, Any]:
        B, s, kw = self.B, self.size, {"device": self.device}
        cur, prev = self.frames[self.i % 4], self.frames[(self.i - 1) % 4]
        self.i += 1
        return {"obs": {"rgb_static": torch.stack([prev, cur], dim=1), "rgb_gripper": cur.flip(-1),
                        "depth_static": torch.randn(B, 1, s, s, **kw), "depth_gripper": torch.randn(B, 1, s, s, **kw)},
                "proprio": torch.rand(B, 7, **kw) * 2 - 1, "tau": torch.zeros(B, dtype=torch.long, **kw),
                "generalist": self.gen}

    def resampler_fn(self) -> Any:
        """Per-step recomputation of the sensor resamplers from the last backbone features (adapter cache off)."""
        feats: dict[str, torch.Tensor] = {}
        model = self.model

        for name, enc in model.sensors.items():
            enc.resampler.register_forward_pre_hook(lambda mod, args, name=name: feats.__setitem__(name, args[0]))

        def fn() -> torch.Tensor:
            tokens = []
            for i, (name, enc) in enumerate(model.sensors.items()):
                tok = enc.resampler(feats[name]).unflatten(0, (self.B, -1))
                if enc.frame_embed is not None:
                    tok = tok + enc.frame_embed
                tokens.append(model.sensor_proj[name](tok.flatten(1, 2)) + model.source_embed[3 + i])
            return torch.cat(tokens, dim=1)

        return fn


def _set_frame_cache(model: DiTSpecialist, on: bool) -> None:
    for enc in model.sensors.values():
        if hasattr(enc, "cfg") and hasattr(enc.cfg, "cache_features"):
            enc.cfg.cache_features = on
        if hasattr(enc, "reset_cache"):
            enc.reset_cache()


@contextlib.contextmanager
def frozen(model: torch.nn.Module) -> Iterator[None]:
    """no_grad with every parameter's requires_grad off: FlopCounterMode's module tracker fails on views
    of parameters made under no_grad (they keep requires_grad without a grad_fn)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        with torch.no_grad():
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _apply(model: DiTSpecialist, opts: dict[str, Any], obs_fn: Any) -> dict[str, Any]:
    """Set a variant's model switches (config, frame cache, ``model.sampling``); returns ``sample`` kwargs."""
    opts = dict(opts)
    _set_frame_cache(model, opts.pop("frame_cache", True))
    model.cfg.batch_shared_backbones = opts.pop("backbone_batching", True)
    model.cfg.inference_autocast = opts.pop("inference_autocast", "off")
    if not opts.get("cache_adapters", True):
        opts["obs_tokens_fn"] = obs_fn
    model.sampling = SamplingPath(**opts)
    return {}


def time_variants(model: DiTSpecialist, loop: ControlLoop, variants: dict[str, dict[str, Any]], repeats: int,
                  obs_fn: Any) -> dict[str, dict[str, Any]]:
    """Every variant timed in interleaved rounds (one control step of each per round), so drifting machine
    speed hits all of them alike. Each timed step follows an untimed one of the same variant, so the frame
    cache holds the previous frame as it would in a running loop."""
    def step(kw: dict[str, Any]) -> dict[str, float]:
        batch = loop.batch()
        _sync(loop.device)
        t0 = time.perf_counter()
        obs = model.encode_observation(batch)
        _sync(loop.device)
        t1 = time.perf_counter()
        model.sample(batch, obs_tokens=obs, **kw)
        _sync(loop.device)
        return {"encoders": t1 - t0, "denoising": time.perf_counter() - t1}

    def run(opts: dict[str, Any]) -> dict[str, float]:
        kw = _apply(model, opts, obs_fn)
        step(kw)  # untimed: fills the frame cache
        split = step(kw)
        return {**split, "total": split["encoders"] + split["denoising"]}

    with torch.inference_mode():
        splits = interleaved({name: lambda opts=opts: run(opts) for name, opts in variants.items()}, repeats)
    out: dict[str, dict[str, Any]] = {}
    for name, opts in variants.items():
        kw = _apply(model, opts, obs_fn)
        with frozen(model):
            batch = loop.batch()  # fills the frame cache (as in a running loop) before counting
            model.sample(batch, obs_tokens=model.encode_observation(batch), **kw)
            with FlopCounterMode(display=False) as counter:
                batch = loop.batch()
                model.sample(batch, obs_tokens=model.encode_observation(batch), **kw)
        med = {k: statistics.median(v) for k, v in splits[name].items()}
        total = sorted(splits[name]["total"])
        out[name] = {"control_step_ms": 1e3 * med["total"], "encoders_ms": 1e3 * med["encoders"],
                     "denoising_ms": 1e3 * med["denoising"],
                     "iqr_ms": 1e3 * (total[(3 * len(total)) // 4] - total[len(total) // 4]), "n": len(total),
                     "gflop_per_step": counter.get_total_flops() / 1e9}
    return out


def time_static_step(model: DiTSpecialist, loop: ControlLoop, repeats: int, precisions: tuple[str, ...]
                     ) -> dict[str, dict[str, Any]]:
    """The whole control step on static buffers (CUDA graph replay on CUDA, eager on the CPU) side by side with
    ``optimized`` (``encode_observation`` + ``sample``, eager), in interleaved rounds."""
    from robodual_specialist.graphed import StaticControlStep

    _apply(model, VARIANTS["optimized"], None)
    batch = loop.batch()
    steps = {p: StaticControlStep(model, batch, loop.gen, loop.device, precision=p) for p in precisions}

    def eager() -> None:
        b = loop.batch()
        model.sample(b, obs_tokens=model.encode_observation(b))
        _sync(loop.device)

    def static(step: StaticControlStep) -> None:
        step(loop.batch(), loop.gen)
        _sync(loop.device)

    fns = {"eager_optimized": eager, **{f"static_{p}": (lambda s=s: static(s)) for p, s in steps.items()}}
    with torch.inference_mode():
        samples = interleaved(fns, repeats, warmup=2)
    out: dict[str, dict[str, Any]] = {}
    for name, times in samples.items():
        t = sorted(times["total"])
        out[name] = {"control_step_ms": 1e3 * statistics.median(t), "iqr_ms": 1e3 * (t[(3 * len(t)) // 4] - t[len(t) // 4]),
                     "n": len(t)}
    for p, step in steps.items():
        out[f"static_{p}"].update(graph=step._graph is not None, precision=p,
                                  vs_eager_optimized=out[f"static_{p}"]["control_step_ms"]
                                  / out["eager_optimized"]["control_step_ms"])
    return out


def time_rtc(model: DiTSpecialist, loop: ControlLoop, repeats: int) -> dict[str, Any]:
    """The extra work per control step of inference-time real-time chunking (robodual_specialist.rtc): the eager
    ``optimized`` step without a prefix and with one (normalizing the committed prefix of ``d = 2`` rows planned
    over 6, building its weights, one blend per denoising step), in interleaved rounds."""
    import numpy as np

    from robodual_core.runtime.latency import CommittedPrefix
    from robodual_specialist.rtc import prepare_prefix

    _apply(model, VARIANTS["optimized"], None)
    cfg = model.cfg
    saved = cfg.rtc.inference
    prefix = CommittedPrefix(np.zeros((min(6, cfg.k_s), cfg.action_dim), np.float32), delay=2)

    def step(rtc_on: bool) -> None:
        b = loop.batch()
        if rtc_on:
            rows = [prepare_prefix(prefix, cfg.k_s, cfg.action_dim, model.normalizer, loop.device)
                    for _ in range(loop.B)]  # per session, as the runner prepares it
            b.update({k: torch.cat([r[k] for r in rows]) for k in rows[0]})
        model.sample(b, obs_tokens=model.encode_observation(b))
        _sync(loop.device)

    try:
        cfg.rtc.inference = True
        with torch.inference_mode():
            samples = interleaved({"off": lambda: step(False), "inference_rtc": lambda: step(True)}, repeats)
    finally:
        cfg.rtc.inference = saved
    off, on = (statistics.median(samples[k]["total"]) for k in ("off", "inference_rtc"))
    # the RTC work alone (prefix preparation and one blend per DDIM step), timed apart: on a shared machine the
    # difference of two whole control steps is within their noise
    from robodual_specialist.rtc import PrefixGuidance

    steps = len(model.ddim_chain(cfg.diffusion.inference_steps, loop.device).timesteps)

    def rtc_work() -> None:
        rows = [prepare_prefix(prefix, cfg.k_s, cfg.action_dim, model.normalizer, loop.device) for _ in range(loop.B)]
        b = {k: torch.cat([r[k] for r in rows]) for k in rows[0]}
        guide = PrefixGuidance(b["rtc_target"], b["rtc_weights"], b["rtc_hard"], cfg.rtc.strength)
        x0 = torch.zeros(loop.B, cfg.k_s, cfg.action_dim, device=loop.device)
        for _ in range(steps):
            x0 = guide.after(x0)
        _sync(loop.device)

    work = statistics.median(interleaved({"rtc": rtc_work}, max(20, repeats), warmup=3)["rtc"]["total"])
    return {"control_step_ms": 1e3 * off, "with_inference_rtc_ms": 1e3 * on, "rtc_extra_ms": 1e3 * (on - off),
            "rtc_extra_ratio": on / off, "rtc_work_ms": 1e3 * work, "n": repeats,
            "prefix": "d = 2 committed rows of 6 planned"}


def denoise_flops(model: DiTSpecialist, loop: ControlLoop, opts: dict[str, Any], obs_fn: Any) -> float:
    """GFLOP of the denoising loop alone (encoders excluded)."""
    kw = _apply(model, opts, obs_fn)
    with frozen(model):
        batch = loop.batch()
        obs = model.encode_observation(batch)
        with FlopCounterMode(display=False) as counter:
            model.sample(batch, obs_tokens=obs, **kw)
    return counter.get_total_flops() / 1e9


def train_throughput(model: DiTSpecialist, B: int, steps: int, gen_tokens: int, H: int) -> dict[str, Any]:
    model.train()
    dev = model.null_tokens.device
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-3, fused=dev.type in ("cpu", "cuda"))
    loop = ControlLoop(model, B, fake_generalist(B, gen_tokens, H, model.cfg.k_g, model.cfg.action_dim, dev))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else contextlib.nullcontext()

    def step() -> None:
        batch = loop.batch()
        batch["action"] = torch.rand(B, model.cfg.k_s, model.cfg.action_dim, device=dev) * 2 - 1
        with autocast:  # as the trainer: bf16 mixed precision on CUDA
            loss, _ = model.loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        _sync(dev)

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res = measure(step, warmup=1, repeats=steps)
    model.eval()
    out = {"batch_size": B, "steps_per_s": 1.0 / res["median_s"], "step_s": res["median_s"], "n": res["n"],
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "peak_rss_mib_before_training": rss_before}
    if dev.type == "cuda":
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return out


def loader_vs_training(training: dict[str, Any], workdir: Path, seconds: float = 10.0) -> dict[str, Any]:
    """The data loader at paper settings (2 RGB + 2 depth views at 224, proprio, 8-step chunk) against the
    samples/s that training consumes, measured in the same run (issue 3's target: ratio >= 2 with 2 workers)."""
    import tempfile

    from robodual_core.data.bench_loader import loader_report, synthetic_store

    consumed = training["batch_size"] * training["steps_per_s"]
    with tempfile.TemporaryDirectory(dir=workdir if workdir.is_dir() else None) as tmp:
        store = synthetic_store(Path(tmp) / "paper.zarr")
        report = loader_report(store, (0, 2), batch_size=32, seconds=seconds, consumption_samples_per_s=consumed)
    report["target"] = "loader with 2 workers >= 2x the samples/s specialist training consumes"
    return report


def run_bench(out: Path, repeats: int = 10, train_batch: int = 64, train_steps: int = 3,
              generalist_tokens: int = 100, generalist_dim: int = 4096, threads: int | None = None,
              quick: bool = False, device: str = "cpu", batch_sizes: tuple[int, ...] = (1, 8)) -> dict[str, Any]:
    from rich.console import Console

    from robodual_core.training import resolve_device

    console = Console(stderr=True)
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    torch.manual_seed(0)
    model = paper_model(generalist_dim).to(dev)
    D, k_g = model.cfg.action_dim, model.cfg.k_g
    results: dict[str, Any] = {
        "settings": {"dit": "6 blocks, hidden 256, 8 heads, MLP 4, k_s 8", "ddim_steps": 5, "guidance_scale": 3.0,
                     "sensors": "rgb_static (+1 history frame), depth_static, rgb_gripper, depth_gripper; 224x224",
                     "generalist_tokens": generalist_tokens, "generalist_dim": generalist_dim,
                     "batch_sizes": list(batch_sizes),
                     "trainable_params": count_trainable(model),
                     "total_params": sum(p.numel() for p in model.parameters()),
                     "rgb_encoder_weights": "random init (frozen DINO ViT-S/16 architecture; speed benchmark only), "
                                            "the same in both RGB sensors",
                     "load_average_1m": os.getloadavg()[0], "device": str(dev),
                     "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None},
        "anchor": ANCHOR, "targets": TARGETS, "latency": {},
    }
    variants = ({k: VARIANTS[k] for k in ("optimized", "optimized_fp32", "all_off")} if quick
                else VARIANTS)
    reps = 3 if quick else repeats
    for B in batch_sizes:
        gen = fake_generalist(B, generalist_tokens, generalist_dim, k_g, D, dev)
        loop = ControlLoop(model, B, gen)
        obs_fn = loop.resampler_fn()
        console.print(f"[bold]bench specialist[/]: batch {B}, {len(variants)} variants in interleaved rounds")
        per_b = time_variants(model, loop, variants, reps if B == 1 else max(3, reps // 2), obs_fn)
        for name, opts in variants.items():
            per_b[name]["denoising_gflop"] = denoise_flops(model, loop, opts, obs_fn)
        results["latency"][f"batch_{B}"] = per_b
        console.print(f"[bold]bench specialist[/]: batch {B}, inference-time real-time chunking beside none")
        rtc_row = time_rtc(model, ControlLoop(model, B, gen), reps if B == 1 else max(3, reps // 2))
        results.setdefault("rtc", {})[f"batch_{B}"] = rtc_row
        per_b["optimized"]["rtc_extra_ms"] = rtc_row["rtc_extra_ms"]  # the column: what RTC adds per control step
        per_b["optimized"]["rtc_work_ms"] = rtc_row["rtc_work_ms"]  # and its own work, timed apart
        precisions = ("fp32", "bf16") if dev.type == "cuda" else ("fp32",)
        console.print(f"[bold]bench specialist[/]: batch {B}, the static (CUDA-graph) step beside eager")
        results.setdefault("static_step", {})[f"batch_{B}"] = time_static_step(
            model, ControlLoop(model, B, gen), reps if B == 1 else max(3, reps // 2), precisions)
        _apply(model, VARIANTS["optimized"], None)
    if dev.type == "cuda":
        from robodual_core.bench import compute_floor_ms, gpu_limits

        limits = gpu_limits(dev)
        gflop = results["latency"]["batch_1"]["optimized_fp32"]["gflop_per_step"]
        results["hardware"] = {**(limits or {}), "control_step_gflop_batch_1": gflop,
                               "compute_floor_ms_batch_1": compute_floor_ms(gflop * 1e9, limits),
                               "targets_ms": {"batch_1": 5.0, "batch_8": 8.0}}
    model.cfg.inference_autocast = "off"
    b1 = results["latency"]["batch_1"]["optimized"]
    b1_fp32 = results["latency"]["batch_1"]["optimized_fp32"]
    results["encoder_precision_default"] = "bf16" if autocast_enabled("auto", dev.type) else "fp32"
    results["vs_anchor_fp32"] = {
        "control_step_ratio": b1_fp32["control_step_ms"] / ANCHOR["control_step_ms"],
        "denoising_ratio": b1_fp32["denoising_ms"] / ANCHOR["denoising_ms"],
    }
    ref = results["latency"]["batch_1"]["all_off"]
    # absolute times drift on shared machines (30% over one session here); this ratio is side by side
    results["vs_reference_structure_same_run"] = {
        "control_step_ratio": b1["control_step_ms"] / ref["control_step_ms"],
        "denoising_ratio": b1["denoising_ms"] / ref["denoising_ms"],
    }
    results["vs_anchor"] = {
        "comparable": dev.type == "cpu",  # the anchor was measured on the 2-core CPU machines
        "control_step_ratio": b1["control_step_ms"] / ANCHOR["control_step_ms"],
        "denoising_ratio": b1["denoising_ms"] / ANCHOR["denoising_ms"],
        "control_step_target_met": b1["control_step_ms"] <= TARGETS["control_step_ratio"] * ANCHOR["control_step_ms"],
        "denoising_target_met": b1["denoising_ms"] <= TARGETS["denoising_ratio"] * ANCHOR["denoising_ms"],
    }
    if not quick and train_batch > 0:
        console.print(f"[bold]bench specialist[/]: training steps at batch {train_batch}")
        results["training"] = train_throughput(model, train_batch, train_steps, generalist_tokens, generalist_dim)
        results["loader"] = loader_vs_training(results["training"], out.parent)
    report = write_report(out, "specialist", results)
    r = results["vs_anchor"]
    console.print(f"control step (batch 1, encoders {results['encoder_precision_default']}): "
                  f"{b1['control_step_ms']:.0f} ms = {r['control_step_ratio']:.2f}x the anchor (target "
                  f"{TARGETS['control_step_ratio']}x); encoders {b1['encoders_ms']:.0f} ms, denoising "
                  f"{b1['denoising_ms']:.0f} ms = {r['denoising_ratio']:.2f}x (target {TARGETS['denoising_ratio']}x); "
                  f"fp32: {b1_fp32['control_step_ms']:.0f} ms = {results['vs_anchor_fp32']['control_step_ratio']:.2f}x")
    same = results["vs_reference_structure_same_run"]
    console.print(f"side by side with the reference structure (all_off, fp32) in this run: control step "
                  f"{same['control_step_ratio']:.2f}x, denoising {same['denoising_ratio']:.2f}x")
    rtc1 = results["rtc"]["batch_1"]
    console.print(f"inference-time real-time chunking adds {rtc1['rtc_extra_ms']:.2f} ms per control step at batch 1 "
                  f"({rtc1['rtc_extra_ratio']:.3f}x side by side; its own work {rtc1['rtc_work_ms']:.3f} ms)")
    console.print(f"report: {out}")
    return report
