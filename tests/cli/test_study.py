"""`robodual study`: both --quick studies end to end from the CLI (report files, resume redoes nothing),
the Wilson interval against known values, and bad flags / damaged or foreign study folders."""

import json
import math
import os
import subprocess
import sys

import pytest

from robodual_cli.commands.study.common import StudyFolder, training_seconds, wilson_interval
from robodual_core.errors import RobodualError

ROBODUAL = [sys.executable, "-m", "robodual_cli.app"]


def run(args, timeout=900):
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    return subprocess.run(ROBODUAL + list(args), capture_output=True, text=True, env=env, timeout=timeout)


# -- Wilson interval ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("k", "n", "lo", "hi"), [
    # Newcombe (1998), Statistics in Medicine 17:857, table I, method 3 (4 decimals there; these 6 from
    # scipy.stats.binomtest(k, n).proportion_ci(method="wilson"), which agree with them)
    (81, 263, 0.255289, 0.366210),
    (15, 148, 0.062386, 0.160487),
    (1, 29, 0.006113, 0.171755),
    (5, 10, 0.236593, 0.763407),
    (0, 10, 0.0, 0.277533),
    (10, 10, 0.722467, 1.0),
])
def test_wilson_interval_known_values(k, n, lo, hi):
    got = wilson_interval(k, n)
    assert got[0] == pytest.approx(lo, abs=2e-6) and got[1] == pytest.approx(hi, abs=2e-6)


