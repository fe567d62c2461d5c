"""The studies' reports (issue 30): the ablation plot's legend hides no point, the per-episode rows are written
beside the report, and a --quick run's time estimate of the full study agrees with the committed full run."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from robodual_cli.commands.study import report
from robodual_cli.commands.study.common import StudyFolder
from robodual_cli.commands.study.data_efficiency import DataEfficiencyConfig

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"


def _res(k, n, **extra):
    from robodual_cli.commands.study.common import wilson_interval

    return {"successes": k, "episodes": n, "success_rate": k / n, "ci95": list(wilson_interval(k, n)),
            "per_seed": [k / n], "tasks": {}, "train_seconds": [60.0], **extra}


def _spy_figures(monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = []
    real_savefig = plt.Figure.savefig

    def spy(fig, *a, **k):
        figs.append(fig)
        return real_savefig(fig, *a, **k)

    monkeypatch.setattr(plt.Figure, "savefig", spy)
    return figs


def test_ablation_legend_is_outside_the_axes_and_episodes_are_written(tmp_path, monkeypatch):
    figs = _spy_figures(monkeypatch)
    study = StudyFolder(tmp_path / "abl", "ablations", {"x": 1})
    rows = {"dual system [base study]": _res(95, 150), "specialist only [base study]": _res(120, 150),
            "dual/film": _res(60, 150, set=["model.conditioner=film"]),
            # the point the old legend (lower right, inside the axes) covered
            "dual/actions_only": _res(147, 150, set=["model.generalist_inputs=actions"])}
    episodes = [{"policy": "dual/actions_only", "seed": 0, "task": "t", "placement": i, "success": True, "steps": 9,
                 "scale": 5, "study": "ablations"} for i in range(3)]
    cfg = SimpleNamespace(base_study="base", train_seeds=[0], finetune_generalist=False, finetune_steps=0)
    out = report.ablations_report(study, cfg, DataEfficiencyConfig(), {"rows": rows, "scale": 5, "placements": 150,
                                                                       "episodes": episodes}, quick=False)
    fig = figs[0]
    ax = fig.axes[0]
    legend = ax.get_legend()
    assert legend is not None
    fig.canvas.draw()
    box, axes_box = legend.get_window_extent(), ax.get_window_extent()
    overlap_x = min(box.x1, axes_box.x1) - max(box.x0, axes_box.x0)
    overlap_y = min(box.y1, axes_box.y1) - max(box.y0, axes_box.y0)
    assert overlap_x <= 1 or overlap_y <= 1, (box, axes_box)  # disjoint: it covers no point
    assert box.x1 <= fig.bbox.x1 + 1 and box.y0 >= fig.bbox.y0 - 1  # and not cut off by the figure's edge
    lines = (out / "episodes.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == episodes
    assert "`episodes.jsonl`, 3 rows" in (out / "README.md").read_text()


# -- the time estimate ----------------------------------------------------------------------------------
def _full_run():
    """The committed full default data-efficiency run: its config, measured stage times (6330 s) and plan."""
    from robodual_core.config import from_dict

    summary = json.loads((RESULTS / "data-efficiency" / "report" / "summary.json").read_text())
    cfg = from_dict(DataEfficiencyConfig, {k: v for k, v in summary["config"].items() if k != "quick"})
    return cfg, summary["stage_seconds"], report.plan_data_efficiency(cfg)


def test_plan_has_the_stages_the_full_run_ran():
    _, times, plan = _full_run()
    kinds: dict[str, list[float]] = {}
    for kind, units in plan:
        kinds.setdefault(kind, []).append(units)
    # every kind's stage count and units of work as the run recorded them (one embedding stage, not one per scale)
    assert {k: len(u) for k, u in kinds.items()} == {k: t["stages"] for k, t in times.items() if k != "check"}
    assert {k: sum(u) for k, u in kinds.items()} == {k: t["units"] for k, t in times.items() if k != "check"}


def test_full_run_estimates_itself_and_scales_its_evaluations():
    cfg, times, plan = _full_run()
    measured = sum(t["seconds"] for t in times.values())
    assert 6300 < measured < 6400
    est = report.estimate(times, plan)
    assert est["seconds"] == pytest.approx(measured, rel=0.02)
    # half the evaluation episodes: about half the evaluation time. An evaluation's work is summed over episodes
    # that ran at once (2 workers x batch 8: 53893 s of episodes in 4017 s), so it is no rate of the stage
    cfg.eval_episodes = 25
    half = report.estimate(times, report.plan_data_efficiency(cfg))
    assert half["by_kind"]["eval"] == pytest.approx(times["eval"]["seconds"] / 2, rel=0.1)
    assert est["too_small"] == half["too_small"] == {}  # nothing extrapolated past 10x: a number is printed


# A --quick data-efficiency run's stage times (the QUICK config: 10 training steps at batch 8, one episode of 20
# steps per evaluation), summed per kind as report.stage_times does: measured on this 2-core machine with other
# jobs running (load average 8 to 17), as its summary.json wrote them
QUICK_TIMES = {
    "generate": {"stages": 3, "seconds": 61.7, "units": 9.0, "work_seconds": 41.9, "work_stages": 3},
    "train_generalist": {"stages": 3, "seconds": 174.8, "units": 240.0, "work_seconds": 95.3, "work_stages": 3},
    "cache": {"stages": 2, "seconds": 270.5, "units": 3.0, "work_seconds": 0.0, "work_stages": 0},
    "embed": {"stages": 1, "seconds": 76.3, "units": 0.0, "work_seconds": 0.0, "work_stages": 0},
    "train_specialist": {"stages": 6, "seconds": 353.0, "units": 480.0, "work_seconds": 170.5, "work_stages": 6},
    "eval": {"stages": 9, "seconds": 123.4, "units": 180.0, "work_seconds": 15.6, "work_stages": 9},
    "check": {"stages": 1, "seconds": 0.0, "units": 0.0, "work_seconds": 0.0, "work_stages": 0},
}


def test_quick_run_prints_no_number_for_the_full_study():
    _, times, plan = _full_run()
    est = report.estimate(QUICK_TIMES, plan)
    # the full study's stages are hundreds of times this run's: start-up, not rates, was measured
    assert est["seconds"] is None
    assert est["too_small"]["train_specialist"] == 400 and est["too_small"]["eval"] == 1125
    text = "\n".join(report._footer(QUICK_TIMES, est, "the full default study"))
    assert "No estimate for the full default study" in text and " h on this machine" not in text
    # a run with the full budgets (here the full run itself) still gets its number
    assert "about 1.8 h on this machine" in "\n".join(report._footer(times, report.estimate(times, plan), "it"))
