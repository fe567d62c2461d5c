"""``robodual dataset generate metaworld`` and ``robodual eval metaworld`` (heavy imports inside the functions)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from robodual_core.errors import RobodualError
from robodual_core.tracking import LOG_HELP, log_eval, parse_log, tell

BUILTIN_POLICIES = {
    "expert": "robodual_envs.metaworld.expert:scripted_expert_factory",
    "random": "robodual_envs.metaworld.expert:random_policy_factory",
}


def _cameras(value: str) -> list[str]:
    cams = [c.strip() for c in value.split(",") if c.strip()]
    if not cams:
        raise RobodualError(f"--cameras: expected one or two camera names like 'corner2,gripperPOV', found '{value}'")
    return cams


def generate_command(
    out: Path = typer.Argument(..., help="The Zarr store to write, e.g. data/metaworld_mt10.zarr."),
    tasks: str = typer.Option("mt10", "--tasks", help="'mt10' or comma-separated task names (reach-v3,push-v3)."),
    episodes_per_task: int = typer.Option(10, "--episodes-per-task", help="Successful episodes kept per task."),
    image_size: int = typer.Option(128, "--image-size", help="Square image size in pixels (64, 128, 224, ...)."),
    cameras: str = typer.Option("corner2,gripperPOV", "--cameras",
                                help="Static camera, then wrist camera -> rgb_static, rgb_gripper."),
    depth: bool = typer.Option(False, "--depth", help="Also record depth_static / depth_gripper (metres)."),
    seed: int = typer.Option(0, "--seed", help="Seeds every placement; same seed, same dataset."),
    workers: int = typer.Option(1, "--workers", help="Simulator processes."),
    max_steps: int = typer.Option(250, "--max-steps", help="Step limit of one expert episode."),
    action_noise: float = typer.Option(0.0, "--action-noise",
                                       help="Std of Gaussian noise on executed actions (labels stay clean)."),
    max_attempts: int = typer.Option(5, "--max-attempts", help="New placements tried when the expert fails."),
    visual: str = typer.Option("default", "--visual", help="Scene appearance: default, random (each episode its "
                               "own lighting: a broad corpus's variety) or shift (one fixed dim, warm lighting)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing store when the new one is done."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run (same options)."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Scripted-expert Meta-World demonstrations (only successful episodes) as a robodual Zarr store."""
    from rich.console import Console

    from robodual_envs.metaworld.generate import GenerateOptions, generate_dataset

    options = GenerateOptions(tasks=tasks.split(","), episodes_per_task=episodes_per_task, image_size=image_size,
                              cameras=_cameras(cameras), depth=depth, seed=seed, max_steps=max_steps,
                              action_noise=action_noise, max_attempts=max_attempts, visual=visual)
    summary = generate_dataset(out, options, workers=workers, overwrite=overwrite, resume=resume)
    console = Console()
    if json_out:
        console.print_json(json.dumps(summary))
        return
    failed = f", {len(summary['failed_slots'])} slots failed" if summary["failed_slots"] else ""
    console.print(f"wrote {summary['episodes']} episodes ({summary['steps']} steps) to {summary['path']} in "
                  f"{summary['seconds']:.1f} s ({summary['sim_steps_per_s']:.1f} simulated and rendered steps/s){failed}")


