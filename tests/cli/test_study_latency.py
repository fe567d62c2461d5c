"""`robodual study latency --quick` on a quick data-efficiency base: every arm at every latency, the derived
inference-time RTC run, the report with success and smoothness; resuming redoes nothing; bad configs refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROBODUAL = [sys.executable, "-m", "robodual_cli.app"]


def run(args, timeout=1500):
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    return subprocess.run(ROBODUAL + [str(a) for a in args], capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.mark.slow
def test_latency_quick_runs_every_arm_and_resumes(tmp_path, quick_data_efficiency):
    base = quick_data_efficiency  # read only
    base_files = {p: p.read_bytes() for p in (base / "study.json", base / "progress.json")}
    out = tmp_path / "latency"
    args = ["study", "latency", "--quick", "--from", base, "--out", out]
    proc = run(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "report" / "summary.json").read_text())
    cells = summary["cells"]
    # 5 dual arms x L_g {0, 8} x d {2}, and the generalist at L_g {0, 8}
    assert len(cells) == 5 * 2 + 2
    assert {c["arm"] for c in cells.values()} == {"paper", "no_tau_augmentation", "naive", "rtc_inference",
                                                  "rtc_training", "generalist"}
    for cell in cells.values():
        assert cell["episodes"] == 1 and set(cell["motion"]) >= {"switch_jump", "within_jump", "jerk"}
    results = json.loads((out / "eval" / "naive" / "g8_s2" / "seed0" / "results.json").read_text())
    assert results["latency"] == {"generalist": 8, "specialist": 2} and results["aggregation"] is False
    assert results["episodes"][0]["motion"]["switches"] >= 1
    derived = json.loads(next((out / "runs" / "rtc_inference" / "seed0" / "checkpoints").glob("*/model_config.json"))
                         .read_text())
    assert derived["specialist"]["rtc"]["inference"] is True
    trained = json.loads((out / "runs" / "rtc_training" / "seed0" / "config.json").read_text())
    assert trained["model"]["rtc"]["training"] is True and trained["model"]["rtc"]["max_delay"] == 4
    assert "| rtc_inference | 8 | 2 |" in (out / "report" / "README.md").read_text()
    again = run(args)
    assert again.returncode == 0 and "0 stages run now" in again.stdout, again.stderr[-2000:]
    assert {p: p.read_bytes() for p in base_files} == base_files


def test_latency_study_refuses_a_foreign_base_and_bad_configs(tmp_path):
    from robodual_cli.commands.study import data_efficiency as de
    from robodual_cli.commands.study import latency as lt
    from robodual_core.errors import RobodualError

    proc = run(["study", "latency", "--quick", "--from", tmp_path / "nothing", "--out", tmp_path / "o"])
    assert proc.returncode != 0 and "--from" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()
    base = de.DataEfficiencyConfig(demo_scales=[5, 10], train_seeds=[0, 1])
    assert lt.check(lt.LatencyStudyConfig(), base).scale == 5
    for cfg, needle in ((lt.LatencyStudyConfig(arms=["paper", "teleport"]), "'arms'"),
                        (lt.LatencyStudyConfig(train_seeds=[2]), "--seeds"),
                        (lt.LatencyStudyConfig(scale=7), "--scale 7"),
                        (lt.LatencyStudyConfig(specialist_latencies=[2, 2]), "specialist_latencies"),
                        (lt.LatencyStudyConfig(base_arm="dual_paper"), "base_arm"),  # not an arm of this base
                        (lt.LatencyStudyConfig(base_arm="specialist_only"), "base_arm")):
        with pytest.raises(RobodualError, match=needle):
            lt.check(cfg, base)


def test_latency_needs_only_the_base_stages_it_reads(tmp_path):
    """A base still running is enough once its data at the scale and the chosen dual arm's runs are done."""
    from robodual_cli.commands.study import data_efficiency as de
    from robodual_cli.commands.study import latency as lt
    from robodual_cli.commands.study.ablations import load_base
    from robodual_core.config import to_dict
    from robodual_core.errors import RobodualError

    base_dir = tmp_path / "base"
    base_dir.mkdir()
    cfg = de.DataEfficiencyConfig(demo_scales=[5, 10], train_seeds=[0, 1], arms=["dual", "dual_paper"])
    (base_dir / "study.json").write_text(json.dumps({"study": "data-efficiency", "config": to_dict(cfg)}))
    stages = {name: {"seconds": 1} for name in ("generate target n=5", "cache generalist n=5",
                                                "train dual_paper n=5 seed=0")}
    (base_dir / "progress.json").write_text(json.dumps({"study": "data-efficiency", "stages": stages}))
    needs = lambda b: lt.base_stages(lt.check(lt.LatencyStudyConfig(base_arm="dual_paper"), b), b)  # noqa: E731
    assert load_base(base_dir, needs=needs).arms == ["dual", "dual_paper"]  # unfinished, but enough
    with pytest.raises(RobodualError, match="not finished"):
        load_base(base_dir)  # the ablations still need a finished base
    proc = run(["study", "latency", "--from", base_dir, "--out", tmp_path / "o", "--set", "base_arm=dual"])
    assert proc.returncode != 0 and "'train dual n=5 seed=0'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_goal_seeds_run_the_goal_cells_and_the_goal_is_tested_seed_paired():
    from robodual_cli.commands.study import data_efficiency as de
    from robodual_cli.commands.study import latency as lt
    from robodual_core.errors import RobodualError

    cfg = lt.LatencyStudyConfig(train_seeds=[0], goal_seeds=[1, 2], generalist_latencies=[0, 8, 16],
                                specialist_latencies=[0, 4])
    assert lt.arm_cells(cfg, "paper", 0) == [(0, 0), (0, 4), (8, 0), (8, 4), (16, 0), (16, 4)]
    assert lt.arm_cells(cfg, "paper", 1) == [(0, 0), (16, 4)]
    assert lt.arm_cells(cfg, "generalist") == [(0, 0), (8, 0), (16, 0)]
    base = de.DataEfficiencyConfig(demo_scales=[5], train_seeds=[0, 1, 2])
    for bad, needle in ((lt.LatencyStudyConfig(goal_seeds=[0]), "goal_seeds"),
                        (lt.LatencyStudyConfig(goal_seeds=[7]), "goal_seeds"),
                        (lt.LatencyStudyConfig(goal_cell=[16]), "goal_cell")):
        with pytest.raises(RobodualError, match=needle):
            lt.check(bad, base)

    # paper keeps its success at (16, 4); naive loses 30 points there; generalist alone at 16
    def rows(arm, lg, d, rate):
        return [{"policy": f"{arm}@{lg},{d}", "seed": s, "task": "push-v3", "placement": p,
                 "success": p < rate * 20, "steps": 5} for s in (0, 1, 2) for p in range(20)]

    eps = [*rows("paper", 0, 0, 0.6), *rows("paper", 16, 4, 0.6), *rows("naive", 0, 0, 0.6),
           *rows("naive", 16, 4, 0.3), *rows("no_tau_augmentation", 0, 0, 0.6),
           *rows("no_tau_augmentation", 16, 4, 0.4)]

    def cell(arm, lg, d, rate, jump):
        return {f"{arm} L_g={lg} d={d}": {"success_rate": rate, "ci95": [rate - 0.1, rate + 0.1],
                                          "motion": {"switch_jump": jump}}}

    cells = {**cell("paper", 0, 0, 0.6, 0.01), **cell("paper", 16, 4, 0.6, 0.01),
             **cell("naive", 0, 0, 0.6, 0.05), **cell("naive", 16, 4, 0.3, 0.05),
             **cell("no_tau_augmentation", 0, 0, 0.6, 0.01), **cell("no_tau_augmentation", 16, 4, 0.4, 0.01),
             **cell("generalist", 16, 0, 0.2, None)}
    g = lt.goals(lt.LatencyStudyConfig(bootstrap_draws=500), cells, eps)
    assert g["best"] == "paper" and g["G1_best_within_5_points"]
    assert g["loss_vs_zero"]["naive"]["difference"] == pytest.approx(-0.3) and g["G2_naive_loses_15_points"]
    assert g["G3_discontinuity_2x_lower"] and g["G4_generalist_alone"]["success_rate"] == 0.2
    assert g["tau_augmentation"]["difference"] == pytest.approx(0.2)
    text = "\n".join(lt.goal_lines(g))
    assert "G1, the best runtime (paper) within 5 points of itself at no latency: met" in text
    assert g["within_5_points"] == {"paper": True, "naive": False, "no_tau_augmentation": False}
    assert g["default"] == "paper" and "Decision (registered rule): `paper` becomes the default" in text
    # the registered decision takes the arm that meets G1 with the highest success at the goal cell: when the
    # best arm there loses more than 5 points, a lower arm that keeps its success is the one chosen
    worse = {**cells, **cell("paper", 0, 0, 0.9, 0.01), **cell("paper", 16, 4, 0.6, 0.01),
             **cell("no_tau_augmentation", 0, 0, 0.4, 0.01), **cell("no_tau_augmentation", 16, 4, 0.4, 0.01)}
    eps2 = [*rows("paper", 0, 0, 0.9), *rows("paper", 16, 4, 0.6), *rows("naive", 0, 0, 0.6),
            *rows("naive", 16, 4, 0.3), *rows("no_tau_augmentation", 0, 0, 0.4),
            *rows("no_tau_augmentation", 16, 4, 0.4)]
    g2 = lt.goals(lt.LatencyStudyConfig(bootstrap_draws=500), worse, eps2)
    assert g2["best"] == "paper" and not g2["G1_best_within_5_points"]
    assert g2["default"] == "no_tau_augmentation"
    assert "`no_tau_augmentation` becomes the default" in "\n".join(lt.goal_lines(g2))
    assert lt.goals(lt.LatencyStudyConfig(goal_cell=[32, 4]), cells, eps) == {}  # not in the grid: no goal
    # near the floor G1 decides nothing: paper at 6% keeps "within 5 points" trivially
    low = {**cells, **cell("paper", 0, 0, 0.06, 0.01), **cell("paper", 16, 4, 0.06, 0.01),
           **cell("naive", 0, 0, 0.05, 0.05), **cell("naive", 16, 4, 0.04, 0.05),
           **cell("no_tau_augmentation", 0, 0, 0.05, 0.01), **cell("no_tau_augmentation", 16, 4, 0.05, 0.01)}
    floor = [*rows("paper", 0, 0, 0.06), *rows("paper", 16, 4, 0.06), *rows("naive", 0, 0, 0.05),
             *rows("naive", 16, 4, 0.04), *rows("no_tau_augmentation", 0, 0, 0.05),
             *rows("no_tau_augmentation", 16, 4, 0.05)]
    g = lt.goals(lt.LatencyStudyConfig(bootstrap_draws=500), low, floor)
    assert g["best"] == "paper" and g["G1_best_within_5_points"] is None and not g["G1_informative"]["informative"]
    assert not g["G2_naive_loses_15_points"] and g["default"] is None
    text = "\n".join(lt.goal_lines(g))
    assert "G1, the best runtime (paper) within 5 points of itself at no latency: uninformative, not decided " \
           "(it succeeds 6.0% at no latency, below the registered floor of 30%" in text
    assert "no arm meets G1: the defaults stay" in text


