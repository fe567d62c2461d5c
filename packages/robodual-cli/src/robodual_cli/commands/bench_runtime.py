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


def register(app: typer.Typer) -> None:
    bench = group(app, "bench")

    @bench.command("runtime")
    def runtime(
        policy: Path = typer.Option(..., "--policy", help="A specialist run trained with a generalist (dual system)."),
        dataset: Path = typer.Option(..., "--dataset", help="Store to take one observation from."),
        steps: int = typer.Option(40, "--steps", help="Control steps per measurement."),
        factors: str = typer.Option("1,4,10", "--factors", help="Generalist slowdowns k (comma separated)."),
        out_file: Path = typer.Option(Path("bench_out/runtime.json"), "--out", help="JSON report path."),
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

        check_min("--steps", steps, 1, "a number of control steps")
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
        results["target"] = "at k=10 the async rate is at least 0.9x the specialist-only rate"
        results["async"] = "generalist in its own process (as load_policy does); async_thread: in a thread"
        write_report(out_file, "runtime", results)
        out.print(f"specialist only {spec_rate:.1f} Hz; report: {out_file}")
