"""`robodual demo --quick` end to end, shrunk further: every stage runs, the report has real numbers."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_runs_every_stage_and_resumes(tmp_path):
    out = tmp_path / "demo"
    args = [sys.executable, "-m", "robodual_cli.app", "demo", "--quick", "--out", str(out),
            "--set", "tasks=button-press-topdown-v3", "--set", "episodes_per_task=3", "--set", "generalist_steps=20",
            "--set", "specialist_steps=20", "--set", "batch_size=8", "--set", "eval_episodes=1",
            "--set", "max_steps=20", "--set", "workers=1"]
    env = {**os.environ, "MUJOCO_GL": "egl"}
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert set(summary["success_rate"]) == {"dual system", "specialist only", "generalist only"}
    for label in summary["success_rate"]:
        assert 0.0 <= summary["success_rate"][label] <= 1.0
    for name in ("success.png", "training_curves.png", "README.md"):
        assert (out / "report" / name).is_file()
    assert len(list((out / "report" / "videos").iterdir())) == 3
    results = json.loads((out / "eval" / "dual" / "results.json").read_text())
    assert results["episodes"][0]["length"] > 0 and results["kind"] == "dual"
    # the dual-system specialist records the generalist it was trained with
    gen = json.loads(next((out / "specialist" / "checkpoints").glob("*/generalist.json")).read_text())
    assert gen["hash"]
    # the default conditioning (issue 30's rule): the generalist's actions, its latents masked; the report says so
    assert json.loads((out / "specialist" / "config.json").read_text())["model"]["generalist_inputs"] == "actions"
    assert "latents masked" in (out / "report" / "README.md").read_text()
    again = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("done already") >= 6


SHIPPED = Path(__file__).resolve().parents[2] / "docs" / "results" / "pretrain" / "report" / "generalist-step15000"


def test_demo_fine_tunes_a_pretrained_generalist_and_sets_the_dual_conditioning(tmp_path, monkeypatch):
    """With ``generalist`` the demo fine-tunes it (``train generalist --init``) instead of training from scratch,
    and ``dual_set`` reaches the dual system's specialist only; the stages' commands, not their work."""
    from robodual_cli.commands import demo

    calls = []

    def fake_stage(name, done, cmd, log_dir, timings, threads=1):
        calls.append((name, cmd[3:]))
        if name.startswith("eval"):
            out = Path(cmd[cmd.index("--out") + 1])
            out.mkdir(parents=True, exist_ok=True)
            (out / "results.json").write_text(json.dumps({"success_rate": 0.5}))

    monkeypatch.setattr(demo, "_run_stage", fake_stage)
    cfg = demo.check(demo.DemoConfig(generalist=str(SHIPPED), generalist_steps=7,
                                     dual_set=["model.guidance.target=generalist"]))
    demo.run_demo(cfg, tmp_path / "demo", quick=False)
    stages = dict(calls)
    gen = stages["fine-tune generalist"]
    assert gen[gen.index("--init") + 1] == str(SHIPPED) and "--base" not in gen and gen[gen.index("--steps") + 1] == "7"
    dual, alone = stages["train specialist"], stages["train specialist-only"]
    assert dual[dual.index("--set") + 1] == "model.guidance.target=generalist"
    assert "model.guidance.target=generalist" not in alone
    calls.clear()  # the default demo: from scratch, the library's default conditioning
    demo.run_demo(demo.DemoConfig(), tmp_path / "default", quick=False)
    default = dict(calls)
    assert "--base" in default["train generalist"] and "--init" not in default["train generalist"]
    assert "--set" not in default["train specialist"][default["train specialist"].index("--config"):]


def test_the_report_names_the_dual_specialists_conditioning_from_its_resolved_config(tmp_path):
    from robodual_cli.commands.report import _conditioning_note

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model": {"generalist_inputs": "both"}}))
    note = _conditioning_note(config, ["model.guidance.target=generalist"])
    assert "the paper's" in note and "model.guidance.target=generalist" in note
    config.write_text(json.dumps({"model": {"generalist_inputs": "actions"}}))
    assert "latents masked" in _conditioning_note(config, [])
    for damaged in ("{not json", '{"model": {"generalist_inputs": ["both"]}}'):  # never takes the report down
        config.write_text(damaged)
        assert "unknown" in _conditioning_note(config, [])


def test_the_shipped_pretrained_generalist_loads_and_acts():
    """The CPU-pretrained generalist the repository ships (safetensors, issue 30) loads as a policy."""
    import numpy as np

    from robodual_core.runtime import load_policy

    policy = load_policy(SHIPPED)
    policy.reset()
    spec = policy.runners[0]
    size = spec.image_size if hasattr(spec, "image_size") else 64
    obs = {"rgb_static": np.zeros((size, size, 3), np.uint8), "rgb_gripper": np.zeros((size, size, 3), np.uint8),
           "proprio": np.zeros(4, np.float32)}
    action = policy.step(obs, "push the puck to the goal")
    assert action.shape == (4,) and np.isfinite(action).all()


@pytest.mark.hostile
@pytest.mark.parametrize("sets, needle", [(["generalist=/no/such/run"], "generalist"),
                                          (["dual_set=[nonsense]"], "dual_set")])
def test_bad_demo_generalist_or_dual_set_refused_before_anything_is_written(tmp_path, sets, needle):
    out = tmp_path / "demo"
    args = [sys.executable, "-m", "robodual_cli.app", "demo", "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and needle in proc.stderr and "Traceback" not in proc.stderr
    assert not (out / "data").exists()