def test_tau_claim_at_the_longest_latency_and_the_success_plot(tmp_path):
    """The paper's latency-aware training claim is registered at the goal cell and at (32, 4); the report's plot
    shows the first training seed's grid (the goal seeds run two cells only) and the generalist alone."""
    from robodual_cli.commands.study import latency as lt

    def rows(arm, lg, d, rate, seeds=(0, 1, 2)):
        return [{"policy": f"{arm}@{lg},{d}", "seed": s, "task": "push-v3", "placement": p, "success": p < rate * 20,
                 "steps": 5, "arm": arm, "generalist_latency": lg, "specialist_latency": d}
                for s in seeds for p in range(20)]

    eps = [*rows("paper", 0, 0, 0.6), *rows("paper", 16, 4, 0.5), *rows("no_tau_augmentation", 0, 0, 0.6),
           *rows("no_tau_augmentation", 16, 4, 0.5), *rows("paper", 32, 4, 0.5, (0,)),
           *rows("no_tau_augmentation", 32, 4, 0.2, (0,)), *rows("generalist", 16, 0, 0.3, (-1,)),
           *rows("generalist", 0, 0, 0.9, (-1,))]
    cells = {f"{a} L_g={lg} d={d}": {"success_rate": 0.5, "ci95": [0.4, 0.6], "motion": {"switch_jump": 0.01}}
             for a, lg, d in (("paper", 0, 0), ("paper", 16, 4), ("no_tau_augmentation", 0, 0),
                              ("no_tau_augmentation", 16, 4), ("paper", 32, 4), ("no_tau_augmentation", 32, 4))}
    g = lt.goals(lt.LatencyStudyConfig(bootstrap_draws=300), cells, eps)
    assert g["tau_augmentation"]["difference"] == pytest.approx(0.0)
    late = g["tau_augmentation_longest"]
    assert late["cell"] == [32, 4] and late["difference"] == pytest.approx(0.3)
    assert "The same at L_g = 32, d = 4 (one training seed" in "\n".join(lt.goal_lines(g))
    no_late = {k: v for k, v in cells.items() if "32" not in k}
    assert "tau_augmentation_longest" not in lt.goals(lt.LatencyStudyConfig(bootstrap_draws=300), no_late, eps)

    png = tmp_path / "success.png"
    assert lt.plot(lt.LatencyStudyConfig(), eps, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not lt.plot(lt.LatencyStudyConfig(train_seeds=[5]), [r for r in eps if r["seed"] != -1], tmp_path / "n.png")
    assert not (tmp_path / "n.png").exists()
