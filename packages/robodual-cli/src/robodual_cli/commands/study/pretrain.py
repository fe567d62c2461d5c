"""``robodual study pretrain``: a generalist that knows more than any study's target data (issue 30).

The CPU-scale stand-in for a pretrained VLA: a broad corpus (MT10 by default, 50 demonstrations per task, each
episode with its own lighting (``visual: random``) and a paraphrased instruction) and the tiny generalist trained
on it long enough to be competitive alone on the seen tasks. It is trained once, resumes across sessions like
every study stage, and is reused by the other studies (``study data-efficiency --set generalist=FOLDER``).

The learning rate is constant after warm-up, so each evaluated checkpoint is what a run stopped there would
hold: ``eval_at`` (default 3000 and the last step) gives the dose control, the study's earlier 3k-step generalist
against the long one, both evaluated alone on the seen tasks at placements no demonstration has.
"""

from __future__ import annotations

import math
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
    store_episode_seeds,
    training_seconds,
    wilson_interval,
)
from robodual_core.config import ranged
from robodual_core.errors import RobodualError
from robodual_core.runtime.latency import LatencyConfig

STUDY = "pretrain"


@dataclass
class PretrainConfig:
    tasks: list[str] = field(default_factory=lambda: ["mt10"])
    episodes_per_task: int = ranged(50, ge=1)
    data_seed: int = ranged(0, ge=0)
    visual: str = "random"  # each demonstration's own lighting (MetaWorldEnv visual)
    image_size: int = ranged(64, ge=16, le=1024)
    generalist_steps: int = ranged(15000, ge=1)
    generalist_seed: int = ranged(0, ge=0)
    batch_size: int = ranged(32, ge=1)
    eval_at: list[int] = ranged(default_factory=lambda: [3000, 15000], ge=1)  # checkpoints evaluated alone
    eval_seed: int = ranged(2026120601, ge=0)  # new: no earlier study evaluated at it
    eval_episodes: int = ranged(10, ge=1)
    max_steps: int = ranged(150, ge=1)
    workers: int = ranged(2, ge=1)
    eval_batch: int = ranged(8, ge=1)
    # deterministic latency of every evaluation, in control steps (eval metaworld --latency); zero: none
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    threads: int = ranged(2, ge=1)
    val_ratio: float = ranged(0.0, ge=0, lt=1)


QUICK = {"tasks": ["button-press-topdown-v3", "reach-v3"], "episodes_per_task": 2, "generalist_steps": 20,
         "batch_size": 8, "eval_at": [10, 20], "eval_episodes": 1, "max_steps": 20, "workers": 1}


def check(cfg: PretrainConfig) -> PretrainConfig:
    cfg.tasks = resolve_tasks(cfg.tasks, "--tasks")
    if cfg.visual not in ("default", "random", "shift"):
        raise RobodualError(f"config key 'visual': expected default, random or shift, found '{cfg.visual}'")
    bad = [s for s in cfg.eval_at if s > cfg.generalist_steps]
    if bad:
        raise RobodualError(f"config key 'eval_at': checkpoints {bad} lie past generalist_steps "
                            f"({cfg.generalist_steps})")
    if cfg.generalist_steps not in cfg.eval_at:
        cfg.eval_at = sorted({*cfg.eval_at, cfg.generalist_steps})
    return cfg


def generalist_dir(root: Path) -> Path:
    return root / "runs" / "generalist"


def corpus(root: Path) -> Path:
    return root / "data" / "broad.zarr"


def run(cfg: PretrainConfig, study: StudyFolder) -> dict[str, Any]:
    root = study.root
    broad, gen_dir, evals = corpus(root), generalist_dir(root), root / "eval"
    n = len(cfg.tasks) * cfg.episodes_per_task
    study.run("generate broad corpus", robodual(
        "dataset", "generate", "metaworld", str(broad), "--tasks", ",".join(cfg.tasks), "--episodes-per-task",
        str(cfg.episodes_per_task), "--seed", str(cfg.data_seed), "--image-size", str(cfg.image_size),
        "--cameras", "corner2,gripperPOV", "--visual", cfg.visual, "--workers", str(cfg.workers), "--resume"),
        units=n, kind="generate", work=lambda: generate_work_seconds(broad))
    every = math.gcd(*cfg.eval_at)  # every evaluated step is a checkpoint
    study.run("train generalist", robodual(
        "train", "generalist", "--dataset", str(broad), "--out", str(gen_dir), "--base", "tiny",
        "--steps", str(cfg.generalist_steps), "--set", f"trainer.batch_size={cfg.batch_size}",
        "--set", "trainer.num_workers=0", "--set", f"trainer.ckpt_every={min(every, 1000)}",
        "--set", "trainer.keep_checkpoints=0", "--set", "trainer.scheduler=constant_with_warmup",
        "--set", f"trainer.warmup_steps={min(500, max(1, cfg.generalist_steps // 10))}",
        "--set", f"data.val_ratio={cfg.val_ratio}", "--set", f"trainer.seed={cfg.generalist_seed}",
        *resume_flag(gen_dir)), threads=cfg.threads, units=cfg.generalist_steps * cfg.batch_size,
        kind="train_generalist", run_dir=gen_dir, work=lambda: training_seconds(gen_dir, cfg.batch_size))
    points = []
    for step in cfg.eval_at:
        out = evals / f"step{step}"
        res = eval_stage(study, f"eval generalist step={step}", gen_dir / "checkpoints" / str(step), "generalist",
                         out, cfg.tasks, cfg)
        lo, hi = wilson_interval(res["successes"], res["episodes"])
        points.append({"step": step, "success_rate": res["success_rate"], "ci95": [lo, hi],
                       "episodes": res["episodes"], "tasks": res["tasks"],
                       "train_seconds": training_seconds(gen_dir, cfg.batch_size, step),
                       "rows": episode_rows(out / "results.json", policy=f"generalist step {step}", seed=0)})

    def placements() -> dict[str, Any]:
        demo = set(store_episode_seeds(broad))
        evaluated: set[int] = set()
        for step in cfg.eval_at:
            evaluated |= set(read_results(evals / f"step{step}" / "results.json")["seeds"])
        return {"demo_placements": len(demo), "eval_placements": len(evaluated), "shared": sorted(demo & evaluated)}

    check_out = study.compute("check placements", placements)
    if check_out["shared"]:
        raise RobodualError(f"evaluation placements {check_out['shared'][:5]} are also demonstration placements; "
                            "choose another eval_seed in a new study folder")
    return {"points": points, "placements": check_out, "generalist": str(gen_dir)}


def pretrained_checkpoint(folder: Path, step: int | None = None) -> Path:
    """The generalist checkpoint of a finished ``study pretrain`` folder (its last step, or ``step``); a run
    folder or a checkpoint folder passes through unchanged."""
    folder = Path(folder)
    if (folder / "study.json").is_file():
        import json

        meta = json.loads((folder / "study.json").read_text())
        if meta.get("study") != STUDY:
            raise RobodualError(f"generalist '{folder}' is a '{meta.get('study')}' study folder; expected a "
                                f"'{STUDY}' study, a generalist run folder or a checkpoint folder")
        step = step or int(meta["config"]["generalist_steps"])
        ckpt = generalist_dir(folder) / "checkpoints" / str(step)
    else:
        ckpt = folder / "checkpoints" / str(step) if step is not None else folder
    if not ckpt.is_dir():
        raise RobodualError(f"generalist '{folder}': expected a finished pretrain study, a run or a checkpoint "
                            f"folder, found no '{ckpt}'; run `robodual study pretrain` to the end first")
    return ckpt
