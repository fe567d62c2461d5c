"""``robodual study latency``: success and smoothness under deterministic latency (control steps), with and
without real-time chunking.

It reuses a finished ``study data-efficiency`` folder (``--from``, only read), as the ablations do: its broad
generalist, target demonstrations at one scale, its dual specialists and its evaluation placements. Each arm is
evaluated at every ``L_g`` in ``generalist_latencies`` and ``d`` in ``specialist_latencies``
(``eval metaworld --latency generalist=L_g,specialist=d``):

- ``paper``: the base study's dual system, the paper's runtime (temporal aggregation, tau augmentation);
- ``no_tau_augmentation``: a dual specialist trained here without the tau augmentation (``data.augment_tau=false``);
- ``naive``: the paper's specialist, each new chunk replacing the last (``--no-aggregation``): naive switching;
- ``rtc_inference``: the same weights with inference-time real-time chunking (a copy of the run whose checkpoints
  set ``model.rtc.inference=true``; the weights are the paper arm's), switching naively otherwise;
- ``rtc_training``: a dual specialist trained here with training-time real-time chunking
  (``model.rtc.training=true``, ``max_delay = rtc_max_delay``), switching naively otherwise;
- ``generalist``: the base study's generalist alone (only ``L_g`` applies to it).

Every evaluation reports success and, from ``results.json``'s ``motion``, the chunk-boundary discontinuity (mean
``|a_t - a_{t-1}|`` at chunk switches vs within chunks) and jerk (:mod:`robodual_core.runtime.motion`).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robodual_cli.commands.study import data_efficiency as de
from robodual_cli.commands.study.common import (
    StudyFolder,
    episode_rows,
    eval_work_seconds,
    read_results,
    resume_flag,
    robodual,
    training_seconds,
)
from robodual_core.config import ranged
from robodual_core.errors import RobodualError
from robodual_core.io import atomic_write_json

STUDY = "latency"
ARMS = {  # label, eval --kind, --aggregation
    "paper": ("dual system, the paper's runtime (aggregation, tau augmentation)", "dual", True),
    "no_tau_augmentation": ("dual system trained without tau augmentation", "dual", True),
    "naive": ("dual system, naive chunk switching", "dual", False),
    "rtc_inference": ("dual system, inference-time real-time chunking", "dual", False),
    "rtc_training": ("dual system, training-time real-time chunking", "dual", False),
    "generalist": ("generalist alone", "generalist", True),
}


@dataclass
class LatencyStudyConfig:
    base_study: str = ""  # a finished `study data-efficiency` folder (--from)
    scale: int = ranged(0, ge=0)  # demonstrations per task: one of the base study's scales; 0 = its smallest
    train_seeds: list[int] = ranged(default_factory=lambda: [0], ge=0)  # of the base study's dual runs
    generalist_latencies: list[int] = ranged(default_factory=lambda: [0, 8, 16, 32], ge=0)
    specialist_latencies: list[int] = ranged(default_factory=lambda: [0, 1, 2, 4], ge=0)
    arms: list[str] = field(default_factory=lambda: list(ARMS))
    rtc_max_delay: int = ranged(4, ge=1)  # training-time RTC's d_max
    rtc_strength: float = ranged(1.0, ge=0, le=1)  # inference-time RTC's weight scale
    # the base study's dual arm whose runs are the paper arm (and whose conditioning the arms trained here share):
    # "dual" in a study of the default arms; "dual_paper" (the paper's conditioning) or "dual" (issue 30's) in one
    # with issue 30's arms
    base_arm: str = "dual"
    # placements: 0 = the base study's evaluation seed; any other value is a new seed (a study of its own)
    eval_seed: int = ranged(0, ge=0)
    # issue 29's goal cell (L_g, d), tested against (0, 0) when both are in the grid; goal_seeds: more training
    # seeds of the base evaluated at those two cells only (seed-paired intervals where the grid has one seed)
    goal_cell: list[int] = ranged(default_factory=lambda: [16, 4], ge=0)
    goal_seeds: list[int] = ranged(default_factory=list, ge=0)
    # G1 (the best runtime within 5 points of itself at no latency) decides only where that arm succeeds at least
    # this often at (0, 0): near the floor every arm is "within 5 points" and the test says nothing
    informative_floor: float = ranged(0.3, ge=0, le=1)
    bootstrap_draws: int = ranged(10000, ge=100)


QUICK = {"generalist_latencies": [0, 8], "specialist_latencies": [2]}


def check(cfg: LatencyStudyConfig, base: de.DataEfficiencyConfig) -> LatencyStudyConfig:
    if cfg.scale == 0:
        cfg.scale = base.demo_scales[0]
    if cfg.scale not in base.demo_scales:
        raise RobodualError(f"--scale {cfg.scale}: expected one of the base study's scales {base.demo_scales}")
    missing = [s for s in cfg.train_seeds if s not in base.train_seeds]
    if missing or len(set(cfg.train_seeds)) != len(cfg.train_seeds) or not cfg.train_seeds:
        raise RobodualError(f"--seeds: expected distinct training seeds of the base study ({base.train_seeds}), "
                            f"found {cfg.train_seeds}")
    extra = [s for s in cfg.goal_seeds if s not in base.train_seeds or s in cfg.train_seeds]
    if extra or len(set(cfg.goal_seeds)) != len(cfg.goal_seeds):
        raise RobodualError(f"config key 'goal_seeds': expected distinct training seeds of the base study "
                            f"({base.train_seeds}) other than train_seeds {cfg.train_seeds}, found {cfg.goal_seeds}")
    if len(cfg.goal_cell) != 2:
        raise RobodualError(f"config key 'goal_cell': expected [L_g, d], found {cfg.goal_cell}")
    if cfg.base_arm not in base.arms or de.VARIANTS[cfg.base_arm][1] != "dual":
        duals = [a for a in base.arms if de.VARIANTS[a][1] == "dual"]
        raise RobodualError(f"config key 'base_arm': '{cfg.base_arm}' is not a dual-system arm of the base study; "
                            f"expected one of {', '.join(duals) or '(none: the base study has no dual arm)'}")
    unknown = [a for a in cfg.arms if a not in ARMS]
    if unknown or not cfg.arms or len(set(cfg.arms)) != len(cfg.arms):
        raise RobodualError(f"config key 'arms': expected distinct names among {', '.join(ARMS)}, found {cfg.arms}")
    for key in ("generalist_latencies", "specialist_latencies"):
        values = getattr(cfg, key)
        if not values or len(set(values)) != len(values):
            raise RobodualError(f"config key '{key}': expected distinct control-step counts, found {values}")
    return cfg


def base_stages(cfg: LatencyStudyConfig, base: de.DataEfficiencyConfig) -> list[str]:
    """The base study's stages the sweep reads: its data at the scale and the chosen dual arm's trainings."""
    n = cfg.scale
    return [f"generate target n={n}", f"cache generalist n={n}",
            *(f"train {cfg.base_arm} n={n} seed={s}" for s in [*cfg.train_seeds, *cfg.goal_seeds])]


def with_inference_rtc(src: Path, dst: Path, strength: float) -> dict[str, Any]:
    """A copy of training run ``src`` whose checkpoints turn on inference-time RTC (the weights are untouched)."""
    tmp = dst.with_name(dst.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    changed = []
    for meta in sorted(tmp.glob("checkpoints/*/model_config.json")):
        data = json.loads(meta.read_text())
        rtc = data.setdefault("specialist", {}).setdefault("rtc", {})
        rtc.update({"inference": True, "strength": strength})
        atomic_write_json(meta, data)
        changed.append(meta.parent.name)
    if not changed:
        raise RobodualError(f"'{src}' has no checkpoints/<step>/model_config.json to switch real-time chunking on")
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    return {"from": str(src), "checkpoints": changed}


def run(cfg: LatencyStudyConfig, base: de.DataEfficiencyConfig, study: StudyFolder) -> dict[str, Any]:
    src = Path(cfg.base_study)
    root = study.root
    runs, evals, configs = root / "runs", root / "eval", root / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    store = src / "data" / f"target_{cfg.scale}.zarr"  # read only
    # the base study's broad generalist: its own, or the pretrained one it names (`generalist`)
    broad_gen = de.generalist_dir(base, src)
    if broad_gen is None:
        raise RobodualError(f"--from '{src}': the base study has no generalist; expected one with a dual arm")
    n = cfg.scale
    eval_seed = cfg.eval_seed or base.eval_seed

    def train(name: str, seed: int, sets: list[str]) -> Path:
        run_dir = runs / name / f"seed{seed}"
        conf = configs / f"{name}_seed{seed}.json"
        atomic_write_json(conf, de.arm_config(base, cfg.base_arm, store, seed))
        study.run(f"train {name} seed={seed}", robodual(
            "train", "specialist", "--dataset", str(store), "--out", str(run_dir), "--config", str(conf),
            "--generalist-cache", str(broad_gen), *de.arm_sets(base, cfg.base_arm), *sets, *resume_flag(run_dir)),
            threads=base.threads, units=base.specialist_steps * base.batch_size, run_dir=run_dir,
            kind="train_specialist", work=lambda: training_seconds(run_dir, base.batch_size))
        return run_dir

    policies: dict[str, list[tuple[int, Path]]] = {}
    for seed in [*cfg.train_seeds, *cfg.goal_seeds]:
        paper = src / "runs" / f"n{n}" / cfg.base_arm / f"seed{seed}"
        for arm in cfg.arms:
            if arm in ("paper", "naive"):
                policy = paper
            elif arm == "no_tau_augmentation":
                policy = train(arm, seed, ["--set", "data.augment_tau=false"])
            elif arm == "rtc_training":
                policy = train(arm, seed, ["--set", "model.rtc.training=true",
                                           "--set", f"model.rtc.max_delay={cfg.rtc_max_delay}"])
            elif arm == "rtc_inference":
                policy = runs / arm / f"seed{seed}"
                study.compute(f"derive {arm} seed={seed}",
                              lambda policy=policy, paper=paper: with_inference_rtc(paper, policy, cfg.rtc_strength))
            else:
                continue
            policies.setdefault(arm, []).append((seed, policy))
    if "generalist" in cfg.arms:
        policies["generalist"] = [(-1, broad_gen)]

    cells: dict[str, dict[str, Any]] = {}
    episodes: list[dict[str, Any]] = []
    for arm, items in policies.items():
        _, kind, aggregation = ARMS[arm]
        for lg, d in arm_cells(cfg, arm):
            per_seed = []
            for seed, policy in items:
                if (lg, d) not in arm_cells(cfg, arm, seed):
                    continue  # the goal seeds run the goal's cells only
                out = evals / arm / f"g{lg}_s{d}" / (f"seed{seed}" if seed >= 0 else "all")
                study.run(f"eval {arm} L_g={lg} d={d} {out.name}", robodual(
                    "eval", "metaworld", "--policy", str(policy), "--kind", kind,
                    "--tasks", ",".join(base.target_tasks), "--episodes", str(base.eval_episodes),
                    "--seed", str(eval_seed), "--max-steps", str(base.max_steps),
                    "--workers", str(base.workers), "--batch", str(base.eval_batch), "--out", str(out),
                    "--videos", "0", "--image-size", str(base.image_size),
                    "--latency", f"generalist={lg},specialist={d}",
                    "--aggregation" if aggregation else "--no-aggregation"),
                    units=base.eval_episodes * len(base.target_tasks) * base.max_steps, kind="eval",
                    work=lambda out=out: eval_work_seconds(out / "results.json"))
                per_seed.append(out / "results.json")
                episodes.extend(episode_rows(out / "results.json", policy=f"{arm}@{lg},{d}", seed=seed, arm=arm,
                                             generalist_latency=lg, specialist_latency=d))
            cells[f"{arm} L_g={lg} d={d}"] = {"arm": arm, "generalist_latency": lg, "specialist_latency": d,
                                               "seeds": len(per_seed), **cell(per_seed)}
    return {"cells": cells, "scale": n, "arms": {a: ARMS[a][0] for a in policies}, "episodes": episodes,
            "goals": goals(cfg, cells, episodes)}


def arm_cells(cfg: LatencyStudyConfig, arm: str, seed: int | None = None) -> list[tuple[int, int]]:
    """The (L_g, d) cells ``arm`` is evaluated at (for training ``seed``: a goal seed runs the goal cell and
    (0, 0) only); the generalist alone has no specialist, so d = 0 (its goal cell is (L_g, 0))."""
    ds = cfg.specialist_latencies if arm != "generalist" else [0]
    grid = [(lg, d) for lg in cfg.generalist_latencies for d in ds]
    goal = [(0, 0), (cfg.goal_cell[0], cfg.goal_cell[1] if arm != "generalist" else 0)]
    if cfg.goal_seeds:
        grid += [c for c in goal if c not in grid]
    if seed is not None and seed in cfg.goal_seeds:
        return [c for c in grid if c in goal]
    return grid


def goals(cfg: LatencyStudyConfig, cells: dict[str, dict[str, Any]], episodes: list[dict[str, Any]]) -> dict:
    """Issue 29's goal at ``goal_cell`` (L_g, d) against (0, 0), seed-paired (stats.compare): each dual arm's
    loss there (G1: the best within 5 points), naive switching's (G2: at least 15 points), the best arm's
    chunk-boundary jump against naive's (G3: at least 2x lower), the generalist alone at L_g (G4), and the paper's
    tau-augmentation claim (paper - no_tau_augmentation at the goal cell), and the registered decision
    (``default``: the arm that meets G1 with the highest success at the goal cell, or None). Empty when a cell is
    not in the grid."""
    from robodual_cli.commands.study.stats import compare

    lg, d = cfg.goal_cell
    at = lambda arm, g, s: cells.get(f"{arm} L_g={g} d={s}")  # noqa: E731
    duals = [a for a in ARMS if a != "generalist" and at(a, lg, d) and at(a, 0, 0)]
    if not duals:
        return {}
    draws, seed = cfg.bootstrap_draws, cfg.eval_seed or 0
    loss = {a: compare(episodes, f"{a}@{lg},{d}", f"{a}@0,0", draws=draws, seed=seed) for a in duals}
    best = max(duals, key=lambda a: at(a, lg, d)["success_rate"])
    at_zero = at(best, 0, 0)["success_rate"]
    informative = at_zero >= cfg.informative_floor
    out: dict[str, Any] = {"cell": [lg, d], "loss_vs_zero": loss, "best": best,
                           "G1_best_within_5_points": bool(loss[best]["ci95"][0] >= -0.05) if informative else None,
                           "G1_informative": {"best_at_zero": at_zero, "floor": cfg.informative_floor,
                                              "informative": informative}}
    # the registered decision: the arm that meets G1 (within 5 points of itself at (0, 0), above the floor there)
    # with the highest success at the goal cell becomes the default; None: no arm does, the defaults stay
    within = {a: bool(loss[a]["ci95"][0] >= -0.05) for a in duals}
    eligible = [a for a in duals if within[a] and at(a, 0, 0)["success_rate"] >= cfg.informative_floor]
    out["within_5_points"] = within
    out["default"] = max(eligible, key=lambda a: at(a, lg, d)["success_rate"]) if eligible else None
    if "naive" in loss:
        out["G2_naive_loses_15_points"] = bool(loss["naive"]["ci95"][1] <= -0.15)
        jb, jn = at(best, lg, d)["motion"]["switch_jump"], at("naive", lg, d)["motion"]["switch_jump"]
        out["switch_jump"] = {"best": jb, "naive": jn}
        out["G3_discontinuity_2x_lower"] = bool(jb is not None and jn is not None and jb * 2 <= jn)
    if at("generalist", lg, 0):
        g = at("generalist", lg, 0)
        out["G4_generalist_alone"] = {"success_rate": g["success_rate"], "ci95": g["ci95"]}
    if "paper" in duals and "no_tau_augmentation" in duals:
        out["tau_augmentation"] = compare(episodes, f"paper@{lg},{d}", f"no_tau_augmentation@{lg},{d}",
                                          draws=draws, seed=seed)
        # the claim is registered at the goal cell and at the longest generalist latency with the goal's d (one
        # training seed there: an interval over placements only)
        late = max(cfg.generalist_latencies)
        if late != lg and at("paper", late, d) and at("no_tau_augmentation", late, d):
            out["tau_augmentation_longest"] = {
                "cell": [late, d], **compare(episodes, f"paper@{late},{d}", f"no_tau_augmentation@{late},{d}",
                                             draws=draws, seed=seed)}
    return out


def plot(cfg: LatencyStudyConfig, episodes: list[dict[str, Any]], path: Path) -> bool:
    """``path``: success against the generalist's latency, a panel per specialist latency d, a line per arm, for
    the first training seed (the one that runs the whole grid; the goal seeds run two cells only), the generalist
    alone dashed in every panel; 95% Wilson intervals as bands. False when there is nothing to plot."""
    from robodual_cli.commands.study.common import wilson_interval
    from robodual_cli.commands.study.report import pyplot, save_figure

    seed = cfg.train_seeds[0]
    tally: dict[tuple[str, int, int], list[int]] = {}
    for r in episodes:
        if r.get("seed") not in (seed, -1) or r.get("arm") not in ARMS:
            continue
        key = (r["arm"], int(r["generalist_latency"]), int(r["specialist_latency"]))
        t = tally.setdefault(key, [0, 0])
        t[0] += bool(r["success"])
        t[1] += 1
    if not tally:
        return False
    plt = pyplot()
    ds = sorted({d for a, _, d in tally if a != "generalist"} or {0})
    fig, axes = plt.subplots(1, len(ds), figsize=(3.4 * len(ds) + 1.2, 3.4), sharey=True, squeeze=False)
    for ax, d in zip(axes[0], ds, strict=True):
        for arm in ARMS:
            at_d = 0 if arm == "generalist" else d
            pts = sorted((lg, t) for (a, lg, dd), t in tally.items() if a == arm and dd == at_d)
            if not pts:
                continue
            xs = [lg for lg, _ in pts]
            ys = [100 * s / n for _, (s, n) in pts]
            lo, hi = zip(*(wilson_interval(s, n) for _, (s, n) in pts), strict=True)
            style = {"linestyle": "--", "color": "0.35"} if arm == "generalist" else {}
            label = "generalist alone" if arm == "generalist" else arm.replace("_", " ")
            line = ax.plot(xs, ys, marker="o", label=label, **style)[0]
            ax.fill_between(xs, [100 * v for v in lo], [100 * v for v in hi], alpha=0.12, color=line.get_color())
        ax.set_title(f"specialist latency d = {d}")
        ax.set_xlabel("generalist latency L_g (control steps)")
        ax.set_xticks(sorted({lg for _, lg, _ in tally}))
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"success (%), training seed {seed}")
    handles, labels = axes[0][0].get_legend_handles_labels()
    right = 1 - 1.9 / fig.get_figwidth()  # the legend's column, outside the panels
    fig.tight_layout(rect=(0, 0, right, 1))
    fig.legend(handles, labels, fontsize=8, loc="center left", bbox_to_anchor=(right, 0.5))
    save_figure(fig, path)
    return True


def cell(results: list[Path]) -> dict[str, Any]:
    """Success pooled over seeds, and the motion figures averaged over seeds."""
    pooled = de.pooled([read_results(p) for p in results])
    motions = [json.loads(p.read_text()).get("motion") or {} for p in results]
    motion = {}
    for key in ("switch_jump", "within_jump", "jerk", "switch_over_within"):
        values = [m[key] for m in motions if m.get(key) is not None]
        motion[key] = sum(values) / len(values) if values else None
    return {**pooled, "motion": motion}


def report(study: StudyFolder, cfg: LatencyStudyConfig, result: dict[str, Any], quick: bool) -> Path:
    """``report/summary.json`` and a ``README.md`` table: success and smoothness per arm and latency."""
    from robodual_cli.commands.study.common import write_episode_rows

    out = study.root / "report"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "summary.json", {**{k: v for k, v in result.items() if k != "episodes"},
                                             "quick": quick, "config": study.config})
    write_episode_rows(out / "episodes.jsonl", result.get("episodes", []))

    def num(v: Any, fmt: str = ".3f") -> str:
        return "-" if v is None else format(v, fmt)

    lines = [f"# Latency study{' (quick: checks the pipeline, not the result)' if quick else ''}", "",
             f"Base study: `{cfg.base_study}` (its `{cfg.base_arm}` runs are the paper arm), {cfg.scale} "
             f"demonstrations per task, training seeds {cfg.train_seeds}"
             + (f" (and {cfg.goal_seeds} at the goal cell {tuple(cfg.goal_cell)} and at (0, 0))" if cfg.goal_seeds
                else "") + ", evaluation seed "
             f"{cfg.eval_seed or 'of the base study'}. Latency in control steps (`--latency generalist=L_g,specialist=d`). Discontinuity: "
             "mean |a_t - a_(t-1)| at chunk switches vs within chunks; jerk: mean |second difference| of the "
             "actions (position dimensions).", "",
             "| arm | L_g | d | success | 95% CI | switch jump | within jump | ratio | jerk |",
             "|---|---:|---:|---:|---|---:|---:|---:|---:|"]
    for row in result["cells"].values():
        m = row["motion"]
        lo, hi = row.get("ci95", [None, None])
        lines.append(f"| {row['arm']} | {row['generalist_latency']} | {row['specialist_latency']} | "
                     f"{row['success_rate']:.1%} | [{num(lo, '.2f')}, {num(hi, '.2f')}] | {num(m['switch_jump'])} | "
                     f"{num(m['within_jump'])} | {num(m['switch_over_within'], '.2f')} | {num(m['jerk'])} |")
    if plot(cfg, result.get("episodes", []), out / "success.png"):
        lines[2:2] = ["![success against latency, a panel per specialist latency](success.png)", ""]
    lines += ["", "Per-episode results (policy = arm@L_g,d, training seed, task, placement, success, steps): "
              "`episodes.jsonl`.", *goal_lines(result.get("goals") or {})]
    (out / "README.md").write_text("\n".join(lines) + "\n")
    return out


def goal_lines(g: dict[str, Any]) -> list[str]:
    """The goal section of the report (:func:`goals`), seed-paired differences in points."""
    if not g:
        return []
    lg, d = g["cell"]

    def diff(c: dict[str, Any]) -> str:
        lo, hi = c["ci95"]
        seeds = ", ".join(f"{s}: {100 * v:+.1f}" for s, v in c["per_seed"].items())
        return f"{100 * c['difference']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] (per seed {seeds})"

    yes = lambda v: "met" if v else "not met"  # noqa: E731
    floor = g.get("G1_informative") or {}
    g1 = (yes(g["G1_best_within_5_points"]) if g["G1_best_within_5_points"] is not None else
          f"uninformative, not decided (it succeeds {100 * floor['best_at_zero']:.1f}% at no latency, below the "
          f"registered floor of {100 * floor['floor']:.0f}%: near the floor every arm stays within 5 points)")
    lines = ["", f"## Issue 29's goal at L_g = {lg}, d = {d} against no latency (seed-paired)", "",
             "| arm | success at the goal cell minus at (0, 0), points [95% cluster bootstrap] | within 5 points |",
             "|---|---|---|"]
    within = g.get("within_5_points", {})
    lines += [f"| {arm} | {diff(c)} | {'yes' if within.get(arm) else 'no'} |" for arm, c in g["loss_vs_zero"].items()]
    lines += ["", f"- G1, the best runtime ({g['best']}) within 5 points of itself at no latency: "
              f"{g1}."]
    if "default" in g:
        lines.append(f"- Decision (registered rule): `{g['default']}` becomes the default (the arm that meets G1 "
                     f"with the highest success at the goal cell)." if g["default"] else
                     "- Decision (registered rule): no arm meets G1: the defaults stay.")
    if "G2_naive_loses_15_points" in g:
        jb, jn = (("-" if v is None else format(v, ".4f")) for v in (g["switch_jump"]["best"],
                                                                       g["switch_jump"]["naive"]))
        lines += [f"- G2, naive switching loses at least 15 points: {yes(g['G2_naive_loses_15_points'])}.",
                  f"- G3, the best runtime's chunk-boundary jump at least 2x lower than naive's ({jb} vs {jn}): "
                  f"{yes(g['G3_discontinuity_2x_lower'])}."]
    if "G4_generalist_alone" in g:
        a = g["G4_generalist_alone"]
        lines.append(f"- G4, the generalist alone at L_g = {lg}: {100 * a['success_rate']:.1f}% "
                     f"[{100 * a['ci95'][0]:.1f}, {100 * a['ci95'][1]:.1f}].")
    if "tau_augmentation" in g:
        lines.append(f"- The paper's latency-aware training (paper minus no tau augmentation at the goal cell): "
                     f"{diff(g['tau_augmentation'])}.")
    if "tau_augmentation_longest" in g:
        late = g["tau_augmentation_longest"]
        lines.append(f"- The same at L_g = {late['cell'][0]}, d = {late['cell'][1]} (one training seed: the interval is "
                     f"over placements): {diff(late)}.")
    return lines
