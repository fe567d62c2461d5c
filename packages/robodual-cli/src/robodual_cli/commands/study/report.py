"""The studies' report folders: markdown table, PNG plots, summary.json, resolved configs, the git commit,
and the CPU time of each kind of stage (with an extrapolation to another config, said to be an estimate)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from robodual_cli.commands.study.common import StudyFolder
from robodual_core.io import atomic_write_bytes, atomic_write_json, atomic_write_text


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def cell(res: dict[str, Any]) -> str:
    lo, hi = res["ci95"]
    return f"{_pct(res['success_rate'])} [{_pct(lo)}, {_pct(hi)}] ({res['successes']}/{res['episodes']})"


def stage_times(study: StudyFolder) -> dict[str, dict[str, float]]:
    """Per kind of stage: count, seconds, units of work, and the seconds of the work itself where measured."""
    kinds: dict[str, dict[str, float]] = {}
    for rec in study.progress.values():
        agg = kinds.setdefault(rec.get("kind", "other"), {"stages": 0, "seconds": 0.0, "units": 0.0,
                                                          "work_seconds": 0.0, "work_stages": 0})
        agg["stages"] += 1
        agg["seconds"] += float(rec["seconds"])
        agg["units"] += float(rec.get("units") or 0)
        if rec.get("work_seconds") is not None and rec["work_seconds"] == rec["work_seconds"]:  # not NaN
            agg["work_seconds"] += float(rec["work_seconds"])
            agg["work_stages"] += 1
    return kinds


# a planned stage more than this many times larger than this run's mean stage of its kind is not extrapolated:
# a --quick run's stages (10 training steps, one evaluation episode) measure start-up, not the steady rates
EXTRAPOLATE_MAX = 10.0


def estimate(times: dict[str, dict[str, float]], plan: list[tuple[str, float]],
             max_scale: float = EXTRAPOLATE_MAX) -> dict[str, Any]:
    """Seconds a plan of ``(kind, units)`` stages would take on this machine (an estimate), or ``seconds: None``
    with the kinds in ``too_small`` where the plan's stages are over ``max_scale`` times this run's.

    Where a kind's stages measured their own work as the time of one process (training loop, data generation),
    its rate is that work per unit and each stage adds this run's mean start-up/I-O seconds of that kind. An
    evaluation's work is summed over episodes that run at once (workers x batch), so it is no stage time:
    evaluations, like the kinds without a measured work, pay the mean start-up of the measured kinds plus the
    rest of their wall time per unit (at this run's workers and batch), or their mean per stage.
    """
    measured = {k: t for k, t in times.items() if t["work_stages"] and t["work_stages"] == t["stages"]
                and k != "eval"}
    overhead_all = (sum(t["seconds"] - t["work_seconds"] for t in measured.values())
                    / max(sum(t["stages"] for t in measured.values()), 1)) if measured else 0.0
    overhead_all = max(overhead_all, 0.0)
    total, by_kind, too_small = 0.0, {}, {}
    for kind, units in plan:
        t = times.get(kind)
        if t is None:
            continue
        per_stage = t["units"] / t["stages"]
        if units > 0 and per_stage > 0 and units > max_scale * per_stage:
            too_small[kind] = max(too_small.get(kind, 0.0), units / per_stage)
        if kind in measured and t["units"] > 0:
            overhead = max(t["seconds"] - t["work_seconds"], 0.0) / t["stages"]
            seconds = overhead + t["work_seconds"] / t["units"] * units
        elif t["units"] > 0 and units > 0:
            rate = max(t["seconds"] - overhead_all * t["stages"], 0.0) / t["units"]
            seconds = overhead_all + rate * units
        else:
            seconds = t["seconds"] / t["stages"]
        by_kind[kind] = by_kind.get(kind, 0.0) + seconds
        total += seconds
    return {"seconds": None if too_small else total, "by_kind": by_kind, "stages": len(plan),
            "overhead_per_stage_s": overhead_all, "too_small": {k: round(f, 1) for k, f in sorted(too_small.items())}}


def copy_configs(study: StudyFolder, report: Path, runs: list[Path]) -> None:
    configs = report / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    atomic_write_json(configs / "study.json", study.meta)
    src = study.root / "configs"
    for path in sorted(src.glob("*.json")) if src.is_dir() else []:
        atomic_write_bytes(configs / f"specialist_{path.name}", path.read_bytes())
    for run in runs:
        if (run / "config.json").is_file():
            name = "_".join(run.relative_to(study.root / "runs").parts)
            atomic_write_bytes(configs / f"run_{name}.json", (run / "config.json").read_bytes())


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> None:
    """A figure as PNG, written atomically."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _header(study: StudyFolder, title: str, quick: bool) -> list[str]:
    lines = [f"# {title}", "", f"Study folder `{study.root}`; started at git commit `{study.meta['git_commit']}` "
             f"({study.meta['started']})" + (f" on {study.meta['cpu']}" if study.meta.get("cpu") else "")
             + f"; this report was written on a machine with {os.cpu_count()} CPU cores.", ""]
    for r in study.meta.get("resumed", []):
        how = "The code on disk changed to" if r.get("during") else "Resumed at"
        on = f" on {r['cpu']}" if r.get("cpu") else ""
        lines += [f"{how} git commit `{r['git_commit']}` ({r['at']}){on}: later stages ran that code.", ""]
    if quick:
        lines += ["**--quick run: it checks the pipeline, not the result.** Its numbers (a handful of episodes, tens "
                  "of training steps) say nothing about the methods.", ""]
    return lines


def _footer(times: dict[str, dict[str, float]], est: dict[str, Any] | None, est_name: str) -> list[str]:
    total = sum(t["seconds"] for t in times.values())
    lines = ["## CPU time of this study (all stages, across resumed runs)", "",
             "| stage kind | stages | seconds |", "|---|---|---|"]
    lines += [f"| {k} | {int(t['stages'])} | {t['seconds']:.0f} |" for k, t in sorted(times.items())]
    lines += [f"| **total** | {sum(int(t['stages']) for t in times.values())} | **{total:.0f}** |", ""]
    if est is not None and est.get("seconds") is None:
        small = ", ".join(f"{k} {f:.0f}x" for k, f in est.get("too_small", {}).items())
        lines += [f"No estimate for {est_name} from this run: that study's stages are far larger than this run's "
                  f"({small} this run's mean stage of the kind), so this run measured start-up (of the process, of "
                  "the first training steps, of the simulator), not the rates those stages would run at (a --quick "
                  "run's times once put the full data-efficiency study at 80 h; it was measured at 1.76 h). Time a "
                  "run with the full budgets and fewer seeds, scales or episodes instead (`docs/results/README.md` "
                  "gives measured runs).", ""]
    elif est is not None:
        lines += [f"Estimate for {est_name}: about {est['seconds'] / 3600:.1f} h on this machine ({est['stages']} "
                  "stages; training time per sample, generation time per episode, evaluation wall time per control "
                  f"step at this run's workers and batch, and start-up per stage (mean "
                  f"{est['overhead_per_stage_s']:.0f} s) as measured in this run, scaled to that study's work; "
                  "evaluation counted at its full step budget). An extrapolation, not a measurement: rates change "
                  "with batch size and the machine's load.", ""]
    return lines


def _episodes(report: Path, rows: list[dict[str, Any]], md: list[str], before: str, fields: str) -> None:
    """``episodes.jsonl`` beside the report (one row per evaluated episode), named in the README before the line
    starting with ``before``."""
    from robodual_cli.commands.study.common import write_episode_rows

    write_episode_rows(report / "episodes.jsonl", rows)
    at = next(i for i, line in enumerate(md) if line.startswith(before))
    md[at:at] = [f"Per-episode results ({fields}): `episodes.jsonl`, {len(rows)} rows.", ""]


# -- data efficiency ------------------------------------------------------------------------------------
def data_efficiency_report(study: StudyFolder, cfg: Any, result: dict[str, Any], quick: bool,
                           plan_full: list[tuple[str, float]] | None) -> Path:
    report = study.root / "report"
    report.mkdir(parents=True, exist_ok=True)
    rows = result["rows"]
    labels = list(next(iter(rows.values())))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = list(cfg.demo_scales)
    for i, label in enumerate(labels):
        ys = [rows[s][label]["success_rate"] for s in rows]
        lo = [y - rows[s][label]["ci95"][0] for s, y in zip(rows, ys, strict=True)]
        hi = [rows[s][label]["ci95"][1] - y for s, y in zip(rows, ys, strict=True)]
        shift = [x * (1 + 0.03 * (i - len(labels) / 2)) for x in xs]  # side by side, intervals readable
        ax.errorbar(shift, ys, yerr=[lo, hi], marker="o", capsize=3, label=label)
    ax.set_xscale("log")
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xticks([], minor=True)  # the log axis' own minor labels (6x10^0, 2x10^1) crowd the scales
    ax.set_xlabel("demonstrations per target task (specialist's data)")
    ax.set_ylabel("success rate (95% Wilson interval)")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, report / "success_vs_demos.png")

    head = "| demos per task | " + " | ".join(labels) + " |"
    table = [head, "|" + "---|" * (len(labels) + 1)]
    table += [f"| {scale} | " + " | ".join(cell(row[label]) for label in labels) + " |" for scale, row in rows.items()]
    per_task = ["| demos per task | policy | " + " | ".join(cfg.target_tasks) + " | success per training seed |",
                "|" + "---|" * (len(cfg.target_tasks) + 3)]
    for scale, row in rows.items():
        for label, res in row.items():
            per_task.append(f"| {scale} | {label} | " + " | ".join(
                f"{_pct(res['tasks'][t]['success_rate'])} [{_pct(res['tasks'][t]['ci95'][0])}, "
                f"{_pct(res['tasks'][t]['ci95'][1])}]" for t in cfg.target_tasks)
                + " | " + ", ".join(_pct(r) for r in res["per_seed"]) + " |")
    times = stage_times(study)
    est = estimate(times, plan_full) if plan_full else None
    pl = result["placements"]
    md = _header(study, "Data efficiency (paper Table 4, at CPU scale on Meta-World)", quick) + [
        "## Set-up (fixed in `study.json` before any result existed)", "",
        (f"- Broad corpus (the generalist's stand-in for pretraining): {len(cfg.broad_tasks)} tasks x "
         f"{cfg.broad_episodes_per_task} demonstrations, paraphrased instructions, generation seed {cfg.broad_seed}; "
         f"the tiny generalist is trained on it once ({cfg.generalist_steps} steps, seed {cfg.generalist_seed}) and "
         "reused at every scale." if not getattr(cfg, "generalist", "") else
         f"- Pretrained generalist: `{cfg.generalist}` (a `robodual study pretrain` folder: its broad corpus and "
         "generalist, see its own report), reused at every scale; the union arm trains on its corpus."),
        f"- Arms: {', '.join(getattr(cfg, 'arms', []))}"
        + (f"; the dual arm's conditioning: {', '.join(cfg.dual_set)}" if getattr(cfg, "dual_set", None) else "")
        + (f"; a generalization split too (lighting '{cfg.generalization_visual}', placements widened "
           f"{cfg.generalization_placement_scale}x)" if getattr(cfg, "generalization", False) else "") + ".",
        f"- Target tasks: {', '.join(cfg.target_tasks)}; in the broad corpus at other placements: "
        f"{', '.join(result['targets_in_broad']) or 'none'}; not in it: "
        f"{', '.join(result['targets_not_in_broad']) or 'none'}.",
        f"- Target demonstrations (generation seed {cfg.target_seed}): {', '.join(map(str, cfg.demo_scales))} per "
        "task; the smaller sets are prefixes of the larger.",
        f"- Same budget for every specialist: {cfg.specialist_steps} steps at batch {cfg.batch_size}, DiT "
        f"{cfg.specialist_depth}x{cfg.specialist_hidden}, training seeds {cfg.train_seeds}.",
        f"- Evaluation: {cfg.eval_episodes} episodes per task per training seed, evaluation seed {cfg.eval_seed}, "
        f"{cfg.max_steps} steps per episode; {pl['eval_placements']} evaluation placements, {pl['demo_placements']} "
        f"demonstration placements, shared: {len(pl['shared'])}.",
        *([f"- Generalist fine-tuned: the broad generalist trained further on each scale's target demonstrations "
           f"(`train generalist --init`, {cfg.specialist_steps} steps at batch {cfg.batch_size}, the specialists' "
           "budget), evaluated alone."] if getattr(cfg, "finetune_generalist", False) else []),
        "- Generalist only is the broad generalist as is (it uses no target data; one generalist seed), so its row "
        "is the same at every scale.",
        "", "## Success rate, % [95% Wilson interval] (successes/episodes, pooled over tasks and training seeds)", "",
        *table, "",
        "Pooling episodes over training seeds treats them as independent draws; the spread between seeds is in the "
        "per-seed column below.", "", "![success vs demonstrations](success_vs_demos.png)", "",
        "## Per task", "", *per_task, "",
        *_footer(times, est, "the full default study (`robodual study data-efficiency`)"),
        "## Notes", "",
        "- No pretrained weights can be downloaded here: the generalist is a tiny VLA trained from scratch on the "
        "broad corpus, and the specialist's RGB encoders are small trainable ViTs instead of frozen DINO ViT-S/16.",
        "- The Diffusion-Policy-style baseline is the same specialist without generalist or language input: the "
        "task must be identified from the scene.",
    ]
    comps = result.get("comparisons") or []
    if comps:
        at = md.index("## Per task")
        md[at:at] = ["## Pre-registered comparisons (seed-paired)", "",
                     "Each difference pairs the same training seed and the same evaluation placement; its interval "
                     "resamples training seeds, then placements within each seed "
                     f"({comps[0]['draws']} draws). Only these support claims.", "", *comparison_table(comps), ""]
    rule = decision(cfg, result.get("episodes") or [], comps) if comps else None
    if rule is not None:
        at = md.index("## Per task")
        md[at:at] = decision_lines(rule, cfg.demo_scales[0])
    if result.get("episodes"):
        from robodual_cli.commands.study.common import write_episode_rows

        write_episode_rows(report / "episodes.jsonl", result["episodes"])
        at = md.index("## Per task")
        md[at:at] = ["Per-episode results (policy, seed, task, placement, success, steps, scale, split): "
                     "`episodes.jsonl`.", ""]
    summary = {"study": "data-efficiency", "quick": quick, "git_commit": study.meta["git_commit"],
               "config": study.config, "rows": rows, "placements": pl, "comparisons": comps, "decision": rule,
               "targets_in_broad": result["targets_in_broad"], "stage_seconds": times, "estimate_full": est}
    atomic_write_json(report / "summary.json", summary)
    atomic_write_text(report / "table.md", "\n".join(table) + "\n")
    atomic_write_text(report / "git_commit.txt", study.meta["git_commit"] + "\n")
    runs = [study.root / "runs" / "generalist", *sorted((study.root / "runs").glob("n*/*/seed*")),
            *sorted((study.root / "runs").glob("n*/generalist_finetuned"))]
    copy_configs(study, report, runs)
    atomic_write_text(report / "README.md", "\n".join(md) + "\n")
    return report


