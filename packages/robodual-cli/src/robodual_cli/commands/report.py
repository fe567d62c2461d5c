"""The demo's report folder: comparison table, success bars, training curves, one video per policy, configs."""

from __future__ import annotations

import json
import resource
import shutil
from pathlib import Path
from typing import Any

from rich.table import Table

from robodual_cli.console import out
from robodual_core.config import to_dict
from robodual_core.io import atomic_write_json, atomic_write_text

RUNS = {"generalist": "generalist", "specialist (dual)": "specialist", "specialist only": "specialist_only"}


def interval(res: dict[str, Any], task: str | None = None) -> tuple[float, float]:
    """95% Wilson interval of a success rate (overall, or of ``task``), from the episodes counted in ``res``."""
    from robodual_cli.commands.study.common import wilson_interval

    if task is None:
        n = int(res.get("episodes_total") or sum(t["episodes"] for t in res["tasks"].values()))
        k = round(res["success_rate"] * n)
    else:
        t = res["tasks"][task]
        n, k = int(t["episodes"]), int(t["successes"])
    return wilson_interval(k, n)


def _with_interval(rate: float, ci: tuple[float, float]) -> str:
    return f"{rate:.0%} [{ci[0]:.0%}, {ci[1]:.0%}]"


def comparison_table(rows: dict[str, dict[str, Any]]) -> Table:
    tasks = list(next(iter(rows.values()))["tasks"]) if rows else []
    table = Table(title="Meta-World closed-loop success (same tasks, seeds and step budget)")
    table.add_column("policy")
    for task in tasks:
        table.add_column(task.removesuffix("-v3"), justify="right")
    table.add_column("overall", justify="right")
    table.add_column("mean length", justify="right")
    table.add_column("policy steps/s", justify="right")
    for label, res in rows.items():
        table.add_row(label, *[f"{res['tasks'][t]['success_rate']:.0%}" for t in tasks],
                      f"[bold]{_with_interval(res['success_rate'], interval(res))}[/]", f"{res['mean_episode_length']:.0f}",
                      f"{res['policy_rate_hz']:.1f}")
    return table


def _markdown(rows: dict[str, dict[str, Any]]) -> str:
    tasks = list(next(iter(rows.values()))["tasks"]) if rows else []
    head = ("| policy | " + " | ".join(tasks) + " | overall [95% Wilson interval] | mean length | policy steps/s |")
    sep = "|" + "---|" * (len(tasks) + 4)
    lines = [head, sep]
    for label, res in rows.items():
        cells = [_with_interval(res["tasks"][t]["success_rate"], interval(res, t)) for t in tasks]
        lines.append(f"| {label} | " + " | ".join(cells) +
                     f" | **{_with_interval(res['success_rate'], interval(res))}** | {res['mean_episode_length']:.0f} | {res['policy_rate_hz']:.1f} |")
    return "\n".join(lines)


