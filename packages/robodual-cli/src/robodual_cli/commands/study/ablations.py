"""``robodual study ablations``: the explanations of a data-efficiency result, tested at one data scale.

When the dual system does not win (issue 23), the candidates are the generalist's quality, the conditioning
sources (latents, discretized actions), the conditioner (cross-attention, FiLM, in-context), latency
augmentation, classifier-free guidance and the training budget. This study reuses a finished
``study data-efficiency`` folder, its broad generalist, target demonstrations at one scale and its evaluation
placements (same evaluation seed, episodes and step budget), and trains variants of its policies, each the
base study's specialist config with a few ``--set`` overrides. With ``finetune_generalist`` the broad
generalist is also fine-tuned on the target demonstrations (``train generalist --init``, the specialists'
budget), evaluated alone and under a dual specialist: the paper's generalist is trained on the target data too.

The base study's folder is only read: the target store is copied into this study's folder, and the caches of
the fine-tuned generalist are written there.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robodual_cli.commands.study import data_efficiency as de
from robodual_cli.commands.study.common import (
    StudyFolder,
    episode_rows,
    eval_stage,
    finetune_stage,
    read_results,
    resume_flag,
    robodual,
    specialist_config,
    specialist_sets,
    training_seconds,
)
from robodual_core.config import ranged
from robodual_core.errors import RobodualError
from robodual_core.io import atomic_write_json

STUDY = "ablations"
FINETUNED = "generalist_finetuned"
DUAL_FINETUNED = "dual_finetuned_generalist"


def _default_variants() -> dict[str, list[str]]:
    return {
        "dual/film": ["model.conditioner=film"],
        "dual/in_context": ["model.conditioner=in_context"],
        "dual/no_tau_augmentation": ["data.augment_tau=false"],
        "dual/latents_only": ["model.generalist_inputs=latents"],
        "dual/actions_only": ["model.generalist_inputs=actions"],
        "dual/no_guidance": ["model.guidance.scale=1.0"],
        "dual/budget_x3": ["trainer.steps=x3"],
        "specialist_only/budget_x3": ["trainer.steps=x3"],
    }


@dataclass
class AblationConfig:
    base_study: str = ""  # a finished `study data-efficiency` folder (--from)
    scale: int = ranged(0, ge=0)  # demonstrations per task: one of the base study's scales; 0 = its smallest
    train_seeds: list[int] = ranged(default_factory=lambda: [0], ge=0)
    # "<base variant>/<name>": --set items added to that variant's config (dual, specialist_only,
    # diffusion_policy); "trainer.steps=xK" is K times the base study's specialist budget. Empty: the default
    # set (_default_variants). A config file's or --set's dict replaces it (dicts would merge with defaults)
    variants: dict[str, list[str]] = field(default_factory=dict)
    finetune_generalist: bool = True  # also the broad generalist fine-tuned on the target data, alone and dual
    finetune_steps: int = ranged(0, ge=0)  # 0: the base study's specialist budget


QUICK = {"variants": {"dual/film": ["model.conditioner=film"], "dual/budget_x3": ["trainer.steps=x3"]}}


def load_base(folder: Path, needs: Callable[[de.DataEfficiencyConfig], list[str]] | None = None
              ) -> de.DataEfficiencyConfig:
    """The base study's config and folder; refused unless it is a finished data-efficiency study, or, with
    ``needs`` (the base's config -> the stage names a study reads), unless those stages are done."""
    from robodual_core.config import from_dict

    meta_path = folder / "study.json"
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise RobodualError(f"--from '{folder}': expected a `robodual study data-efficiency` folder, found no "
                            "study.json") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RobodualError(f"--from '{folder}': study file '{meta_path}' is unreadable ({type(exc).__name__})") \
            from None
    if not isinstance(meta, dict) or meta.get("study") != de.STUDY or not isinstance(meta.get("config"), dict):
        found = meta.get("study") if isinstance(meta, dict) else type(meta).__name__
        raise RobodualError(f"--from '{folder}': expected a '{de.STUDY}' study, found '{found}'")
    config = {k: v for k, v in meta["config"].items() if k != "quick"}
    try:  # read, not opened as a StudyFolder: the base study is left exactly as it is
        stages = json.loads((folder / "progress.json").read_text()).get("stages", {})
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        stages = {}
    # a base started before evaluations were batched evaluated one episode at a time: its variants do too
    base = from_dict(de.DataEfficiencyConfig, {"eval_batch": 1, **config})
    if needs is not None:
        missing = [name for name in needs(base) if name not in stages]
        if missing:
            raise RobodualError(f"--from '{folder}': stage '{missing[0]}' of the data-efficiency study is not done "
                                f"({len(missing)} needed stages missing); run the study further first")
    elif "check placements" not in stages:
        raise RobodualError(f"--from '{folder}': the data-efficiency study is not finished (no 'check placements' "
                            "stage in its progress.json); finish it with the command that started it first")
    return base


def variant_sets(items: list[str], steps: int, name: str) -> list[str]:
    """``--set`` options of a variant; ``trainer.steps=xK`` becomes K times ``steps``."""
    out: list[str] = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RobodualError(f"config key 'variants.{name}': expected items like 'model.conditioner=film', "
                                f"found '{item}'")
        if key == "trainer.steps" and value.startswith("x"):
            try:
                value = str(int(float(value[1:]) * steps))
            except ValueError:
                raise RobodualError(f"config key 'variants.{name}': expected trainer.steps=xK with a number K, "
                                    f"found '{item}'") from None
        out += ["--set", f"{key}={value}"]
    return out


def check(cfg: AblationConfig, base: de.DataEfficiencyConfig) -> AblationConfig:
    if cfg.scale == 0:
        cfg.scale = base.demo_scales[0]
    if cfg.scale not in base.demo_scales:
        raise RobodualError(f"--scale {cfg.scale}: expected one of the base study's scales {base.demo_scales}")
    if len(set(cfg.train_seeds)) != len(cfg.train_seeds):
        raise RobodualError(f"--seeds: expected distinct training seeds, found {cfg.train_seeds}")
    cfg.variants = dict(cfg.variants) or _default_variants()
    for name, items in cfg.variants.items():
        variant, sep, label = name.partition("/")
        if not sep or variant not in de.VARIANTS or not label:
            raise RobodualError(f"config key 'variants': expected names like 'dual/film' (a base variant of "
                                f"{', '.join(de.VARIANTS)}, a slash, a label), found '{name}'")
        variant_sets(items, base.specialist_steps, name)
    return cfg


def run(cfg: AblationConfig, base: de.DataEfficiencyConfig, study: StudyFolder) -> dict[str, Any]:
    src = Path(cfg.base_study)
    root = study.root
    runs, evals, configs = root / "runs", root / "eval", root / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    store = root / "data" / f"target_{cfg.scale}.zarr"
    broad_gen = src / "runs" / "generalist"
    embedded = src / "data" / f"target_{base.demo_scales[-1]}.zarr"  # the base study's instruction embeddings

    def copy_store() -> dict[str, Any]:
        tmp = store.with_name(store.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src / "data" / f"target_{cfg.scale}.zarr", tmp)
        shutil.rmtree(store, ignore_errors=True)
        tmp.rename(store)
        return {"from": str(src / "data" / f"target_{cfg.scale}.zarr")}

    study.compute(f"copy target n={cfg.scale}", copy_store)

    def train(name: str, variant: str, seed: int, sets: list[str], cache: Path | None) -> Path:
        run_dir = runs / name.replace("/", "__") / f"seed{seed}"
        conf = configs / f"{name.replace('/', '__')}_seed{seed}.json"
        atomic_write_json(conf, specialist_config(base, embedded if variant == "specialist_only" else None,
                                                  base.specialist_steps, seed))
        extra = ["--generalist-cache", str(cache)] if cache is not None else []
        steps = next((int(s.split("=", 1)[1]) for s in sets if s.startswith("trainer.steps=")), base.specialist_steps)
        study.run(f"train {name} seed={seed}", robodual(
            "train", "specialist", "--dataset", str(store), "--out", str(run_dir), "--config", str(conf), *extra,
            *specialist_sets(base), *sets, *resume_flag(run_dir)), threads=base.threads,
            units=steps * base.batch_size, run_dir=run_dir, kind="train_specialist",
            work=lambda: training_seconds(run_dir, base.batch_size))
        return run_dir

    policies: dict[str, list[tuple[Path, Path]]] = {}  # name -> [(run, eval folder)] per seed
    for name, items in cfg.variants.items():
        variant = name.split("/", 1)[0]
        sets = variant_sets(items, base.specialist_steps, name)
        for seed in cfg.train_seeds:
            run_dir = train(name, variant, seed, sets, broad_gen if variant == "dual" else None)
            policies.setdefault(name, []).append((run_dir, evals / name.replace("/", "__") / f"seed{seed}"))

    if cfg.finetune_generalist:
        ft = runs / FINETUNED
        finetune_stage(study, "fine-tune generalist", broad_gen, store, ft, cfg.finetune_steps or base.specialist_steps,
                       base)
        study.run("cache fine-tuned generalist", robodual(
            "generalist", "cache", "--policy", str(ft), "--dataset", str(store), "--pooling", "step"),
            threads=base.threads, units=len(base.target_tasks) * cfg.scale, kind="cache")
        policies[FINETUNED] = [(ft, evals / FINETUNED)]
        for seed in cfg.train_seeds:
            run_dir = train(DUAL_FINETUNED, "dual", seed, [], ft)
            policies.setdefault(DUAL_FINETUNED, []).append((run_dir, evals / DUAL_FINETUNED / f"seed{seed}"))

    # one row per evaluated episode, the base study's rows included (episodes.jsonl beside the report)
    episodes: list[dict[str, Any]] = []
    for name, items in policies.items():
        kind = {FINETUNED: "generalist", DUAL_FINETUNED: "dual"}.get(name) or de.VARIANTS[name.split("/", 1)[0]][1]
        for seed, (run_dir, out) in zip(cfg.train_seeds if name != FINETUNED else [-1], items, strict=True):
            eval_stage(study, f"eval {name} {out.name}", run_dir, kind, out, base.target_tasks, base)
            episodes.extend(episode_rows(out / "results.json", policy=name, seed=seed, scale=cfg.scale,
                                         study="ablations"))

    # the base study's policies at this scale (its arms), from its own evaluations (same placements)
    rows: dict[str, dict[str, Any]] = {}
    bsrc = src / "eval"
    for variant in base.arms:
        paths = [bsrc / f"n{cfg.scale}" / variant / f"seed{s}" / "results.json" for s in base.train_seeds]
        rows[f"{de.VARIANTS[variant][0]} [base study]"] = {
            **de.pooled([read_results(p) for p in paths]),
            "train_seconds": [training_seconds(src / "runs" / f"n{cfg.scale}" / variant / f"seed{s}",
                                               base.batch_size) for s in base.train_seeds]}
        for s, path in zip(base.train_seeds, paths, strict=True):
            episodes.extend(episode_rows(path, policy=variant, seed=s, scale=cfg.scale, study="base"))
    rows[f"{de.GENERALIST_LABEL} [base study]"] = {**de.pooled([read_results(bsrc / "generalist" / "results.json")]),
                                                   "train_seconds": [training_seconds(broad_gen, base.batch_size)]}
    episodes.extend(episode_rows(bsrc / "generalist" / "results.json", policy="generalist", seed=-1, scale=cfg.scale,
                                 study="base"))
    for name, items in policies.items():
        rows[name] = {**de.pooled([read_results(out / "results.json") for _, out in items]),
                      "train_seconds": [training_seconds(r, base.batch_size) for r, _ in items],
                      "set": cfg.variants.get(name, [])}
    evaluated = set()
    for _, items in policies.items():
        for _, out in items:
            evaluated |= set(read_results(out / "results.json")["seeds"])
    base_seeds = set(read_results(bsrc / "generalist" / "results.json")["seeds"])
    if evaluated != base_seeds:
        raise RobodualError(f"evaluation placements differ from the base study's ({len(evaluated)} here, "
                            f"{len(base_seeds)} there): the ablations are not comparable")
    return {"rows": rows, "scale": cfg.scale, "placements": len(evaluated), "episodes": episodes}