DECISION_CANDIDATES, DECISION_BASELINE = ("dual", "dual_actions"), "specialist_same"
GOAL_CONTROLS, GOAL_POINTS = ("specialist_same", "diffusion_policy_2f", "union_specialist"), 0.10


def decision(cfg: Any, episodes: list[dict[str, Any]], comps: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Issue 30's pre-registered rule for the default conditioning (docs/results/dual-earns/PREREGISTRATION.md),
    applied to a finished study whose arms include a candidate and the baseline (None otherwise):

    a candidate qualifies when its seed-paired difference to ``specialist_same`` on the seen split has an upper
    bound above 0 at every scale (never significantly below the specialist alone); of those, the one with the
    higher pooled success at the smallest scale on the seen split becomes the default; none: the default stays.
    Also the issue's goal: at the smallest scale on the seen split, ``dual`` at least 10 points above each
    control with the interval excluding 0."""
    arms = list(getattr(cfg, "arms", []))
    candidates = [a for a in DECISION_CANDIDATES if a in arms]
    if not candidates or DECISION_BASELINE not in arms:
        return None
    n0 = cfg.demo_scales[0]

    def comp(a: str, b: str, n: int) -> dict[str, Any] | None:
        return next((c for c in comps if (c["a"], c["b"]) == (a, b)
                     and c["where"] == {"scale": n, "split": "seen"}), None)

    def pooled(arm: str) -> float | None:
        rows = [r for r in episodes if r["policy"] == arm and r["scale"] == n0 and r["split"] == "seen"]
        return sum(r["success"] for r in rows) / len(rows) if rows else None

    out: dict[str, Any] = {"candidates": {}, "default": None}
    for arm in candidates:
        bounds = {n: (c["ci95"][1] if (c := comp(arm, DECISION_BASELINE, n)) else None) for n in cfg.demo_scales}
        out["candidates"][arm] = {
            "success_smallest_scale": pooled(arm), "upper_bounds_vs_baseline": bounds,
            "qualifies": all(b is not None and b > 0 for b in bounds.values())}
    qualified = [a for a, c in out["candidates"].items() if c["qualifies"] and c["success_smallest_scale"] is not None]
    if qualified:
        out["default"] = max(qualified, key=lambda a: out["candidates"][a]["success_smallest_scale"])
    if "dual" in arms:
        goal = {}
        for control in (c for c in GOAL_CONTROLS if c in arms):
            c = comp("dual", control, n0)
            goal[control] = None if c is None else {
                "difference": c["difference"], "ci95": c["ci95"],
                "met": c["difference"] >= GOAL_POINTS and c["ci95"][0] > 0}
        out["goal"] = goal
        out["goal_met"] = bool(goal) and all(g is not None and g["met"] for g in goal.values())
    return out


def decision_lines(d: dict[str, Any], n0: int) -> list[str]:
    lines = ["## The pre-registered decision rule, applied", "",
             f"A candidate qualifies when its seed-paired difference to `{DECISION_BASELINE}` (seen split) has an "
             "upper bound above 0 at every scale; the qualifying one with the higher pooled success at "
             f"{n0} demonstrations becomes the default.", "",
             "| candidate | success at the smallest scale (seen) | upper bounds vs baseline, points, by scale | "
             "qualifies |", "|---|---|---|---|"]
    for arm, c in d["candidates"].items():
        bounds = ", ".join(f"{n}: {'-' if b is None else f'{100 * b:+.1f}'}"
                           for n, b in c["upper_bounds_vs_baseline"].items())
        rate = "-" if c["success_smallest_scale"] is None else _pct(c["success_smallest_scale"])
        lines.append(f"| {arm} | {rate} | {bounds} | {'yes' if c['qualifies'] else 'no'} |")
    lines += ["", f"**Default: `{d['default']}`.**" if d["default"] else
              "**Neither candidate qualifies: the default stays the paper's conditioning.**", ""]
    if "goal" in d:
        def shown(g: dict[str, Any] | None) -> str:
            if g is None:
                return "not evaluated"
            lo, hi = g["ci95"]
            return f"{100 * g['difference']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"

        parts = [f"{k}: {shown(g)}" for k, g in d["goal"].items()]
        lines += [f"Issue 30's goal (dual at least +{100 * GOAL_POINTS:.0f} points above each control at {n0} "
                  f"demonstrations, seen split, interval excluding 0): {'met' if d['goal_met'] else 'not met'} "
                  f"({'; '.join(parts)}).", ""]
    return lines


def comparison_table(comps: list[dict[str, Any]]) -> list[str]:
    """Markdown rows of seed-paired comparisons (:func:`stats.compare` results)."""
    ctab = ["| comparison (a - b) | split | demos per task | difference, points | 95% interval (cluster bootstrap) "
            "| excludes 0 | per training seed |", "|---|---|---|---|---|---|---|"]
    for c in comps:
        lo, hi = c["ci95"]
        seeds = ", ".join(f"{s}: {100 * d:+.1f}" for s, d in c["per_seed"].items())
        ctab.append(f"| {c['a']} - {c['b']} | {c['where'].get('split', '')} | {c['where'].get('scale', '')} | "
                    f"{100 * c['difference']:+.1f} | [{100 * lo:+.1f}, {100 * hi:+.1f}] | "
                    f"{'yes' if c['excludes_zero'] else 'no'} | {seeds} |")
    return ctab


def interim_report(study: StudyFolder, cfg: Any, result: dict[str, Any]) -> Path:
    """``report-interim/``: the finished evaluations of a study still running or stopped (``--interim``), apart
    from its report so the final analysis is never mistaken for it."""
    from robodual_cli.commands.study.common import wilson_interval, write_episode_rows

    out = study.root / "report-interim"
    out.mkdir(parents=True, exist_ok=True)
    eps = result["episodes"]
    succ = ["| arm | split | demos per task | success, % [95% Wilson] (pooled) | per training seed |",
            "|---|---|---|---|---|"]
    shown = set()
    for arm, n, split in result["complete"]:
        broad = arm == "generalist"  # one model for every scale: it never sees the target demonstrations
        if broad and (arm, split) in shown:
            continue
        shown.add((arm, split))
        rows = [r for r in eps if r["policy"] == arm and r["scale"] == n and r["split"] == split]
        k = sum(r["success"] for r in rows)
        lo, hi = wilson_interval(k, len(rows))
        seeds = sorted({r["seed"] for r in rows})
        per = ", ".join(f"{s}: {_pct(sum(r['success'] for r in rows if r['seed'] == s) / sum(1 for r in rows if r['seed'] == s))}"
                        for s in seeds) if seeds != [-1] else "one run"
        succ.append(f"| {arm} | {split} | {'any (none seen)' if broad else n} | {_pct(k / max(len(rows), 1))} "
                    f"[{_pct(lo)}, {_pct(hi)}] ({k}/{len(rows)}) | {per} |")
    comps = result["comparisons"]
    md = _header(study, "Data efficiency: interim look", False) + [
        f"**Interim: {result['evaluations_done']} of {result['evaluations']} evaluations are finished.** This looks "
        "at them without running anything. It is not the study's pre-registered analysis: the final report "
        "(`report/`) is, and the decision rule is applied only there.", "",
        "## Arms evaluated for every training seed", "", *(succ if len(succ) > 2 else ["None yet."]), "",
        "## Pre-registered comparisons with both arms finished (seed-paired)", "",
        *(comparison_table(comps) if comps else ["None yet."]), "",
        f"{len(result['pending'])} comparisons wait for evaluations still to run.", "",
        "Per-episode rows of the finished evaluations: `episodes.jsonl`.", ""]
    write_episode_rows(out / "episodes.jsonl", eps)
    atomic_write_json(out / "summary.json", {
        "study": "data-efficiency", "interim": True, "git_commit": study.meta["git_commit"],
        "config": study.config, "evaluations_done": result["evaluations_done"],
        "evaluations": result["evaluations"], "complete": result["complete"], "comparisons": comps,
        "pending": result["pending"], "stage_seconds": stage_times(study)})
    atomic_write_text(out / "README.md", "\n".join(md) + "\n")
    return out


def plan_data_efficiency(cfg: Any) -> list[tuple[str, float]]:
    """The stages of a data-efficiency study and their units of work (for the time estimate): the stages
    ``data_efficiency.run`` records, kind by kind (``check`` aside)."""
    from robodual_cli.commands.study.data_efficiency import VARIANTS, needs_generalist

    arms = list(cfg.arms)
    generalist = bool(cfg.generalist) or needs_generalist(cfg)  # a pretrained one, or the broad one trained here
    plan: list[tuple[str, float]] = []
    if generalist and not cfg.generalist:
        plan += [("generate", len(cfg.broad_tasks) * cfg.broad_episodes_per_task),
                 ("train_generalist", cfg.generalist_steps * cfg.batch_size)]
    for n in cfg.demo_scales:
        plan.append(("generate", len(cfg.target_tasks) * n))
        if any(VARIANTS[a][1] == "dual" for a in arms):
            plan.append(("cache", len(cfg.target_tasks) * n))
        if "union_specialist" in arms:
            plan.append(("merge", 0))
    if "specialist_only" in arms:
        plan.append(("embed", 0))  # once: the largest store holds every instruction
    plan += [("train_specialist", cfg.specialist_steps * cfg.batch_size)] * (len(arms) * len(cfg.demo_scales)
                                                                             * len(cfg.train_seeds))
    evals = (1 if generalist else 0) + len(arms) * len(cfg.demo_scales) * len(cfg.train_seeds)
    if cfg.finetune_generalist and generalist:
        plan += [("train_generalist", cfg.specialist_steps * cfg.batch_size)] * len(cfg.demo_scales)
        evals += len(cfg.demo_scales)
    evals *= 2 if cfg.generalization else 1  # every policy on the generalization split too
    plan += [("eval", cfg.eval_episodes * len(cfg.target_tasks) * cfg.max_steps)] * evals
    return plan


# -- training efficiency --------------------------------------------------------------------------------
def training_efficiency_report(study: StudyFolder, cfg: Any, result: dict[str, Any], quick: bool,
                               plan_full: list[tuple[str, float]] | None) -> Path:
    report = study.root / "report"
    report.mkdir(parents=True, exist_ok=True)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))

    def bars(points: list[dict[str, Any]]) -> list[list[float]]:
        return [[p["success_rate"] - p["ci95"][0] for p in points], [p["ci95"][1] - p["success_rate"] for p in points]]

    gen = result["generalist"]
    ax.errorbar([p["seconds"] for p in gen], [p["success_rate"] for p in gen], yerr=bars(gen), marker="o",
                capsize=3, label="generalist only (continued training)")
    for p in result["dual"]:
        ax.annotate("", xy=(p["seconds"], p["success_rate"]), xytext=(p["generalist_seconds"], next(
            g["success_rate"] for g in gen if g["step"] == p["step"])), arrowprops={"arrowstyle": "->", "alpha": 0.4})
    dual = result["dual"]
    if dual:
        ax.errorbar([p["seconds"] for p in dual], [p["success_rate"] for p in dual], yerr=bars(dual), marker="*",
                    markersize=10, linestyle="none", capsize=3, label="+ specialist at a generalist checkpoint")
    spec = result["specialist_only"]
    if spec:
        ax.errorbar([p["seconds"] for p in spec], [p["success_rate"] for p in spec], yerr=bars(spec), marker="s",
                    linestyle="none", capsize=3, label="specialist only (instruction embeddings)")
    ax.set_xlabel("training compute, seconds on this machine")
    ax.set_ylabel("success rate (95% Wilson interval)")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, report / "success_vs_compute.png")

    table = ["| policy | generalist steps | seed | compute (s) | success, % [95% Wilson] |", "|---|---|---|---|---|"]
    table += [f"| generalist only | {p['step']} | {cfg.generalist_seed} | {p['seconds']:.1f} | {cell(p)} |"
              for p in gen]
    table += [f"| dual (specialist added at step {p['step']}) | {p['step']} | {p['seed']} | {p['seconds']:.1f} "
              f"| {cell(p)} |" for p in dual]
    table += [f"| specialist only | - | {p['seed']} | {p['seconds']:.1f} | {cell(p)} |" for p in spec]
    times = stage_times(study)
    est = estimate(times, plan_full) if plan_full else None
    pl = result["placements"]
    md = _header(study, "Training efficiency (paper Figure 5, at CPU scale on Meta-World)", quick) + [
        "## Set-up (fixed in `study.json` before any result existed)", "",
        f"- Tasks: {', '.join(cfg.tasks)}; {cfg.episodes_per_task} demonstrations per task (seed {cfg.data_seed}).",
        f"- The tiny generalist trains {cfg.generalist_steps} steps at a constant learning rate after warm-up, a "
        f"checkpoint every {cfg.generalist_steps // cfg.generalist_points} steps, each evaluated alone (continuing "
        "the generalist).",
        f"- At generalist steps {cfg.specialist_at} the specialist is added: the checkpoint's outputs are cached and "
        f"a specialist trained on them for {cfg.specialist_steps} steps (seeds {cfg.train_seeds}).",
        "- Compute: seconds of the training loops on this machine (metrics.jsonl; a checkpoint inside a logged "
        "interval gets its share), plus for the dual system the cache pass (its stage's wall time, start-up "
        "included); the training stages' start-up and the evaluations are not counted.",
        f"- Evaluation: {cfg.eval_episodes} episodes per task, seed {cfg.eval_seed}; {pl['eval_placements']} "
        f"evaluation placements, {pl['demo_placements']} demonstration placements, shared: {len(pl['shared'])}.",
        "", "## Success against compute", "", *table, "", "![success vs compute](success_vs_compute.png)", "",
        *_footer(times, est, "the full default study (`robodual study training-efficiency`)"),
    ]
    if result.get("episodes"):
        _episodes(report, result["episodes"], md, "## CPU time", "policy, seed, generalist_step, task, placement, "
                  "success, steps")
    summary = {"study": "training-efficiency", "quick": quick, "git_commit": study.meta["git_commit"],
               "config": study.config, **{k: result[k] for k in ("generalist", "dual", "specialist_only")},
               "placements": pl, "stage_seconds": times, "estimate_full": est}
    atomic_write_json(report / "summary.json", summary)
    atomic_write_text(report / "table.md", "\n".join(table) + "\n")
    atomic_write_text(report / "git_commit.txt", study.meta["git_commit"] + "\n")
    runs = [study.root / "runs" / "generalist", *sorted((study.root / "runs").glob("*/seed*"))]
    copy_configs(study, report, runs)
    atomic_write_text(report / "README.md", "\n".join(md) + "\n")
    return report


def plan_training_efficiency(cfg: Any, n_checkpoints: int) -> list[tuple[str, float]]:
    eval_units = cfg.eval_episodes * len(cfg.tasks) * cfg.max_steps
    plan: list[tuple[str, float]] = [("generate", len(cfg.tasks) * cfg.episodes_per_task),
                                     ("train_generalist", cfg.generalist_steps * cfg.batch_size)]
    plan += [("eval", eval_units)] * n_checkpoints
    plan += [("cache", len(cfg.tasks) * cfg.episodes_per_task)] * len(cfg.specialist_at)
    n_spec = len(cfg.train_seeds) * (len(cfg.specialist_at) + (1 if cfg.specialist_only else 0))
    plan += [("train_specialist", cfg.specialist_steps * cfg.batch_size), ("eval", eval_units)] * n_spec
    if cfg.specialist_only:
        plan.append(("embed", 0))
    return plan


# -- ablations -----------------------------------------------------------------------------------------
def ablations_report(study: StudyFolder, cfg: Any, base: Any, result: dict[str, Any], quick: bool) -> Path:
    report = study.root / "report"
    report.mkdir(parents=True, exist_ok=True)
    rows = result["rows"]
    ref = next((r for name, r in rows.items() if name.startswith("dual system")), None)
    plt = pyplot()
    names = list(rows)
    fig, ax = plt.subplots(figsize=(9.5, 0.35 * len(names) + 1.2))
    ys = list(range(len(names)))[::-1]
    rates = [rows[n]["success_rate"] for n in names]
    ax.errorbar(rates, ys, xerr=[[r - rows[n]["ci95"][0] for r, n in zip(rates, names, strict=True)],
                                 [rows[n]["ci95"][1] - r for r, n in zip(rates, names, strict=True)]],
                fmt="o", capsize=3)
    if ref is not None:
        ax.axvline(ref["success_rate"], color="grey", linestyle=":", label="dual system, base study")
        # outside the axes (right of them): inside, it hid the points near its corner (issue 30)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    ax.set_yticks(ys, names, fontsize=7)
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel(f"success rate at {result['scale']} demonstrations per task\n(95% Wilson interval)")
    fig.tight_layout()
    save_figure(fig, report / "ablations.png")

    def delta(res: dict[str, Any]) -> str:
        return "" if ref is None else f"{100 * (res['success_rate'] - ref['success_rate']):+.1f}"

    table = ["| policy | --set | success, % [95% Wilson] (successes/episodes) | vs base dual (points) | "
             "training loop (s, per seed) |", "|---|---|---|---|---|"]
    for name, res in rows.items():
        sets = ", ".join(f"`{s}`" for s in res.get("set", []))
        secs = ", ".join(f"{t:.0f}" for t in res["train_seconds"])
        table.append(f"| {name} | {sets} | {cell(res)} | {delta(res)} | {secs} |")
    times = stage_times(study)
    md = _header(study, f"Ablations of the data-efficiency study at {result['scale']} demonstrations per task",
                 quick) + [
        "## Set-up (fixed in `study.json` before any result existed)", "",
        f"- Base study: `{cfg.base_study}` (its config: {len(base.target_tasks)} target tasks, specialists "
        f"{base.specialist_steps} steps at batch {base.batch_size}, DiT {base.specialist_depth}x"
        f"{base.specialist_hidden}); its broad generalist, target demonstrations and evaluation placements are "
        "reused, its folder is only read.",
        f"- Each variant is the base study's specialist config with the listed `--set` items (`trainer.steps=xK`: K "
        f"times the base budget), training seeds {cfg.train_seeds}.",
        f"- Generalist fine-tuned: the broad generalist trained further on the {result['scale']} target "
        f"demonstrations per task (`train generalist --init`, {cfg.finetune_steps or base.specialist_steps} steps), "
        "evaluated alone and under a dual specialist trained on its cached outputs."
        if cfg.finetune_generalist else "- No generalist fine-tuning.",
        f"- Evaluation: the base study's {base.eval_episodes} episodes per task (seed {base.eval_seed}, "
        f"{base.max_steps} steps); the same {result['placements']} placements as the base rows (checked).",
        "", "## Success rate", "", *table, "", "![ablations](ablations.png)", "",
        *_footer(times, None, ""),
    ]
    if result.get("episodes"):
        _episodes(report, result["episodes"], md, "## CPU time", "policy, seed, task, placement, success, steps, "
                  "scale, study: this one or the base study")
    summary = {"study": "ablations", "quick": quick, "git_commit": study.meta["git_commit"], "config": study.config,
               "scale": result["scale"], "rows": rows, "placements": result["placements"], "stage_seconds": times}
    atomic_write_json(report / "summary.json", summary)
    atomic_write_text(report / "table.md", "\n".join(table) + "\n")
    atomic_write_text(report / "git_commit.txt", study.meta["git_commit"] + "\n")
    copy_configs(study, report, sorted((study.root / "runs").glob("*/seed*")) + [study.root / "runs" / "generalist_finetuned"])
    atomic_write_text(report / "README.md", "\n".join(md) + "\n")
    return report


def load_summary(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


# -- pretraining ----------------------------------------------------------------------------------------
def pretrain_report(study: StudyFolder, cfg: Any, result: dict[str, Any], quick: bool) -> Path:
    """report/: README.md (success of each evaluated checkpoint alone, per task, Wilson intervals over placements:
    one generalist, so episodes are the only source of variance), episodes.jsonl, summary.json, a plot."""
    from robodual_cli.commands.study.common import write_episode_rows

    out = study.root / "report"
    out.mkdir(parents=True, exist_ok=True)
    points = result["points"]
    rows = [r for p in points for r in p["rows"]]
    write_episode_rows(out / "episodes.jsonl", rows)
    lines = _header(study, "Pretraining the generalist on a broad corpus (robodual study pretrain)", quick)
    lines += ["![success of the generalist alone against its training steps](success.png)", "",
              f"Broad corpus: {len(cfg.tasks)} tasks x {cfg.episodes_per_task} scripted demonstrations, lighting "
              f"'{cfg.visual}', paraphrased instructions, {cfg.image_size} px, data seed {cfg.data_seed}. Tiny "
              f"generalist trained {cfg.generalist_steps} steps at batch {cfg.batch_size} (constant learning rate "
              "after warm-up: each checkpoint is what a run stopped there would hold).", "",
              f"Evaluated alone on the seen tasks: {cfg.eval_episodes} episodes per task at placements from evaluation "
              f"seed {cfg.eval_seed} (none is a demonstration's: {result['placements']['shared'] == []}), default "
              "lighting, at most {} steps. 95% Wilson intervals over episodes.".format(cfg.max_steps), "",
              "| checkpoint (steps) | training seconds | success | 95% interval |", "|---|---|---|---|"]
    for p in points:
        lo, hi = p["ci95"]
        lines.append(f"| {p['step']} | {p['train_seconds']:.0f} | {_pct(p['success_rate'])} | "
                     f"[{_pct(lo)}, {_pct(hi)}] |")
    tasks = sorted({t for p in points for t in p["tasks"]})
    lines += ["", "Per task (successes / episodes):", "", "| task | " + " | ".join(f"step {p['step']}" for p in points)
              + " |", "|---|" + "---|" * len(points)]
    for t in tasks:
        lines.append(f"| {t} | " + " | ".join(f"{p['tasks'][t]['successes']}/{p['tasks'][t]['episodes']}"
                                             for p in points) + " |")
    lines += ["", "Per-episode results: `episodes.jsonl` (policy, seed, task, placement, success, steps).", ""]
    lines += _footer(stage_times(study), None, "")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    xs = [p["step"] for p in points]
    ys = [100 * p["success_rate"] for p in points]
    err = [[100 * (p["success_rate"] - p["ci95"][0]) for p in points],
           [100 * (p["ci95"][1] - p["success_rate"]) for p in points]]
    ax.errorbar(xs, ys, yerr=err, marker="o", capsize=4)
    ax.set_xlabel("generalist training steps")
    ax.set_ylabel("success alone, seen tasks (%)")
    ax.set_ylim(0, 100)
    save_figure(fig, out / "success.png")
    atomic_write_text(out / "README.md", "\n".join(lines))
    atomic_write_json(out / "summary.json", {"config": study.config, "points": [
        {k: v for k, v in p.items() if k != "rows"} for p in points], "placements": result["placements"],
        "git_commit": study.meta["git_commit"], "resumed": study.meta.get("resumed", [])})
    return out