def test_wilson_interval_edges():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(50, 100)
    assert math.isclose(lo + hi, 1.0) and lo < 0.5 < hi
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_training_seconds_shares_an_interval(tmp_path):
    lines = [{"step": 10, "loss": 1.0, "samples_per_s": 80.0}, {"step": 20, "loss": 1.0, "samples_per_s": 40.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert training_seconds(tmp_path, batch_size=8) == pytest.approx(1.0 + 2.0)
    assert training_seconds(tmp_path, batch_size=8, up_to_step=5) == pytest.approx(0.5)
    assert training_seconds(tmp_path, batch_size=8, up_to_step=15) == pytest.approx(1.0 + 1.0)


# -- the study folder -------------------------------------------------------------------------------------
def test_study_folder_records_stages_and_skips_them(tmp_path):
    folder = StudyFolder(tmp_path / "s", "data-efficiency", {"a": 1})
    cmd = [sys.executable, "-c", "print('{\"x\": 3}')"]
    first = folder.run("stage one", cmd, json_stdout=True)
    assert first["output"] == {"x": 3} and folder.ran == ["stage one"]
    again = StudyFolder(tmp_path / "s", "data-efficiency", {"a": 1})
    assert again.run("stage one", [sys.executable, "-c", "raise SystemExit(3)"]) == first
    assert again.ran == []
    with pytest.raises(RobodualError, match="failed .exit 3."):
        again.run("stage two", [sys.executable, "-c", "raise SystemExit(3)"])
    assert not again.done("stage two")


def test_key_added_later_at_its_default_keeps_a_study_resumable(tmp_path):
    StudyFolder(tmp_path / "s", "x", {"a": 1})
    again = StudyFolder(tmp_path / "s", "x", {"a": 1, "b": True}, defaults={"a": 0, "b": True})
    assert again.meta["added_keys"] == {"b": True}
    assert json.loads((tmp_path / "s" / "study.json").read_text())["config"] == {"a": 1, "b": True}
    with pytest.raises(RobodualError, match="differs in c"):  # a new key at another value is a change
        StudyFolder(tmp_path / "s", "x", {"a": 1, "b": True, "c": 5}, defaults={"c": 4})


def test_a_commit_is_named_only_when_it_runs_a_stage(tmp_path, monkeypatch):
    from robodual_cli.commands.study import common

    monkeypatch.setattr(common, "git_commit", lambda: "aaa")
    StudyFolder(tmp_path / "s", "x", {"a": 1}).compute("one", lambda: 1)
    monkeypatch.setattr(common, "git_commit", lambda: "bbb")
    again = StudyFolder(tmp_path / "s", "x", {"a": 1})
    assert again.compute("one", lambda: 2) == 1  # done already: only the report would be rewritten
    assert "resumed" not in json.loads((tmp_path / "s" / "study.json").read_text())
    again.compute("two", lambda: 2)
    meta = json.loads((tmp_path / "s" / "study.json").read_text())
    assert meta["git_commit"] == "aaa" and [r["git_commit"] for r in meta["resumed"]] == ["bbb"]
    # a commit made while an invocation runs reaches its later stages (subprocesses import the code on disk)
    monkeypatch.setattr(common, "git_commit", lambda: "ccc")
    again.compute("three", lambda: 3)
    again.compute("four", lambda: 4)
    meta = json.loads((tmp_path / "s" / "study.json").read_text())
    assert [(r["git_commit"], r.get("during", False)) for r in meta["resumed"]] == [("bbb", False), ("ccc", True)]


def test_the_cpu_is_recorded_and_a_stage_run_on_another_is_named(tmp_path, monkeypatch):
    # floating-point results differ between CPU models (issue 29's rerun): a study says which ran its stages
    from robodual_cli.commands.study import common

    monkeypatch.setattr(common, "git_commit", lambda: "aaa")
    monkeypatch.setattr(common, "cpu_model", lambda: "CPU one")
    StudyFolder(tmp_path / "s", "x", {"a": 1}).compute("one", lambda: 1)
    again = StudyFolder(tmp_path / "s", "x", {"a": 1})
    again.compute("two", lambda: 2)  # same commit, same CPU: nothing to name
    meta = json.loads((tmp_path / "s" / "study.json").read_text())
    assert meta["cpu"] == "CPU one" and "resumed" not in meta
    monkeypatch.setattr(common, "cpu_model", lambda: "CPU two")
    StudyFolder(tmp_path / "s", "x", {"a": 1}).compute("three", lambda: 3)
    meta = json.loads((tmp_path / "s" / "study.json").read_text())
    assert [(r["git_commit"], r["cpu"]) for r in meta["resumed"]] == [("aaa", "CPU two")]


def test_cpu_model_names_the_processor():
    from robodual_core.bench import cpu_model

    name = cpu_model()
    assert isinstance(name, str) and name.strip() == name and name


def test_training_run_interrupted_before_its_first_checkpoint_starts_again(tmp_path):
    folder = StudyFolder(tmp_path / "s", "data-efficiency", {"a": 1})
    run_dir = tmp_path / "s" / "runs" / "x"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text("{}")
    (run_dir / "metrics.jsonl").write_text('{"step": 10, "samples_per_s": 1.0}\n')  # lost steps: must not count
    check = f"import os, sys; assert '--resume' not in sys.argv and not os.path.exists({str(run_dir)!r})"
    folder.run("train x", [sys.executable, "-c", check, "--resume"], run_dir=run_dir)
    assert folder.done("train x")
    (run_dir / "checkpoints" / "500").mkdir(parents=True)  # a run with a checkpoint is resumed, not deleted
    keep = f"import os, sys; assert '--resume' in sys.argv and os.path.exists({str(run_dir)!r})"
    folder.run("train y", [sys.executable, "-c", keep, "--resume"], run_dir=run_dir)


# -- the quick studies end to end ------------------------------------------------------------------------
def _check_report(out, plot):
    report = out / "report"
    for name in ("README.md", "summary.json", "table.md", "git_commit.txt", plot, "configs/study.json"):
        assert (report / name).is_file(), name
    assert (report / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((report / "summary.json").read_text())
    assert summary["quick"] is True and summary["git_commit"]
    assert summary["placements"]["shared"] == [] and summary["placements"]["eval_placements"] > 0
    # a --quick run's stages are far too small to extrapolate the full study from (issue 30: it said 80 h for a
    # study measured at 1.76 h): the report says so instead of printing a number
    est = summary["estimate_full"]
    assert est["seconds"] is None and {"train_specialist", "eval"} <= set(est["too_small"])
    assert "No estimate for the full default study" in (report / "README.md").read_text()
    return summary


def _check_episodes(out, expected):
    """episodes.jsonl beside the report: one row per evaluated episode, each naming its policy and seed."""
    rows = [json.loads(line) for line in (out / "report" / "episodes.jsonl").read_text().splitlines()]
    assert len(rows) == expected > 0
    for row in rows:
        assert {"policy", "seed", "task", "placement", "success", "steps"} <= set(row)
    return rows


def _check_resume(args, out):
    progress = (out / "progress.json").read_text()
    again = run(args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 stages run now" in again.stdout, again.stdout
    assert "▶" not in again.stderr  # no stage started
    assert (out / "progress.json").read_text() == progress


@pytest.mark.slow
def test_data_efficiency_quick_runs_and_resumes(tmp_path, quick_data_efficiency):
    out = quick_data_efficiency
    args = ["study", "data-efficiency", "--quick", "--out", str(out)]
    summary = _check_report(out, "success_vs_demos.png")
    assert list(summary["rows"]) == ["1", "all (2)"]
    for row in summary["rows"].values():
        assert len(row) == 5  # dual, specialist only, Diffusion-Policy-style, generalist only (broad, fine-tuned)
        for res in row.values():
            assert res["ci95"] == pytest.approx(list(wilson_interval(res["successes"], res["episodes"])))
            assert res["episodes"] == 1
    assert summary["targets_in_broad"] == ["button-press-topdown-v3"]
    table = (out / "report" / "table.md").read_text()
    assert "dual system" in table and "Diffusion-Policy-style" in table
    _check_resume(args, out)

    # the ablations reuse this study (read only) at its smallest scale
    base_files = {p: p.read_bytes() for p in (out / "study.json", out / "progress.json")}
    abl = tmp_path / "ablations"
    args = ["study", "ablations", "--quick", "--from", str(out), "--out", str(abl)]
    proc = run(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p: p.read_bytes() for p in base_files} == base_files
    report = abl / "report"
    assert (report / "ablations.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((report / "summary.json").read_text())
    assert summary["scale"] == 1 and summary["placements"] == 1 * 1  # 1 task x 1 episode, the base's placements
    names = list(summary["rows"])
    assert len(names) == 8 and names[4:] == ["dual/film", "dual/budget_x3", "generalist_finetuned", "dual_finetuned_generalist"]
    for res in summary["rows"].values():
        assert res["episodes"] == 1 and all(t > 0 for t in res["train_seconds"])
    assert summary["rows"]["dual system [base study]"]["successes"] == \
        json.loads((out / "report" / "summary.json").read_text())["rows"]["1"]["dual system"]["successes"]
    film = json.loads((abl / "runs" / "dual__film" / "seed0" / "config.json").read_text())
    assert film["model"]["conditioner"] == "film"
    x3 = json.loads((abl / "runs" / "dual__budget_x3" / "seed0" / "config.json").read_text())
    assert x3["trainer"]["steps"] == 30  # three times the base study's 10 steps
    ft = json.loads((abl / "runs" / "generalist_finetuned" / "config.json").read_text())
    assert ft["init"]["checkpoint"].startswith(str(out / "runs" / "generalist"))
    rows = _check_episodes(abl, sum(res["episodes"] for res in summary["rows"].values()))
    assert {r["study"] for r in rows} == {"ablations", "base"} and {r["scale"] for r in rows} == {1}
    assert {r["policy"] for r in rows if r["study"] == "ablations"} == set(names[4:])
    _check_resume(args, abl)


@pytest.mark.slow
def test_training_efficiency_quick_runs_and_resumes(tmp_path):
    out = tmp_path / "te"
    args = ["study", "training-efficiency", "--quick", "--out", str(out)]
    proc = run(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = _check_report(out, "success_vs_compute.png")
    assert [p["step"] for p in summary["generalist"]] == [5, 10]
    assert [p["step"] for p in summary["dual"]] == [10] and len(summary["specialist_only"]) == 1
    gen_at_10 = summary["generalist"][1]["seconds"]
    assert 0 < summary["generalist"][0]["seconds"] < gen_at_10 < summary["dual"][0]["seconds"]
    points = summary["generalist"] + summary["dual"] + summary["specialist_only"]
    rows = _check_episodes(out, sum(p["episodes"] for p in points))
    assert sorted((r["policy"], r["generalist_step"]) for r in rows) == \
        [("dual", 10), ("generalist", 5), ("generalist", 10), ("specialist_only", None)]
    _check_resume(args, out)


# -- hostile ------------------------------------------------------------------------------------------------
def _fails(proc, *needles):
    assert proc.returncode != 0
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error:") and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in line, line


@pytest.mark.hostile
def test_negative_episodes_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "s"
    _fails(run(["study", "data-efficiency", "--quick", "--episodes", "-5", "--out", str(out)]), "--episodes", "-5")
    assert not out.exists()


@pytest.mark.hostile
def test_negative_seed_refused(tmp_path):
    out = tmp_path / "s"
    _fails(run(["study", "training-efficiency", "--quick", "--seeds", "0,-3", "--out", str(out)]), "--seeds", "-3")
    _fails(run(["study", "data-efficiency", "--quick", "--set", "eval_seed=-1", "--out", str(out)]), "eval_seed")
    _fails(run(["study", "data-efficiency", "--quick", "--seeds", "0,x", "--out", str(out)]), "--seeds")
    assert not out.exists()


@pytest.mark.hostile
def test_unknown_task_refused(tmp_path):
    out = tmp_path / "s"
    _fails(run(["study", "data-efficiency", "--quick", "--tasks", "fly-to-the-moon", "--out", str(out)]),
           "fly-to-the-moon", "--tasks")
    _fails(run(["study", "training-efficiency", "--quick", "--set", "specialist_at=[7]", "--out", str(out)]),
           "specialist_at")
    assert not out.exists()


@pytest.mark.hostile
def test_folder_of_another_study_refused(tmp_path):
    out = tmp_path / "s"
    StudyFolder(out, "training-efficiency", {"x": 1})
    _fails(run(["study", "data-efficiency", "--quick", "--out", str(out)]), "training-efficiency", "another --out")
    assert json.loads((out / "study.json").read_text())["study"] == "training-efficiency"


@pytest.mark.hostile
@pytest.mark.parametrize("content", ["{\"stages\": {\"generate broad corpus\": {\"seco", "[1, 2]",
                                     "{\"stages\": {\"x\": 3}}", "\udcff"])
def test_corrupt_progress_file_refused(tmp_path, content):
    out = tmp_path / "s"
    StudyFolder(out, "data-efficiency", {"x": 1})
    (out / "progress.json").write_bytes(content.encode("utf-8", "surrogateescape"))
    _fails(run(["study", "data-efficiency", "--quick", "--out", str(out)]), "progress file", "progress.json")
    with pytest.raises(RobodualError, match="progress file"):
        StudyFolder(out, "data-efficiency", {"x": 1})


@pytest.mark.hostile
def test_changed_config_and_foreign_or_damaged_folders_refused(tmp_path):
    out = tmp_path / "s"
    StudyFolder(out, "data-efficiency", {"eval_seed": 1000})
    with pytest.raises(RobodualError, match="eval_seed"):  # the evaluation seed cannot change once a study started
        StudyFolder(out, "data-efficiency", {"eval_seed": 1001})
    (out / "study.json").write_text("{\"study\": \"data-eff")
    _fails(run(["study", "data-efficiency", "--quick", "--out", str(out)]), "study file")
    other = tmp_path / "mine"
    other.mkdir()
    (other / "thesis.tex").write_text("keep me")
    _fails(run(["study", "data-efficiency", "--quick", "--out", str(other)]), "not empty")
    _fails(run(["study", "data-efficiency", "--quick", "--overwrite", "--out", str(other)]), "not a study folder")
    assert (other / "thesis.tex").read_text() == "keep me"


@pytest.mark.hostile
def test_ablations_refuse_an_unfinished_or_foreign_base(tmp_path):
    te = tmp_path / "te"
    te.mkdir()
    (te / "study.json").write_text(json.dumps({"study": "training-efficiency", "config": {}}))
    _fails(run(["study", "ablations", "--from", str(te), "--out", str(tmp_path / "a")]), "training-efficiency",
           "data-efficiency")
    _fails(run(["study", "ablations", "--from", str(tmp_path / "none"), "--out", str(tmp_path / "a")]),
           "no study.json")
    de = tmp_path / "de"
    de.mkdir()
    (de / "study.json").write_text(json.dumps({"study": "data-efficiency", "config": {}}))
    _fails(run(["study", "ablations", "--from", str(de), "--out", str(tmp_path / "a")]), "not finished")
    (de / "progress.json").write_text(json.dumps({"stages": {"check placements": {"seconds": 1}}}))
    _fails(run(["study", "ablations", "--from", str(de), "--out", str(tmp_path / "a"), "--scale", "7"]),
           "--scale 7", "[5, 10, 25]")
    _fails(run(["study", "ablations", "--from", str(de), "--out", str(tmp_path / "a"),
                "--set", 'variants={"film": ["model.conditioner=film"]}']), "dual/film", "'film'")
    _fails(run(["study", "ablations", "--from", str(de), "--out", str(tmp_path / "a"),
                "--set", 'variants={"dual/x": ["trainer.steps=xfast"]}']), "trainer.steps=xK")
    assert not (tmp_path / "a").exists()
