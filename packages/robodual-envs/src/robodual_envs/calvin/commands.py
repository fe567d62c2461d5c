"""``robodual eval calvin``: options checked here, in one line each, before any worker starts."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import typer

from robodual_core.errors import RobodualError
from robodual_core.tracking import LOG_HELP, log_eval, parse_log, tell
from robodual_envs.calvin.spec import KINDS, MODES, EvalOptions, EvalSpec


def _check_choice(flag: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise RobodualError(f"{flag} is '{value}'; expected one of {', '.join(choices)}")


def check_policy(path: Path, kind: str) -> None:
    """A run or checkpoint folder a plugin can load (its weights are read later, in each worker)."""
    from robodual_core.checkpoint import resolve_checkpoint
    from robodual_core.runtime import checkpoint_kind

    if not path.exists():
        raise RobodualError(f"--policy '{path}' does not exist; expected a run folder or a checkpoint folder")
    if not path.is_dir():
        raise RobodualError(f"--policy '{path}' is a file; expected a run folder or a checkpoint folder")
    ckpt = resolve_checkpoint(path)
    found = checkpoint_kind(ckpt)
    if found == "generalist" and kind not in ("auto", "generalist"):
        raise RobodualError(f"--policy '{path}' is a generalist checkpoint; it cannot make a '{kind}' policy")
    if found == "specialist" and kind in ("dual", "generalist") and not (ckpt / "generalist.json").is_file():
        raise RobodualError(f"--kind {kind}: specialist checkpoint '{ckpt}' was trained without a generalist "
                            "(no generalist.json); use --kind specialist or auto")


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
    threads: int = typer.Option(0, "--threads", help="Torch/BLAS threads per worker (0: 1 thread; see "
                                                     "robodual_envs.common.workers)."),
    out: Path = typer.Option(None, "--out", help="Output folder (default RUN_DIR/eval/calvin)."),
    videos: int = typer.Option(0, "--videos", help="Write mp4 videos of the first N chains."),
    instructions: Path = typer.Option(None, "--instructions",
                                      help="JSON or YAML file mapping each task to a sentence or a list of paraphrases."),
    seed: int = typer.Option(0, "--seed", help="Seeds the choice among paraphrases and the simulator."),
    kind: str = typer.Option("auto", "--kind", help="auto | dual | specialist | generalist."),
    mode: str = typer.Option("sync", "--mode", help="Dual-system runtime: sync (paper) | async."),
    latency: str = typer.Option("", "--latency", help="Deterministic latency in control steps, e.g. "
                                "'generalist=16,specialist=2' (sync mode; default none)."),
    execute: int | None = typer.Option(None, "--execute", help="Control steps between new chunks (the specialist's, "
                                       "or a generalist's alone) [default: 1 for a specialist, the chunk for a "
                                       "generalist]."),
    max_steps: int = typer.Option(360, "--max-steps", help="Steps per subtask (official: 360)."),
    timeout: float = typer.Option(600.0, "--timeout", help="Seconds without a step before a worker counts as hung."),
    simulator: str = typer.Option("calvin", "--simulator",
                                  help="calvin | standin (a fake simulator for timing and smoke tests; scores mean nothing)."),
    resume: bool = typer.Option(False, "--resume", help="Skip the chains already in OUT/chains.jsonl."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Discard earlier results in OUT."),
    json_out: bool = typer.Option(False, "--json", help="Print results JSON on stdout (and nothing else there)."),
    log: list[str] = typer.Option([], "--log", help=LOG_HELP),
) -> None:
    """Evaluate a policy with the official CALVIN long-horizon protocol (1000 chains of 5 tasks)."""
    from robodual_envs.calvin import protocol

    trackers = parse_log(log)
    options = EvalOptions(start=start, chains=chains, workers=workers, threads=threads, videos=videos,
                          timeout=timeout, resume=resume, overwrite=overwrite, progress=not json_out)
    options.check()
    protocol.chains(start, chains)  # --start / --chains
    _check_choice("--simulator", simulator, ("calvin", "standin"))
    _check_choice("--renderer", renderer, ("egl", "tiny"))
    _check_choice("--kind", kind, KINDS)
    _check_choice("--mode", mode, MODES)
    from robodual_core.runtime.latency import parse_latency

    lat = parse_latency(latency)
    if not lat.zero and mode != "sync":
        raise RobodualError(f"--latency {latency}: latency in control steps needs --mode sync, found --mode {mode}")
    if max_steps < 1:
        raise RobodualError(f"--max-steps is {max_steps}; expected at least 1 (official: 360)")
    if execute is not None and execute < 1:
        raise RobodualError(f"--execute is {execute}; expected control steps >= 1 between new chunks")
    if image_size < 0:
        raise RobodualError(f"--image-size is {image_size}; expected 0 (keep the cameras' sizes) or a size in pixels")
    if scene is not None and not re.fullmatch(r"(calvin_scene_)?[A-Za-z0-9_]+", scene):
        raise RobodualError(f"--scene is '{scene}'; expected a scene letter A-D (or calvin_scene_X)")
    if resume and overwrite:
        raise RobodualError("--resume and --overwrite contradict each other; pass one")
    if instructions is not None:
        protocol.Instructions.from_file(instructions, seed)
    if simulator == "calvin" and dataset_config is not None:
        from robodual_envs.calvin.env import check_dataset_config

        check_dataset_config(dataset_config, tactile)
    if simulator == "calvin":  # a user without the simulator learns that first
        from robodual_envs.calvin.env import require_calvin_env

        require_calvin_env()
    check_policy(policy, kind)
    if simulator == "calvin":
        from robodual_envs.calvin.env import import_calvin_env

        import_calvin_env()  # one line now rather than one per worker
        env_kwargs: dict[str, Any] = {"simulator": "calvin", "renderer": renderer, "tactile": tactile, "seed": seed,
                                      "dataset_config": str(dataset_config.resolve()) if dataset_config else None,
                                      "scene": scene if (scene or dataset_config) else "D"}
    else:
        env_kwargs = {"simulator": "standin", "tactile": tactile}
    if image_size:
        env_kwargs["image_size"] = image_size
    policy_kwargs: dict[str, Any] = {"path": str(policy.resolve()), "kind": kind, "mode": mode}
    if not lat.zero:  # absent at zero: earlier runs resume with the same identity
        policy_kwargs["latency"] = lat.text()
    if execute is not None:  # absent by default, for the same reason
        policy_kwargs["execute"] = execute
    spec = EvalSpec(policy_kwargs=policy_kwargs, env_kwargs=env_kwargs,
                    instructions=str(instructions.resolve()) if instructions else None, seed=seed, max_steps=max_steps)
    out = out or policy / "eval" / "calvin"
    if json_out:
        _track(trackers, policy, out, _evaluate_json(spec, out, options))
        return
    from robodual_envs.calvin.evaluate import evaluate
    from robodual_envs.calvin.report import print_results

    report = evaluate(spec, out, options)
    print_results(report, out)
    _track(trackers, policy, out, report)


def _track(trackers: list[str], policy: Path, out: Path, report: dict[str, Any]) -> None:
    """The results and videos to the trackers of the policy's run (robodual_core.tracking.log_eval)."""
    videos = sorted((out / "videos").glob("*.mp4")) + sorted((out / "videos").glob("*.gif"))
    tell(log_eval(trackers, policy, out, {k: v for k, v in report.items() if k not in ("policy", "simulator")},
                  "calvin", videos=videos))


def _evaluate_json(spec: EvalSpec, out: Path, options: EvalOptions) -> dict[str, Any]:
    """stdout carries the results JSON and nothing else: everything written to fd 1 until this process
    exits (pybullet prints again when its client is garbage-collected) goes to stderr."""
    from robodual_envs.calvin.evaluate import evaluate
    from robodual_envs.common.stdio import redirect_stdout_fd, write_fd

    results_fd = redirect_stdout_fd(2)
    report = evaluate(spec, out, options)
    write_fd(results_fd, json.dumps(report) + "\n")
    return report
