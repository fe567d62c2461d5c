"""``robodual eval calvin``: the official CALVIN protocol, sharded over worker processes and resumable.

Each worker process builds its own simulator and policy once, then takes chains one at a time from the
parent (so ``1000 % workers`` never matters and no chain is dropped). Only the parent writes: every
finished chain becomes one line of ``OUT/chains.jsonl`` at once, so a crash or Ctrl-C loses at most the
chains in flight, and ``--resume`` skips the chains already there. A worker that makes no progress for
``--timeout`` seconds (a hung simulator) is killed, as is the case for one that dies; its chain is retried
once on a fresh worker and then recorded as failed with the error, never lost.

Output folder (default ``RUN_DIR/eval/calvin``): ``run.json`` (what was evaluated, checked on resume),
``chains.jsonl``, ``results.json`` (success per chain length, average length, per-task success, timing)
and ``videos/chain_XXXX.mp4`` for the first ``--videos`` chains.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import signal
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import typer

from robodual_core.errors import RobodualError

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
DEFAULT_POLICY_FACTORY = "robodual_envs.calvin.evaluate:load_run_policy"
ENV_FACTORY = "robodual_envs.calvin.env:make_chain_env"


@dataclass
class EvalSpec:
    """Everything a worker needs to rebuild the simulator and the policy (it must pickle)."""

    policy_kwargs: dict[str, Any]
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    policy_factory: str = DEFAULT_POLICY_FACTORY
    instructions: str | None = None  # paraphrase file; None = the official validation instructions
    seed: int = 0
    max_steps: int = 360
    video_dir: str | None = None

    def identity(self) -> dict[str, Any]:
        """What must match for results to be merged on ``--resume`` (as it reads back from JSON)."""
        d = asdict(self)
        d.pop("video_dir")
        return json.loads(json.dumps(d))


def load_run_policy(path: str, kind: str = "auto", mode: str = "sync") -> Any:
    from robodual_core.runtime import load_policy

    return load_policy(path, kind=kind, mode=mode)


def _target(spec: str) -> Any:
    import importlib

    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


# -- the per-chain results file ------------------------------------------------------------------------
class ChainLog:
    """``chains.jsonl``: one JSON record per finished chain, appended with a single write and fsync."""

    def __init__(self, path: Path):
        self.path = path

    def read(self) -> dict[int, dict[str, Any]]:
        """Finished chains by index. A torn last line (a crash mid-write) is cut off so appends stay valid."""
        if not self.path.is_file():
            return {}
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            data = data[: data.rfind(b"\n") + 1]
            with open(self.path, "r+b") as f:
                f.truncate(len(data))
        records: dict[int, dict[str, Any]] = {}
        for n, line in enumerate(data.decode().splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                records[int(record["chain"])] = record
            except (ValueError, KeyError, TypeError) as exc:
                raise RobodualError(f"'{self.path}' line {n} is not a chain record ({exc}); delete the line or start "
                                    "over with --overwrite") from None
        return records

    def append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)


# -- videos ----------------------------------------------------------------------------------------------
def video_frame(obs: dict[str, Any]) -> Any:
    """The static camera with the gripper camera scaled to its height beside it: [H, W1 + W2, 3] uint8."""
    import numpy as np

    static = obs["rgb_static"]
    if "rgb_gripper" not in obs:
        return static
    g = obs["rgb_gripper"]
    h = static.shape[0]
    rows = np.linspace(0, g.shape[0] - 1, h).round().astype(int)
    cols = np.linspace(0, g.shape[1] - 1, round(g.shape[1] * h / g.shape[0])).round().astype(int)
    return np.concatenate([static, g[rows][:, cols]], axis=1)


def write_video(path: Path, frames: list[Any], fps: float = 30.0) -> Path:
    """H.264 mp4 through PyAV, written to a temporary file and renamed."""
    import av
    import numpy as np

    video = np.asarray(frames, dtype=np.uint8)
    h, w = video.shape[1] // 2 * 2, video.shape[2] // 2 * 2
    tmp = path.with_name(f".{path.name}.tmp")
    with av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=round(fps))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for frame in video:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[:h, :w]), format="rgb24")))
        container.mux(stream.encode())
    os.replace(tmp, path)
    return path


# -- running chains ----------------------------------------------------------------------------------------
class ChainRunner:
    """A simulator and a policy, built once per process, running chains by index."""

    def __init__(self, spec: EvalSpec):
        from robodual_envs.calvin import protocol

        self.spec = spec
        self.protocol = protocol
        self.instructions = (protocol.Instructions.from_file(spec.instructions, spec.seed) if spec.instructions
                             else protocol.Instructions.official())
        self.env = _target(ENV_FACTORY)(**spec.env_kwargs)
        self.policy = _target(spec.policy_factory)(**spec.policy_kwargs)

    def run(self, index: int, video: bool, on_step: Any = None) -> dict[str, Any]:
        chain = self.protocol.chains(index, 1)[0]
        frames: list[Any] = []
        on_frame = (lambda obs, _instruction: frames.append(video_frame(obs))) if video else None
        try:
            record = self.protocol.run_chain(self.env, self.policy, chain, self.instructions, self.spec.max_steps,
                                             on_step=on_step, on_frame=on_frame)
        except Exception as exc:  # recorded, the next chain resets the simulator
            return self.protocol.failed_record(chain, f"{type(exc).__name__}: {exc}", 1)
        if frames and self.spec.video_dir:
            try:
                record["video"] = str(write_video(Path(self.spec.video_dir) / f"chain_{index:04d}.mp4", frames))
            except Exception as exc:  # a missing encoder must not cost the result
                record["video_error"] = f"{type(exc).__name__}: {exc}"
        return record

    def close(self) -> None:
        for obj in (self.policy, self.env):
            close = getattr(obj, "close", None)
            if callable(close):
                close()


def _worker_main(wid: int, spec: EvalSpec, threads: int, inbox: Any, outbox: Any, beat: Any) -> None:
    """Worker process: build once, then run the chains the parent sends until it sends None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    for var in THREAD_VARS:
        os.environ[var] = str(threads)
    try:
        runner = ChainRunner(spec)
    except BaseException as exc:
        outbox.put(("setup_error", wid, f"{type(exc).__name__}: {exc}"))
        return
    outbox.put(("ready", wid, None))

    def on_step() -> None:
        beat.value = time.time()

    while True:
        job = inbox.get()
        if job is None:
            break
        index, video = job
        beat.value = time.time()
        outbox.put(("done", wid, runner.run(index, video, on_step)))
    runner.close()


