"""``--latency`` on eval metaworld, eval calvin and bench runtime: parsed in one line, applied in control steps."""

from __future__ import annotations

import json

import pytest


@pytest.mark.hostile
@pytest.mark.parametrize("args", [
    ["eval", "metaworld", "--policy", "expert", "--latency", "generalist=fast"],
    ["eval", "metaworld", "--policy", "expert", "--latency", "generalist=4"],  # a scripted policy has no models
    ["eval", "calvin", "--policy", "nowhere", "--simulator", "standin", "--latency", "specialist=-2"],
    ["eval", "calvin", "--policy", "nowhere", "--simulator", "standin", "--mode", "async", "--latency",
     "generalist=4"],
    ["bench", "runtime", "--synthetic", "tiny", "--latency", "16,2"],
    ["eval", "metaworld", "--policy", "expert", "--execute", "2"],  # a scripted policy plans no chunks
    ["eval", "metaworld", "--policy", "expert", "--execute", "0"],
    ["eval", "metaworld", "--remote", "ws://127.0.0.1:9", "--execute", "2"],
])
def test_bad_latency_or_execute_is_one_line_naming_the_flag(args, run, tmp_path):
    flag = "--execute" if "--execute" in args else "--latency"
    code, captured = run(*args, "--out", tmp_path / "out")
    assert code != 0
    assert flag in captured.err and "Traceback" not in captured.err
    assert len([line for line in captured.err.splitlines() if line.strip()]) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_bench_runtime_reports_sync_rate_with_step_latency(run, tmp_path):
    out = tmp_path / "rt.json"
    code, captured = run("bench", "runtime", "--synthetic", "tiny", "--steps", "12", "--device", "cpu",
                         "--latency", "generalist=8,specialist=2", "--out", out)
    assert code == 0, captured.err
    row = json.loads(out.read_text())["results"]["latency"]
    assert row["generalist_steps"] == 8 and row["specialist_steps"] == 2
    # without latency the specialist runs every step (12 + warm-up); with d = 2 every second step
    assert row["calls_with_latency"]["specialist_calls"] < row["calls_without_latency"]["specialist_calls"]
    assert row["sync_with_latency_hz"] > 0


def test_study_configs_carry_latency_and_old_studies_resume(tmp_path):
    from robodual_cli.commands.study import data_efficiency as de
    from robodual_cli.commands.study.common import StudyFolder, latency_flags
    from robodual_core.config import from_dict, to_dict

    cfg = de.DataEfficiencyConfig()
    assert latency_flags(cfg) == []  # default zero: evaluations as before the key existed
    old = {k: v for k, v in to_dict(cfg).items() if k != "latency"}
    StudyFolder(tmp_path / "s", "data-efficiency", old)
    again = StudyFolder(tmp_path / "s", "data-efficiency", to_dict(cfg), defaults=to_dict(de.DataEfficiencyConfig()))
    assert again.meta["added_keys"] == {"latency": {"generalist": 0, "specialist": 0}}
    late = from_dict(de.DataEfficiencyConfig, {"latency": {"generalist": 16, "specialist": 2}})
    assert latency_flags(late) == ["--latency", "generalist=16,specialist=2"]
    with pytest.raises(Exception, match="latency.specialist"):
        from_dict(de.DataEfficiencyConfig, {"latency": {"specialist": -1}})