def _plots(out_dir: Path, report: Path, rows: dict[str, dict[str, Any]]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    made = []
    fig, ax = plt.subplots(figsize=(8, 4.2))
    tasks = list(next(iter(rows.values()))["tasks"]) + ["overall"]
    width = 0.8 / max(len(rows), 1)
    for i, (label, res) in enumerate(rows.items()):
        vals = [res["tasks"][t]["success_rate"] for t in tasks[:-1]] + [res["success_rate"]]
        cis = [interval(res, t) for t in tasks[:-1]] + [interval(res)]
        err = [[max(v - lo, 0.0) for v, (lo, _) in zip(vals, cis, strict=True)],
               [max(hi - v, 0.0) for v, (_, hi) in zip(vals, cis, strict=True)]]
        ax.bar(np.arange(len(tasks)) + i * width, vals, width, label=label, yerr=err, capsize=3,
               error_kw={"elinewidth": 1})
    ax.set_xticks(np.arange(len(tasks)) + width * (len(rows) - 1) / 2, [t.removesuffix("-v3") for t in tasks],
                  rotation=15)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate (95% Wilson interval)")
    # below the axes: a legend inside covered the bars
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=min(len(rows), 3), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(report / "success.png", dpi=120)
    plt.close(fig)
    made.append("success.png")

    fig, ax = plt.subplots(figsize=(8, 3.5))
    for label, run in RUNS.items():
        path = out_dir / run / "metrics.jsonl"
        if not path.is_file():
            continue
        recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if recs:
            ax.plot([r["step"] for r in recs], [r["loss"] for r in recs], label=label)
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    if ax.lines:
        ax.legend()
    fig.tight_layout()
    fig.savefig(report / "training_curves.png", dpi=120)
    plt.close(fig)
    made.append("training_curves.png")
    return made


SOURCES = {"actions": "the generalist's discretized actions only, its latents masked (the default, chosen by "
                      "issue 30's pre-registered rule)",
           "both": "the generalist's latents and discretized actions (the paper's)",
           "latents": "the generalist's latents only"}


def _conditioning_note(config: Path, dual_set: list[str]) -> str:
    """What conditions the dual system's specialist, read from its resolved config (the --set items too)."""
    try:
        inputs = json.loads(config.read_text())["model"]["generalist_inputs"]
    except (OSError, ValueError, KeyError, TypeError):
        inputs = None
    inputs = inputs if isinstance(inputs, str) else None  # a hand-edited value of another type: unknown
    said = SOURCES.get(inputs, "unknown (no readable config.json)" if inputs is None else f"'{inputs}'")
    extra = f"; overrides: {', '.join(dual_set)}" if dual_set else ""
    return f"The dual system's specialist is conditioned on {said}{extra}."


def write_report(out_dir: Path, cfg: Any, result: dict[str, Any], wall_s: float) -> Path:
    rows = result["rows"]
    report = out_dir / "report"
    report.mkdir(parents=True, exist_ok=True)
    plots = _plots(out_dir, report, rows)
    videos = report / "videos"
    videos.mkdir(exist_ok=True)
    for label, res in rows.items():
        for src in res.get("videos", [])[:1]:
            src = Path(src)
            if src.is_file():
                shutil.copyfile(src, videos / f"{label.replace(' ', '_')}{src.suffix}")
    configs = report / "configs"
    configs.mkdir(exist_ok=True)
    for run in RUNS.values():
        if (out_dir / run / "config.json").is_file():
            shutil.copyfile(out_dir / run / "config.json", configs / f"{run}.json")
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    summary = {
        "config": to_dict(cfg),
        "success_rate": {label: res["success_rate"] for label, res in rows.items()},
        "per_task": {label: {t: r["success_rate"] for t, r in res["tasks"].items()} for label, res in rows.items()},
        "stage_seconds": result["timings"],
        "wall_s_this_run": wall_s,
        "pipeline_s": sum(result["timings"].values()),
        "peak_child_rss_mb": peak_mb,
        "notes": [
            ("No pretrained weights can be downloaded here: the generalist is a tiny VLA trained from scratch and the "
             "specialist's RGB encoder is a small trainable ViT instead of the paper's frozen DINO ViT-S/16."
             if not getattr(cfg, "generalist", "") else
             f"The generalist is the tiny VLA pretrained on the CPU in `{cfg.generalist}`, fine-tuned here for "
             f"{cfg.generalist_steps} steps; the specialist's RGB encoder is a small trainable ViT instead of the "
             "paper's frozen DINO ViT-S/16."),
            _conditioning_note(out_dir / "specialist" / "config.json", getattr(cfg, "dual_set", None) or []),
            "The specialist-only baseline is conditioned on instruction embeddings (language sensor) so it can tell "
            "tasks apart.",
        ],
    }
    atomic_write_json(report / "summary.json", summary)
    md = ["# robodual demo report", "", _markdown(rows), "",
          f"Pipeline time {summary['pipeline_s'] / 60:.1f} min (all stages, across resumed runs); peak memory of a "
          f"stage {peak_mb / 1024:.2f} GiB.", "",
          *[f"- {n}" for n in summary["notes"]], "", *[f"![{p}]({p})" for p in plots], ""]
    atomic_write_text(report / "README.md", "\n".join(md))
    out.print(comparison_table(rows))
    out.print(f"pipeline time {summary['pipeline_s'] / 60:.1f} min (this run {wall_s / 60:.1f} min), peak stage "
              f"memory {peak_mb / 1024:.2f} GiB")
    return report
