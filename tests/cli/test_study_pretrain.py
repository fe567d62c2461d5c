"""`robodual study pretrain`: the quick study end to end from the CLI (corpus with random lighting, generalist,
checkpoints evaluated alone, per-episode rows), resume redoes nothing, and what other studies take from it."""

import json
import os
import subprocess
import sys

import pytest

from robodual_cli.commands.study.common import episode_rows
from robodual_core.errors import RobodualError

ROBODUAL = [sys.executable, "-m", "robodual_cli.app"]


def run(args, timeout=900):
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    return subprocess.run(ROBODUAL + list(args), capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.slow
def test_quick_pretrain_end_to_end_and_resume(tmp_path):
    from robodual_cli.commands.study.pretrain import pretrained_checkpoint

    out = tmp_path / "pt"
    first = run(["study", "pretrain", "--quick", "--out", str(out)])
    assert first.returncode == 0, first.stderr[-2000:]
    report = out / "report"
    summary = json.loads((report / "summary.json").read_text())
    assert [p["step"] for p in summary["points"]] == [10, 20]
    assert summary["placements"]["shared"] == []
    rows = [json.loads(line) for line in (report / "episodes.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 2  # two checkpoints x two tasks x one episode
    assert {r["policy"] for r in rows} == {"generalist step 10", "generalist step 20"}
    assert {"seed", "task", "placement", "success", "steps"} <= set(rows[0])
    assert (report / "success.png").stat().st_size > 1000
    attrs = json.loads((out / "data" / "broad.zarr" / "zarr.json").read_text())["attributes"]
    assert attrs["generator"]["visual"] == "random"
    assert pretrained_checkpoint(out) == out / "runs" / "generalist" / "checkpoints" / "20"
    assert pretrained_checkpoint(out, 10).name == "10"
    again = run(["study", "pretrain", "--quick", "--out", str(out)])
    assert again.returncode == 0 and "(0 stages run now" in again.stdout + again.stderr


def test_episode_rows_name_every_episode(tmp_path):
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"episodes": [
        {"task": "push-v3", "seed": 11, "success": True, "length": 40},
        {"task": "push-v3", "seed": 12, "success": False, "length": 150}]}))
    rows = episode_rows(results, policy="dual", seed=2, scale=5)
    assert rows == [{"policy": "dual", "seed": 2, "task": "push-v3", "placement": 11, "success": True, "steps": 40,
                     "scale": 5},
                    {"policy": "dual", "seed": 2, "task": "push-v3", "placement": 12, "success": False, "steps": 150,
                     "scale": 5}]


@pytest.mark.hostile
@pytest.mark.parametrize("args, needle", [
    (["--set", "eval_at=[999999]"], "eval_at"),
    (["--set", "visual=dark"], "visual"),
    (["--tasks", "no-such-task"], "no-such-task"),
])
def test_bad_pretrain_configs_are_refused(tmp_path, args, needle):
    res = run(["study", "pretrain", "--quick", "--out", str(tmp_path / "pt"), *args])
    assert res.returncode != 0 and needle in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "pt" / "data").exists()


def test_pretrained_checkpoint_refuses_other_folders(tmp_path):
    from robodual_cli.commands.study.pretrain import pretrained_checkpoint

    other = tmp_path / "de"
    other.mkdir()
    (other / "study.json").write_text(json.dumps({"study": "data-efficiency", "config": {}}))
    with pytest.raises(RobodualError, match="data-efficiency"):
        pretrained_checkpoint(other)
    with pytest.raises(RobodualError, match="study pretrain"):
        pretrained_checkpoint(tmp_path / "missing")
