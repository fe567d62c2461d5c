"""``robodual bench runtime``: control rate of the dual system with a slowed generalist (async vs sync).

The generalist is padded with sleep to k times the specialist's measured latency (k = 1, 4, 10), which
models a large VLA on a slow link without changing what the specialist computes. Every figure comes
from one run, on one fixed observation from the dataset, so the ratios are comparable.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from robodual_cli.console import err, out
from robodual_core.cli_groups import group

MAX_SESSIONS = 256  # lockstep sessions of bench runtime: each is a thread with its own policy session


class InstantGeneralist:
    """Returns one precomputed chunk at no cost: the specialist's own control rate, conditioning included."""

    def __init__(self, runner, output):
        self.runner, self.output, self.k_g = runner, output, runner.k_g

    def predict(self, observation, instruction):
        return self.output

    def actions_to_env(self, actions):
        return self.runner.actions_to_env(actions)


class SlowedGeneralist:
    """Wraps a generalist runner so each call takes ``target_s`` seconds (at least its own time)."""

    def __init__(self, runner, target_s: float):
        self.runner, self.target_s, self.k_g = runner, target_s, runner.k_g

    def predict(self, observation, instruction):
        t0 = time.perf_counter()
        result = self.runner.predict(observation, instruction)
        time.sleep(max(0.0, self.target_s - (time.perf_counter() - t0)))
        return result

    def actions_to_env(self, actions):
        return self.runner.actions_to_env(actions)


# --synthetic: freshly built models (random weights) through the registry, no checkpoint or dataset: "tiny"
# checks the path on a CPU in seconds; "7b" is the GPU setting (an OpenVLA-7B-sized generalist in bf16
# and the paper's specialist: 4 sensors at 224 with frozen DINO ViT-S/16, +1 history frame, 5 DDIM steps + CFG).
SYNTHETIC = {
    "tiny": {"generalist": ["model.lora=false", "model.k_g=8"], "image": 64,
             "specialist": {"hidden": 64, "depth": 2, "heads": 4, "k_s": 8, "k_g": 8,
                            "sensors": [{"name": n, "options": {"backbone": "vit", "image_size": 64, "width": 32,
                                                                "depth": 1, "heads": 2, "head_dim": 16,
                                                                **({"history": 1, "trainable": False}
                                                                   if n == "rgb_static" else {})}}
                                        for n in ("rgb_static", "depth_static", "rgb_gripper", "depth_gripper")]}},
    "7b": {"generalist": ["model.lora=false", "model.k_g=8", "model.dtype=bfloat16", "model.tiny.image_size=224",
                          "model.tiny.patch_size=14", "model.tiny.vision_dim=1024", "model.tiny.vision_depth=24",
                          "model.tiny.vision_heads=16", "model.tiny.hidden_size=4096", "model.tiny.num_layers=32",
                          "model.tiny.num_heads=32", "model.tiny.intermediate_size=11008"], "image": 224,
           "specialist": {"sensors": [{"name": "rgb_static", "options": {"history": 1, "random_init": True}},
                                      {"name": "depth_static", "options": {}},
                                      {"name": "rgb_gripper", "options": {"random_init": True}},
                                      {"name": "depth_gripper", "options": {}}]}},
}