@dataclass
class _Worker:
    wid: int
    proc: Any
    inbox: Any
    outbox: Any  # one per worker: killing a worker mid-write can only break its own pipe
    beat: Any
    started: float
    ready: bool = False
    job: tuple[int, bool] | None = None


class Scheduler:
    """Hands chains to worker processes one at a time, watches them, restarts dead or hung ones."""

    def __init__(self, spec: EvalSpec, workers: int, timeout: float, setup_timeout: float, retries: int = 1):
        self.spec, self.n, self.timeout, self.setup_timeout, self.retries = spec, workers, timeout, setup_timeout, retries
        self.ctx = mp.get_context("spawn")
        self.threads = max(1, (os.cpu_count() or 1) // workers)
        self.workers: dict[int, _Worker] = {}
        self._next_id = 0

    def _start(self) -> None:
        wid, self._next_id = self._next_id, self._next_id + 1
        inbox, outbox, beat = self.ctx.Queue(), self.ctx.Queue(), self.ctx.Value("d", time.time(), lock=False)
        proc = self.ctx.Process(target=_worker_main, args=(wid, self.spec, self.threads, inbox, outbox, beat),
                                name=f"robodual-calvin-{wid}", daemon=True)
        proc.start()
        self.workers[wid] = _Worker(wid, proc, inbox, outbox, beat, time.time())

    def _stop(self, w: _Worker, kill: bool) -> None:
        if kill:
            w.proc.kill()
        else:
            w.inbox.put(None)
        w.proc.join(timeout=30)
        if w.proc.is_alive():
            w.proc.kill()
            w.proc.join(timeout=10)
        self.workers.pop(w.wid, None)

    def run(self, jobs: list[tuple[int, bool]], on_record: Any) -> None:
        """Run ``jobs`` ((chain index, record video)); ``on_record(record)`` is called in this process."""
        from robodual_envs.calvin import protocol

        queue = deque(jobs)
        attempts: dict[int, int] = {}
        finished: set[int] = set()

        def finish(record: dict[str, Any]) -> None:
            if record["chain"] not in finished:
                finished.add(record["chain"])
                record.setdefault("attempts", attempts.get(record["chain"], 1))
                on_record(record)

        def lost(w: _Worker, why: str) -> None:
            index, video = w.job  # type: ignore[misc]
            w.job = None
            self._stop(w, kill=True)
            if attempts[index] <= self.retries:
                queue.appendleft((index, video))
            else:
                finish(protocol.failed_record(protocol.chains(index, 1)[0], why, attempts[index]))

        try:
            for _ in range(min(self.n, len(queue))):
                self._start()
            while queue or any(w.job is not None for w in self.workers.values()):
                for w in list(self.workers.values()):
                    if w.ready and w.job is None and queue:
                        w.job = queue.popleft()
                        attempts[w.job[0]] = attempts.get(w.job[0], 0) + 1
                        w.beat.value = time.time()
                        w.inbox.put(w.job)
                    elif w.ready and w.job is None:
                        self._stop(w, kill=False)
                if not self._drain(finish):
                    time.sleep(0.02)
                now = time.time()
                for w in list(self.workers.values()):
                    if w.job is not None and not w.proc.is_alive():
                        self._drain(finish)  # its last result may still be in the pipe
                        if w.job is not None:
                            lost(w, f"worker process died (exit code {w.proc.exitcode}) while running the chain")
                    elif w.job is not None and now - w.beat.value > self.timeout:
                        lost(w, f"no progress for {self.timeout:g} s (hung simulator or policy); worker killed")
                    elif not w.ready and not w.proc.is_alive():
                        raise RobodualError(f"a CALVIN worker process died (exit code {w.proc.exitcode}) while "
                                            "building the simulator and policy; rerun with --workers 0 to see why")
                    elif not w.ready and now - w.started > self.setup_timeout:
                        raise RobodualError(f"a CALVIN worker did not build its simulator and policy within "
                                            f"{self.setup_timeout:g} s")
                while queue and len(self.workers) < min(self.n, len(queue) + self._busy()):
                    self._start()
        finally:
            for w in list(self.workers.values()):
                self._stop(w, kill=w.job is not None)

    def _busy(self) -> int:
        return sum(w.job is not None for w in self.workers.values())

    def _drain(self, finish: Any) -> bool:
        """Handle every message waiting from the workers; True if there was any."""
        import queue as queue_mod

        got = False
        for w in list(self.workers.values()):
            while True:
                try:
                    kind, _, payload = w.outbox.get_nowait()
                except (queue_mod.Empty, OSError, EOFError):
                    break
                got = True
                if kind == "setup_error":
                    raise RobodualError(f"a CALVIN worker could not start: {payload}")
                if kind == "ready":
                    w.ready = True
                elif kind == "done":
                    if w.job is not None and w.job[0] == payload["chain"]:
                        w.job = None
                    finish(payload)
        return got


# -- the evaluation ------------------------------------------------------------------------------------------
@dataclass
class EvalOptions:
    start: int = 0
    chains: int | None = None
    workers: int = 1
    videos: int = 0
    timeout: float = 600.0
    setup_timeout: float = 1800.0
    resume: bool = False
    overwrite: bool = False
    progress: bool = True


def evaluate(spec: EvalSpec, out: Path, options: EvalOptions) -> dict[str, Any]:
    """Run (or continue) the evaluation in ``out`` and write ``results.json``; returns its content."""
    from robodual_core.io import atomic_write_json
    from robodual_envs.calvin import protocol

    selected = protocol.chains(options.start, options.chains)
    if options.workers < 0:
        raise RobodualError(f"--workers is {options.workers}; expected 0 (in this process) or more")
    if spec.instructions:
        protocol.Instructions.from_file(spec.instructions, spec.seed)  # fail here, not in every worker
    out = Path(out)
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
    if done and run_file.is_file():
        before = json.loads(run_file.read_text()).get("spec", {})
        diff = sorted(k for k in spec.identity() if before.get(k) != spec.identity()[k])
        if diff:
            raise RobodualError(f"--resume: '{run_file}' was written with different {', '.join(diff)} "
                                f"({', '.join(f'{k}={before.get(k)!r}' for k in diff)}); use the same options, "
                                "a new --out, or --overwrite")
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
    with _Progress(options.progress, len(selected), len(selected) - len(jobs)) as progress:
        def on_record(record: dict[str, Any]) -> None:
            log.append(record)
            done[record["chain"]] = record
            new.append(record)
            progress.update([int(r["completed"]) for r in done.values()])

        if options.workers == 0:
            runner = ChainRunner(spec)
            try:
                for index, video in jobs:
                    on_record({**runner.run(index, video), "attempts": 1})
            finally:
                runner.close()
        else:
            Scheduler(spec, options.workers, options.timeout, options.setup_timeout).run(jobs, on_record)
    wall = time.perf_counter() - t0
    wanted = {c.index for c in selected}
    results = protocol.aggregate([r for i, r in done.items() if i in wanted])
    results["performance"] = _performance(new, wall, options.workers)
    report = {"policy": spec.policy_kwargs, "simulator": spec.env_kwargs, "chains": [selected[0].index,
              selected[-1].index], "instructions": spec.instructions or "official validation instructions",
              **results}
    atomic_write_json(out / "results.json", report)
    return report


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
        "sim_share": sim_s / busy if busy > 0 else None,
        "policy_share": policy_s / busy if busy > 0 else None,
        "s_per_chain": wall / len(new) if new else None,
        "estimated_hours_for_1000_chains": wall / len(new) * 1000 / 3600 if new else None,
    }


