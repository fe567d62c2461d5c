"""`robodual demo --quick` end to end, shrunk further: every stage runs, the report has real numbers."""

import json
import os
import subprocess
import sys

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
    again = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("done already") >= 6
