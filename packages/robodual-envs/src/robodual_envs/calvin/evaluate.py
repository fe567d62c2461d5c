"""``robodual eval calvin``'s evaluation: the official CALVIN protocol, sharded over workers and resumable.

Only this process writes: every finished chain becomes one line of ``OUT/chains.jsonl`` at once
(:mod:`.chainlog`), so a crash or Ctrl-C loses at most the chains in flight, and ``--resume`` skips the
chains already there. ``--workers 0`` runs the chains here (:mod:`.runner`); otherwise worker processes do
(:mod:`.pool`).

Output folder (default ``RUN_DIR/eval/calvin``): ``run.json`` (what was evaluated, checked on resume),
``chains.jsonl``, ``results.json`` (success per chain length, average length, per-task success, timing)
and ``videos/chain_XXXX.mp4`` for the first ``--videos`` chains. The command is :mod:`.commands`, the table
:mod:`.report`.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from robodual_core.errors import RobodualError
from robodual_envs.calvin import protocol
from robodual_envs.calvin.chainlog import ChainLog
from robodual_envs.calvin.spec import LEGACY_NAMES, EvalOptions, EvalSpec, load_run_policy

__all__ = ["ChainLog", "EvalOptions", "EvalSpec", "evaluate", "load_run_policy"]


def evaluate(spec: EvalSpec, out: Path, options: EvalOptions) -> dict[str, Any]:
    """Run (or continue) the evaluation in ``out`` and write ``results.json``; returns its content."""
    from robodual_core.io import atomic_write_json

    options.check()
    selected = protocol.chains(options.start, options.chains)
    if spec.instructions:
        protocol.Instructions.from_file(spec.instructions, spec.seed)  # fail here, not in every worker
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RobodualError(f"--out '{out}' is a file; expected a folder for the evaluation's results")
    from robodual_core.outputs import check_output

    # never the policy's folder itself nor one holding it (--overwrite deletes results and videos in OUT)
    policy = spec.policy_kwargs.get("path")
    check_output(out, flag="--out", expect="folder", hosts=[policy] if policy else [])
    log = ChainLog(out / "chains.jsonl")
    if options.overwrite:
        for name in ("chains.jsonl", "results.json", "run.json"):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / "videos", ignore_errors=True)
    done = log.read()
    if done and not options.resume:
        raise RobodualError(f"'{log.path}' already holds {len(done)} finished chains; pass --resume to continue "
                            "them or --overwrite to start over")
    run_file = out / "run.json"
    if done:
        _same_spec(run_file, spec)
    out.mkdir(parents=True, exist_ok=True)
    if options.videos:
        spec.video_dir = str(out / "videos")
        Path(spec.video_dir).mkdir(exist_ok=True)
    atomic_write_json(run_file, {"spec": spec.identity(), "protocol": {
        "chains": "official CALVIN eval_sequences_1000 (calvin_agent get_sequences(1000))",
        "max_steps_per_subtask": spec.max_steps, "chain_length": protocol.CHAIN_LENGTH,
        "instructions": "validation_instruction" if spec.instructions is None else spec.instructions}})
    video_set = {c.index for c in selected[: options.videos]}
    jobs = [(c.index, c.index in video_set) for c in selected if c.index not in done]
    new: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    with _progress(options.progress, len(selected), len(selected) - len(jobs)) as progress:
        def on_record(record: dict[str, Any]) -> None:
            log.append(record)
            done[record["chain"]] = record
            new.append(record)
            progress([int(r["completed"]) for r in done.values()])

        if options.workers == 0:
            _run_here(spec, jobs, on_record, options.threads)
        elif jobs:
            from robodual_envs.calvin.pool import Scheduler

            Scheduler(spec, options.workers, options.timeout, options.setup_timeout,
                      threads=options.threads).run(jobs, on_record)
    wall = time.perf_counter() - t0
    wanted = {c.index for c in selected}
    results = protocol.aggregate([r for i, r in done.items() if i in wanted])
    results["performance"] = _performance(new, wall, options.workers)
    report = {"policy": spec.policy_kwargs, "simulator": spec.env_kwargs, "chains": [selected[0].index,
              selected[-1].index], "instructions": spec.instructions or "official validation instructions",
              **results}
    atomic_write_json(out / "results.json", report)
    return report


def _same_spec(run_file: Path, spec: EvalSpec) -> None:
    """``--resume`` merges results only with the same policy, simulator and protocol options."""
    if not run_file.is_file():
        return
    try:
        before = json.loads(run_file.read_text())["spec"]
        if not isinstance(before, dict):
            raise TypeError(f"'spec' is a {type(before).__name__}")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise RobodualError(f"--resume: '{run_file}' is damaged ({type(exc).__name__}: {exc}); it records what "
                            "chains.jsonl was run with: restore it, or start over with --overwrite") from None
    before["policy_factory"] = LEGACY_NAMES.get(before.get("policy_factory"), before.get("policy_factory"))
    now = spec.identity()
    diff = sorted(k for k in now if before.get(k) != now[k])
    if diff:
        raise RobodualError(f"--resume: '{run_file}' was written with different {', '.join(diff)} "
                            f"({', '.join(f'{k}={before.get(k)!r}' for k in diff)}); use the same options, "
                            "a new --out, or --overwrite")


def _run_here(spec: EvalSpec, jobs: list[tuple[int, bool]], on_record: Any, threads: int = 0) -> None:
    """``--workers 0``: the chains in this process, with the simulator's C-level prints sent to stderr and
    torch's threads set as a worker's are (a 2-core machine: 118 ms per tiny-policy step with torch's default
    two threads beside the simulator, 23 ms with one)."""
    if not jobs:
        return
    from robodual_envs.calvin.runner import ChainRunner
    from robodual_envs.common.stdio import stdout_to_stderr
    from robodual_envs.common.workers import torch_threads

    with stdout_to_stderr(), torch_threads(threads):
        runner = ChainRunner(spec)
        try:
            for index, video in jobs:
                on_record({**runner.run(index, video), "attempts": 1})
        finally:
            runner.close()


def _performance(new: list[dict[str, Any]], wall: float, workers: int) -> dict[str, Any]:
    """Throughput of the chains run now (resumed ones are not timed again)."""
    steps = sum(r.get("steps", 0) for r in new)
    sim_s = sum(r.get("sim_s", 0.0) for r in new)
    policy_s = sum(r.get("policy_s", 0.0) for r in new)
    busy = sim_s + policy_s
    return {
        "workers": workers, "chains_run": len(new), "wall_s": wall, "steps": steps,
        "steps_per_s": steps / wall if wall > 0 else None,
        "sim_steps_per_s": steps / sim_s if sim_s > 0 else None,
        "policy_steps_per_s": steps / policy_s if policy_s > 0 else None,
        "policy_s_per_step": policy_s / steps if steps else None,
        "sim_s_per_step": sim_s / steps if steps else None,
        "sim_share": sim_s / busy if busy > 0 else None,
        "policy_share": policy_s / busy if busy > 0 else None,
        "s_per_chain": wall / len(new) if new else None,
        "estimated_hours_for_1000_chains": wall / len(new) * 1000 / 3600 if new else None,
    }


@contextlib.contextmanager
def _progress(enabled: bool, total: int, completed: int) -> Iterator[Any]:
    """Chains done on stderr, with the running success rates in the description; yields ``update(completed)``."""
    from robodual_core.progress import progress_bar

    with progress_bar(enabled) as bar:
        task = bar.add_task("CALVIN chains", total=total, completed=completed)

        def update(done: list[int]) -> None:
            sr = protocol.chain_success_rates(done)
            avg = sum(done) / max(len(done), 1)
            text = " ".join(f"{i}/5 {v * 100:.0f}%" for i, v in sr.items())
            bar.update(task, completed=len(done), description=f"CALVIN {text} | avg len {avg:.2f}")

        yield update