class _Progress:
    """Chains done on stderr, with the running success rates in the description."""

    def __init__(self, enabled: bool, total: int, completed: int):
        self.enabled, self.total, self.completed = enabled, total, completed

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeRemainingColumn(), console=Console(stderr=True))
            self.bar.start()
            self.task = self.bar.add_task("CALVIN chains", total=self.total, completed=self.completed)
        return self

    def update(self, completed: list[int]) -> None:
        if not self.enabled:
            return
        from robodual_envs.calvin.protocol import chain_success_rates

        sr = chain_success_rates(completed)
        avg = sum(completed) / max(len(completed), 1)
        text = " ".join(f"{i}/5 {v * 100:.0f}%" for i, v in sr.items())
        self.bar.update(self.task, completed=len(completed), description=f"CALVIN {text} | avg len {avg:.2f}")

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self.bar.stop()


def print_results(report: dict[str, Any], out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"CALVIN: {report['num_chains']} chains (success rate by number of tasks completed in a row)")
    for i in range(1, 6):
        table.add_column(str(i), justify="right")
    table.add_column("Avg. Len.", justify="right")
    table.add_row(*(f"{report['chain_sr'][str(i)] * 100:.1f}%" for i in range(1, 6)), f"{report['avg_len']:.2f}")
    console.print(table)
    tasks = Table(title="per task")
    for name in ("task", "success", "attempted", "rate"):
        tasks.add_column(name, justify="left" if name == "task" else "right")
    for name, info in sorted(report["task_info"].items(), key=lambda kv: -kv[1]["success_rate"]):
        tasks.add_row(name, str(info["success"]), str(info["total"]), f"{info['success_rate'] * 100:.1f}%")
    console.print(tasks)
    perf = report["performance"]
    if perf["chains_run"]:
        console.print(f"{perf['chains_run']} chains run with {perf['workers']} worker(s) in {perf['wall_s']:.1f} s: "
                      f"simulator {perf['sim_steps_per_s'] or 0:.1f} steps/s ({(perf['sim_share'] or 0) * 100:.0f}% "
                      f"of the time), policy {perf['policy_steps_per_s'] or 0:.1f} steps/s "
                      f"({(perf['policy_share'] or 0) * 100:.0f}%); about {perf['estimated_hours_for_1000_chains']:.1f} "
                      "h for 1000 chains at this rate")
    if report["errors"]:
        console.print(f"[yellow]{len(report['errors'])} chain(s) failed with an error[/] (counted as 0 completed), "
                      f"first: chain {report['errors'][0]['chain']}: {report['errors'][0]['error']}")
    console.print(f"results: {out / 'results.json'}")