def eval_command(
    policy: str = typer.Option("", "--policy", help="A training run folder, or 'expert' / 'random' (baselines)."),
    tasks: str = typer.Option("mt10", "--tasks", help="'mt10' or comma-separated task names."),
    episodes: int = typer.Option(10, "--episodes", help="Episodes per task."),
    seed: int = typer.Option(0, "--seed", help="Seeds the placements (different from the training data's)."),
    workers: int = typer.Option(1, "--workers", help="Processes; each loads its own policy and simulator."),
    batch: int = typer.Option(1, "--batch", help="Episodes run at once per worker, their model calls batched "
                              "(several times faster on a CPU; noise seeded per episode)."),
    out: Path | None = typer.Option(None, "--out", help="Results folder [default: RUN_DIR/eval/metaworld]."),
    max_steps: int = typer.Option(250, "--max-steps", help="Step limit of one episode."),
    videos: int = typer.Option(3, "--videos", help="Record the first N episodes (mp4, or gif without PyAV)."),
    image_size: int | None = typer.Option(None, "--image-size",
                                          help="Image size [default: the training dataset's, else 128]."),
    cameras: str | None = typer.Option(None, "--cameras", help="Cameras [default: the training dataset's]."),
    depth: bool | None = typer.Option(None, "--depth/--no-depth", help="Render depth [default: the dataset's]."),
    remote: str | None = typer.Option(None, "--remote", help="URL of a policy server (robodual serve), e.g. "
                                      "ws://127.0.0.1:8000; replaces --policy."),
    token: str | None = typer.Option(None, "--token", envvar="ROBODUAL_SERVE_TOKEN", help="Token for --remote."),
    kind: str = typer.Option("auto", "--kind", help="auto, dual, specialist or generalist (from a run folder)."),
    visual: str = typer.Option("default", "--visual", help="Scene appearance: default, random or shift (a "
                               "lighting change for generalization tests)."),
    placement_scale: float = typer.Option(1.0, "--placement-scale", help="Widen the tasks' placement ranges by "
                                          "this factor around their centre (> 1: placements no demo has)."),
    mode: str = typer.Option("sync", "--mode", help="Dual-system runtime mode: sync or async."),
    latency: str = typer.Option("", "--latency", help="Deterministic latency in control steps, e.g. "
                                "'generalist=16,specialist=2' (sync mode; default none). A 7B generalist at 41 "
                                "ms/token costs ~184 steps at Meta-World's 80 Hz (robodual_core.runtime.latency)."),
    aggregation: bool = typer.Option(True, "--aggregation/--no-aggregation",
                                     help="Temporal aggregation of overlapping chunks (paper); off: each new chunk "
                                          "replaces the last (naive chunk switching, as real-time chunking assumes)."),
    binarize_gripper: bool = typer.Option(False, "--binarize-gripper/--no-binarize-gripper",
                                          help="Snap the gripper to +-1 (Meta-World's experts use graded efforts)."),
    execute: int | None = typer.Option(None, "--execute", help="Control steps between new chunks (the "
                                       "specialist's, or a generalist's alone) [default: 1 for a specialist, the "
                                       "chunk for a generalist]; with --no-aggregation, Diffusion Policy's 'plan 16, "
                                       "execute 8' is --execute 8."),
    json_out: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout."),
    log: list[str] = typer.Option([], "--log", help=LOG_HELP),
) -> None:
    """Closed-loop success rate of a policy on Meta-World tasks: results.json, a table and videos."""
    from rich.console import Console

    from robodual_core.io import atomic_write_json
    from robodual_core.runtime import AggregationConfig, parse_latency
    from robodual_envs.metaworld.evaluate import PolicyFactory, evaluate, results_table

    lat = parse_latency(latency)

    trackers = parse_log(log)
    if not policy and remote is None:
        raise RobodualError("eval metaworld needs --policy RUN_DIR (or expert/random) or --remote URL")
    for flag, value, choices in (("--kind", kind, ("auto", "dual", "specialist", "generalist")),
                                 ("--mode", mode, ("sync", "async"))):
        if value not in choices:
            raise RobodualError(f"{flag}: expected one of {', '.join(choices)}, found '{value}'")
    if videos < 0:
        raise RobodualError(f"--videos: expected a number of episodes to record >= 0, found {videos}")
    if execute is not None and (execute < 1 or remote is not None or not Path(policy).is_dir()):
        raise RobodualError(f"--execute {execute}: expected control steps >= 1 between a local policy run's new "
                            f"chunks, found {'--remote' if remote is not None else execute if execute < 1 else '--policy ' + policy}")
    if batch > 1 and (remote is not None or mode != "sync"):
        raise RobodualError(f"--batch {batch}: batched episodes need a local policy in sync mode (found "
                            f"{'--remote' if remote is not None else '--mode ' + mode}); use --batch 1")
    if not lat.zero and (mode != "sync" or remote is not None or not Path(policy).is_dir()):
        raise RobodualError(f"--latency {latency}: latency in control steps needs a local policy run in sync mode "
                            f"(found {'--remote' if remote is not None else '--mode ' + mode if mode != 'sync' else '--policy ' + policy})")
    if remote is not None and not remote.startswith(("ws://", "wss://")):
        raise RobodualError(f"--remote: expected a websocket URL like ws://HOST:PORT, found '{remote}'")
    from robodual_core.hub import cached_policy

    # org/name[@rev]: a policy in the local Hugging Face cache (results go to --out, never into the cache)
    snapshot = cached_policy(policy, out) if remote is None and policy not in BUILTIN_POLICIES else None
    policy = str(snapshot) if snapshot else policy
    run_dir = Path(policy)
    if remote is not None:
        factory: Any = PolicyFactory("robodual_client:RemotePolicy", (remote,), {"token": token})
        defaults = dataset_settings_of_run(run_dir) if run_dir.is_dir() else {}
        out = out or Path("eval_metaworld_remote")
    elif run_dir.is_dir():
        factory = PolicyFactory("robodual_core.runtime:load_policy", (str(run_dir),), {
            "kind": kind, "mode": mode,
            "aggregation": AggregationConfig(enabled=aggregation, binarize_gripper=binarize_gripper),
            **({"latency": lat} if not lat.zero else {}), **({"execute": execute} if execute is not None else {})})
        defaults = dataset_settings_of_run(run_dir)
        out = out or run_dir / "eval" / "metaworld"
    elif policy in BUILTIN_POLICIES:
        factory = PolicyFactory(BUILTIN_POLICIES[policy], kwargs={"seed": seed} if policy == "random" else {})
        defaults = {}
        out = out or Path(f"eval_metaworld_{policy}")
    else:
        raise RobodualError(f"--policy: '{policy}' is not a folder; expected a training run folder (with "
                            f"checkpoints/) or one of {', '.join(BUILTIN_POLICIES)}")
    from robodual_core.outputs import check_output

    # a folder, never the policy's folder itself nor one holding it (RUN/eval/metaworld inside it is the default)
    check_output(out, flag="--out", expect="folder", hosts=[run_dir] if run_dir.is_dir() else [])
    results = evaluate(
        factory, tasks=tasks, episodes_per_task=episodes, seed=seed, max_steps=max_steps, workers=workers,
        video_dir=out / "videos" if videos > 0 else None, n_videos=videos,
        image_size=image_size or defaults.get("image_size", 128),
        cameras=_cameras(cameras) if cameras else defaults.get("cameras", ["corner2", "gripperPOV"]),
        depth=depth if depth is not None else defaults.get("depth", False), batch=batch,
        visual=visual, placement_scale=placement_scale,
    )
    results["policy"] = remote or policy
    results["kind"] = kind
    results["latency"] = {"generalist": lat.generalist, "specialist": lat.specialist}
    results["aggregation"] = aggregation
    if execute is not None:
        results["execute"] = execute
    atomic_write_json(out / "results.json", results)
    # trackers: the policy's run (same W&B run / TensorBoard folder as its training) at its checkpoint's step
    tell(log_eval(trackers, policy if remote is None and run_dir.is_dir() and not snapshot else None, out, results, "metaworld",
                  videos=[Path(v) for v in results.get("videos", [])]))
    console = Console()
    if json_out:
        console.print_json(json.dumps({k: v for k, v in results.items() if k != "episodes"}))
        return
    console.print(results_table(results, title=f"Meta-World: {policy}"))
    console.print(f"results: {out / 'results.json'}" + (f"; videos: {out / 'videos'}" if results["videos"] else ""))