def synthetic_runners(size: str, device: str) -> tuple[object, object, dict, str]:
    """(generalist runner, specialist runner, one observation, instruction) of freshly built models."""
    import warnings

    import numpy as np
    import torch

    from robodual_core.data import Normalizer
    from robodual_core.errors import RobodualError
    from robodual_core.families import generalist_family
    from robodual_core.plugins import registry
    from robodual_core.runtime.runners import GeneralistModelRunner
    from robodual_core.training import resolve_device

    if size not in SYNTHETIC:
        raise RobodualError(f"--synthetic is {size!r}; expected one of {', '.join(SYNTHETIC)}")
    preset, dev = SYNTHETIC[size], resolve_device(device)
    torch.manual_seed(0)
    family = generalist_family("openvla")
    cfg = family.train_config(None, preset["generalist"], {}).model
    with torch.device(dev):
        gen_model = family.build(cfg, action_dim=7)
    gen_model = gen_model.to(dev).eval()
    gen = GeneralistModelRunner(gen_model, Normalizer({}))
    spec_cls = registry("specialists").get("dit")
    spec_cfg = {**preset["specialist"], "action_dim": 7, "proprio_dim": 7,
                "generalist_dim": int(gen_model.hidden_size)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "DINO randomly initialised": intended for a speed benchmark
        spec_model = spec_cls.from_config_dict({"family": "dit", "specialist": spec_cfg}, load_weights=True)
    if not hasattr(spec_model, "as_runner"):
        raise RobodualError("the 'dit' specialist cannot make a runner from a built model (as_runner)")
    spec_model.normalizer = Normalizer({})  # raw depth: no dataset statistics for random inputs
    spec = spec_model.as_runner(dev)
    rng = np.random.default_rng(0)
    s = preset["image"]
    obs = {"rgb_static": rng.integers(0, 256, (s, s, 3), dtype=np.uint8),
           "rgb_gripper": rng.integers(0, 256, (s, s, 3), dtype=np.uint8),
           "depth_static": rng.uniform(0.5, 2.0, (s, s)).astype(np.float32),
           "depth_gripper": rng.uniform(0.5, 2.0, (s, s)).astype(np.float32),
           "proprio": rng.uniform(-1, 1, 7).astype(np.float32)}
    return gen, spec, obs, "open the drawer and push the blue block into it"


def latency_rates(generalist, specialist, obs, instruction, steps: int, latency) -> dict:
    """The sync dual system with deterministic latency (counted in control steps) beside the same without: a model
    with latency d is asked at most every d steps, so the control rate says what the latency saves in compute."""
    from robodual_core.runtime import DualSystemPolicy, measure_rate

    row = {"generalist_steps": latency.generalist, "specialist_steps": latency.specialist}
    for name, lat in (("without", None), ("with", latency)):
        pol = DualSystemPolicy(generalist, specialist, mode="sync", latency=lat)
        row[f"sync_{name}_latency_hz"] = measure_rate(pol, obs, instruction, steps)
        row[f"calls_{name}_latency"] = dict(pol.stats)
    return row


def synthetic_report(size: str, device: str, steps: int, repeats: int = 5) -> dict:
    """Control rates of the dual system with freshly built models: the specialist alone (its generalist
    costing nothing), the generalist's chunk period, and the asynchronous dual system (generalist in a thread
    of this process, on the same device)."""
    import torch

    from robodual_core.bench import gpu_limits, measure
    from robodual_core.runtime import DualSystemPolicy, SpecialistOnlyPolicy, measure_rate

    gen, spec, obs, instruction = synthetic_runners(size, device)
    dev = spec.device

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def timed(fn) -> float:
        return measure(lambda: (fn(), sync()), warmup=2, repeats=repeats)["median_s"]

    out_g = gen.predict(obs, instruction)
    chunk_s = timed(lambda: gen.predict(obs, instruction))
    spec_s = timed(lambda: spec.predict(obs, instruction, out_g, 0))
    base = DualSystemPolicy(InstantGeneralist(gen, out_g), spec, mode="sync")
    spec_rate = measure_rate(base, obs, instruction, steps)
    alone = measure_rate(SpecialistOnlyPolicy(spec), obs, instruction, steps)
    dual = DualSystemPolicy(gen, spec, mode="async")
    dual_rate = measure_rate(dual, obs, instruction, steps)
    calls = dict(dual.stats)
    dual.close()
    return {"synthetic": size, "device": str(dev), "gpu": gpu_limits(dev) if dev.type == "cuda" else None,
            "generalist_params": sum(p.numel() for p in gen.model.parameters()),
            "specialist_params": sum(p.numel() for p in spec.model.parameters()),
            "static_step": spec.static_step_enabled() if hasattr(spec, "static_step_enabled") else None,
            "generalist_chunk_s": chunk_s, "generalist_chunk_hz": 1 / chunk_s, "specialist_step_ms": 1e3 * spec_s,
            "specialist_only_hz": spec_rate, "specialist_without_generalist_tokens_hz": alone,
            "dual_async_hz": dual_rate, "dual_async_vs_specialist_only": dual_rate / spec_rate,
            "dual_async_calls": calls,
            "async": "generalist in a thread of this process on the same device (no checkpoint for a process)",
            "targets": {"dual_async_hz": 100.0, "paper_hz": 15.0}}


def register(app: typer.Typer) -> None:
    bench = group(app, "bench")

    @bench.command("runtime")
    def runtime(
        policy: Path = typer.Option(None, "--policy", help="A specialist run trained with a generalist (dual system)."),
        dataset: Path = typer.Option(None, "--dataset", help="Store to take one observation from."),
        synthetic: str = typer.Option(None, "--synthetic", help="Instead of --policy/--dataset: freshly built models "
                                      "with random weights, 'tiny' or '7b' (an OpenVLA-7B-sized generalist and the "
                                      "paper's specialist; for a GPU)."),
        device: str = typer.Option("auto", "--device", help="With --synthetic: auto, cpu, cuda."),
        steps: int = typer.Option(40, "--steps", help="Control steps per measurement."),
        factors: str = typer.Option("1,4,10", "--factors", help="Generalist slowdowns k (comma separated)."),
        sessions: int = typer.Option(8, "--sessions", help="Also: this many sync sessions in lockstep, their model "
                                     "calls batched (eval --batch), vs one (0: skip)."),
        out_file: Path = typer.Option(Path("bench_out/runtime.json"), "--out", help="JSON report path."),
        latency: str = typer.Option("", "--latency", help="Also: the sync dual system with deterministic latency "
                                    "in control steps, e.g. 'generalist=16,specialist=2', vs none."),
    ) -> None:
        """Async and sync control rate with a generalist k times slower than the specialist, vs the specialist alone."""
        from robodual_cli.commands.eval_offline import check_min, check_policy_dir, observation_keys
        from robodual_core.bench import write_report
        from robodual_core.checkpoint import resolve_checkpoint
        from robodual_core.data import open_dataset
        from robodual_core.errors import RobodualError
        from robodual_core.runtime import (
            DualSystemPolicy,
            SpecialistOnlyPolicy,
            generalist_for_specialist,
            load_runner,
            measure_rate,
        )
        from robodual_core.runtime.latency import parse_latency
        from robodual_core.runtime.rate import lockstep_rate

        check_min("--steps", steps, 1, "a number of control steps")
        lat = parse_latency(latency)
        check_min("--sessions", sessions, 0, "a number of lockstep sessions (0: skip)")
        if sessions > MAX_SESSIONS:
            raise RobodualError(f"--sessions: expected at most {MAX_SESSIONS} lockstep sessions (one thread and one "
                                f"policy session each), found {sessions}")
        if synthetic is not None:
            if policy is not None or dataset is not None:
                raise RobodualError("--synthetic builds its own models: give it without --policy and --dataset")
            results = synthetic_report(synthetic, device, steps)
            if not lat.zero:
                gen, spec, obs, instruction = synthetic_runners(synthetic, device)
                results["latency"] = latency_rates(gen, spec, obs, instruction, steps, lat)
            write_report(out_file, "runtime", results)
            out.print(f"dual system (async) {results['dual_async_hz']:.1f} Hz, specialist only "
                      f"{results['specialist_only_hz']:.1f} Hz, generalist chunk every "
                      f"{results['generalist_chunk_s'] * 1e3:.0f} ms; report: {out_file}")
            return
        if policy is None or dataset is None:
            raise RobodualError("bench runtime needs --policy RUN and --dataset STORE (or --synthetic tiny|7b)")
        check_policy_dir("--policy", policy)
        try:
            ks = [int(x) for x in factors.split(",") if x.strip()]
        except ValueError:
            ks = []
        if not ks or min(ks) < 1:
            raise RobodualError(f"--factors: expected comma-separated whole numbers >= 1 like '1,4,10', found "
                                f"'{factors}'")
        ckpt = resolve_checkpoint(policy)
        if not (ckpt / "generalist.json").is_file():
            raise RobodualError(f"'{policy}' was trained without a generalist; bench runtime needs a dual-system run")
        specialist = load_runner("specialist", ckpt)
        generalist = generalist_for_specialist(ckpt)
        ds = open_dataset(dataset)
        keys = observation_keys(ds, SpecialistOnlyPolicy(specialist))
        ep = ds.episode(0, keys)
        obs = {k: v[0] for k, v in ep.items()}
        instruction = ds.instructions[0]
        t0 = time.perf_counter()
        for _ in range(5):
            out_g = generalist.predict(obs, instruction)
        gen_s = (time.perf_counter() - t0) / 5
        t0 = time.perf_counter()
        for _ in range(5):
            specialist.predict(obs, instruction, out_g, 0)
        spec_s = (time.perf_counter() - t0) / 5
        err.print(f"specialist {spec_s * 1e3:.1f} ms/call, generalist {gen_s * 1e3:.1f} ms/call (unslowed)")
        # the baseline is the same specialist with the same conditioning, its generalist costing nothing
        base = DualSystemPolicy(InstantGeneralist(generalist, out_g), specialist, mode="sync")
        spec_rate = measure_rate(base, obs, instruction, steps)
        unconditioned = measure_rate(SpecialistOnlyPolicy(specialist), obs, instruction, steps)
        results = {"specialist_ms": spec_s * 1e3, "generalist_ms_unslowed": gen_s * 1e3,
                   "specialist_only_hz": spec_rate, "specialist_without_generalist_tokens_hz": unconditioned,
                   "factors": {}}
        remote = generalist_for_specialist(ckpt, process=True)  # what load_policy uses in async mode
        for k in ks:
            row = {}
            for mode, runner in (("async", remote), ("async_thread", generalist), ("sync", generalist)):
                pol = DualSystemPolicy(SlowedGeneralist(runner, k * spec_s), specialist, mode=mode.split("_")[0])
                row[f"{mode}_hz"] = measure_rate(pol, obs, instruction, steps)
                pol._shutdown()
            row["async_vs_specialist_only"] = row["async_hz"] / spec_rate
            row["sync_vs_specialist_only"] = row["sync_hz"] / spec_rate
            row["async_thread_vs_specialist_only"] = row["async_thread_hz"] / spec_rate
            results["factors"][str(k)] = row
            err.print(f"k={k}: async {row['async_hz']:.1f} Hz ({row['async_vs_specialist_only']:.2f}x), "
                      f"sync {row['sync_hz']:.1f} Hz ({row['sync_vs_specialist_only']:.2f}x)")
        remote.close()
        if sessions:
            sync_policy = DualSystemPolicy(generalist, specialist, mode="sync")
            one, many = (lockstep_rate(sync_policy, obs, instruction, n, steps) for n in (1, sessions))
            results["lockstep"] = {"one": one, "many": many, "speedup": many["steps_per_s"] / one["steps_per_s"],
                                   "what": "sync dual-system sessions stepping together, their generalist and "
                                           "specialist calls batched (eval metaworld --batch), no simulator"}
            err.print(f"lockstep: {sessions} sessions {many['steps_per_s']:.1f} steps/s vs one "
                      f"{one['steps_per_s']:.1f} ({results['lockstep']['speedup']:.2f}x)")
        if not lat.zero:
            results["latency"] = latency_rates(generalist, specialist, obs, instruction, steps, lat)
            err.print(f"latency {lat.text()}: sync {results['latency']['sync_with_latency_hz']:.1f} Hz vs "
                      f"{results['latency']['sync_without_latency_hz']:.1f} Hz without")
        results["target"] = "at k=10 the async rate is at least 0.9x the specialist-only rate"
        results["async"] = "generalist in its own process (as load_policy does); async_thread: in a thread"
        write_report(out_file, "runtime", results)
        out.print(f"specialist only {spec_rate:.1f} Hz; report: {out_file}")