def eval_command(
    policy: Path = typer.Option(..., "--policy", help="Run folder or checkpoint folder of the policy."),
    dataset_config: Path = typer.Option(None, "--dataset-config", "--dataset",
                                        help="CALVIN dataset folder (or its validation/.hydra/merged_config.yaml) "
                                             "to build the simulator as the official evaluation does."),
    scene: str = typer.Option(None, "--scene", help="Scene A-D (default D; with --dataset-config: the dataset's)."),
    renderer: str = typer.Option("egl", "--renderer", help="egl (headless OpenGL) | tiny (pybullet TinyRenderer)."),
    tactile: bool = typer.Option(False, "--tactile", help="Render the DIGIT tactile sensors (needs tacto)."),
    image_size: int = typer.Option(0, "--image-size",
                                   help="Resize cameras to NxN as 'dataset convert calvin --image-size' did (0: keep)."),
    chains: int = typer.Option(None, "--chains", "--num-chains", help="Number of chains (default: all 1000)."),
    start: int = typer.Option(0, "--start", help="First chain index in the official list."),
    workers: int = typer.Option(1, "--workers", help="Worker processes, one simulator each (0: in this process)."),
    out: Path = typer.Option(None, "--out", help="Output folder (default RUN_DIR/eval/calvin)."),
    videos: int = typer.Option(0, "--videos", help="Write mp4 videos of the first N chains."),
    instructions: Path = typer.Option(None, "--instructions",
                                      help="JSON or YAML file mapping each task to a sentence or a list of paraphrases."),
    seed: int = typer.Option(0, "--seed", help="Seeds the choice among paraphrases and the simulator."),
    kind: str = typer.Option("auto", "--kind", help="auto | dual | specialist | generalist."),
    mode: str = typer.Option("sync", "--mode", help="Dual-system runtime: sync (paper) | async."),
    max_steps: int = typer.Option(360, "--max-steps", help="Steps per subtask (official: 360)."),
    timeout: float = typer.Option(600.0, "--timeout", help="Seconds without a step before a worker counts as hung."),
    simulator: str = typer.Option("calvin", "--simulator",
                                  help="calvin | standin (a fake simulator for timing and smoke tests; scores mean nothing)."),
    resume: bool = typer.Option(False, "--resume", help="Skip the chains already in OUT/chains.jsonl."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Discard earlier results in OUT."),
    json_out: bool = typer.Option(False, "--json", help="Print results JSON on stdout."),
) -> None:
    """Evaluate a policy with the official CALVIN long-horizon protocol (1000 chains of 5 tasks)."""
    if simulator == "calvin":
        from robodual_envs.calvin.env import import_calvin_env

        import_calvin_env()  # one line now rather than one per worker
        env_kwargs: dict[str, Any] = {"simulator": "calvin", "renderer": renderer, "tactile": tactile, "seed": seed,
                                      "dataset_config": str(dataset_config.resolve()) if dataset_config else None,
                                      "scene": scene if (scene or dataset_config) else "D"}
    elif simulator == "standin":
        env_kwargs = {"simulator": "standin", "tactile": tactile}
    else:
        raise RobodualError(f"--simulator is '{simulator}'; expected 'calvin' or 'standin'")
    if image_size:
        env_kwargs["image_size"] = image_size
    if max_steps < 1:
        raise RobodualError(f"--max-steps is {max_steps}; expected at least 1 (official: 360)")
    spec = EvalSpec(policy_kwargs={"path": str(policy.resolve()), "kind": kind, "mode": mode}, env_kwargs=env_kwargs,
                    instructions=str(instructions.resolve()) if instructions else None, seed=seed, max_steps=max_steps)
    out = out or policy / "eval" / "calvin"
    report = evaluate(spec, out, EvalOptions(start=start, chains=chains, workers=workers, videos=videos,
                                             timeout=timeout, resume=resume, overwrite=overwrite,
                                             progress=not json_out))
    if json_out:
        print(json.dumps(report))
    else:
        print_results(report, out)