def dataset_settings_of_run(run_dir: Path) -> dict[str, Any]:
    """Image size, cameras and depth of the Meta-World dataset a run was trained on, when its config names one.

    Best effort: looks for a ``dataset`` path in ``config.json`` (at any depth) whose store was written by
    ``robodual dataset generate metaworld``; returns ``{}`` otherwise. A policy folder (``robodual policy
    export``) carries the settings in its policy.json, read when its dataset is not at hand.
    """
    exported = _exported_settings(run_dir)
    if exported:
        return exported
    config = run_dir / "config.json"
    if not config.is_file():
        return {}
    try:
        paths = list(_dataset_paths(json.loads(config.read_text())))
    except (OSError, ValueError):
        return {}
    for path in paths:
        store = Path(path)
        if not store.is_absolute() and not store.exists():
            store = run_dir / store
        meta = store / "zarr.json"
        if not meta.is_file():
            continue
        try:
            attrs = json.loads(meta.read_text()).get("attributes", {})
        except (OSError, ValueError):
            continue
        gen = attrs.get("generator") or {}
        if attrs.get("source") == "metaworld" and gen:
            return {k: gen[k] for k in ("image_size", "cameras", "depth") if k in gen}
    return {}


def _exported_settings(folder: Path) -> dict[str, Any]:
    """The Meta-World generation settings a policy folder's policy.json records (``dataset.generator``), or {}."""
    try:
        data = json.loads((folder / "policy.json").read_text()).get("dataset") or {}
    except (OSError, ValueError, AttributeError):
        return {}
    gen = data.get("generator") if isinstance(data, dict) and data.get("source") == "metaworld" else None
    return {k: gen[k] for k in ("image_size", "cameras", "depth") if k in gen} if isinstance(gen, dict) else {}


def _dataset_paths(obj: Any):
    if isinstance(obj, dict):
        for key, value in obj.items():
            if isinstance(value, str) and "dataset" in key.lower():
                yield value
            else:
                yield from _dataset_paths(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _dataset_paths(value)
