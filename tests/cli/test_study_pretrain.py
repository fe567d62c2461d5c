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


@pytest.fixture(scope="module")
def quick_pretrain(tmp_path_factory):
    """One quick pretrain study for this module: its own test checks it, the data-efficiency test reads it."""
    out = tmp_path_factory.mktemp("pretrain") / "pt"
    first = run(["study", "pretrain", "--quick", "--out", str(out)])
    assert first.returncode == 0, first.stderr[-2000:]
    return out


@pytest.mark.slow
def test_quick_pretrain_end_to_end_and_resume(quick_pretrain):
    from robodual_cli.commands.study.pretrain import pretrained_checkpoint

    out = quick_pretrain
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


# -- the data-efficiency study with issue 30's arms, on a pretrained generalist ------------------------------------
@pytest.mark.slow
def test_quick_study_with_pretrained_generalist_controls_and_comparisons(tmp_path, quick_pretrain):
    pt = quick_pretrain  # read only here
    out = tmp_path / "de"
    res = run(["study", "data-efficiency", "--quick", "--out", str(out), "--set", f"generalist={pt}",
               "--set", "arms=[dual,specialist_same,union_specialist,diffusion_policy_2f]",
               "--set", "dual_set=[model.conditioning.latent_dropout=0.5,model.guidance.target=generalist]",
               "--set", "generalization=true", "--set", "latency_split=generalist=4,specialist=1",
               "--set", "finetune_generalist=false", "--set", "demo_scales=[1]",
               "--set", "comparisons=[dual - specialist_same,dual - generalist]", "--set", "bootstrap_draws=200"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert not (out / "runs" / "generalist").exists()  # the pretrained one is used, not trained again
    dual_cfg = json.loads((out / "runs" / "n1" / "dual" / "seed0" / "config.json").read_text())
    assert dual_cfg["model"]["conditioning"]["latent_dropout"] == 0.5
    assert dual_cfg["model"]["guidance"]["target"] == "generalist"
    # the studies pin the paper's conditioning sources: their arms mean what the pre-registration says whatever
    # the library default is (issue 30 changed it to "actions")
    assert dual_cfg["model"]["generalist_inputs"] == "both"
    dp = json.loads((out / "runs" / "n1" / "diffusion_policy_2f" / "seed0" / "config.json").read_text())
    assert dp["model"]["k_s"] == 16 and dp["model"]["generalist_dim"] == 0
    same = json.loads((out / "runs" / "n1" / "specialist_same" / "seed0" / "config.json").read_text())
    assert [s["name"] for s in same["model"]["sensors"]] == [s["name"] for s in dual_cfg["model"]["sensors"]]
    union = json.loads((out / "data" / "union_1.zarr" / "zarr.json").read_text())
    target = json.loads((out / "data" / "target_1.zarr" / "zarr.json").read_text())
    assert union["attributes"]["stats"] != target["attributes"]["stats"]  # the broad corpus is in it
    rows = [json.loads(line) for line in (out / "report" / "episodes.jsonl").read_text().splitlines()]
    assert {r["split"] for r in rows} == {"seen", "generalization", "latency"}
    late = json.loads((out / "eval" / "n1" / "dual" / "seed0" / "latency" / "results.json").read_text())
    assert late["latency"] == {"generalist": 4, "specialist": 1}
    assert {r["policy"] for r in rows} == {"dual", "specialist_same", "union_specialist", "diffusion_policy_2f",
                                           "generalist"}
    gen = json.loads((out / "eval" / "n1" / "dual" / "seed0" / "generalization" / "results.json").read_text())
    assert gen["settings"]["visual"] == "shift" and gen["settings"]["placement_scale"] == 1.3
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert [(c["a"], c["b"], c["where"]["split"]) for c in summary["comparisons"]] == [
        (a, b, split) for a, b in (("dual", "specialist_same"), ("dual", "generalist"))
        for split in ("seen", "generalization", "latency")]
    readme = (out / "report" / "README.md").read_text()
    assert "Pre-registered comparisons (seed-paired)" in readme and "episodes.jsonl" in readme
    assert "The pre-registered decision rule, applied" in readme and summary["decision"]["candidates"]["dual"]
    # the latency study on this base: the pretrained generalist, the chosen dual arm's conditioning, a new seed
    lat = tmp_path / "lat"
    res = run(["study", "latency", "--quick", "--from", str(out), "--out", str(lat), "--set",
               "arms=[paper,no_tau_augmentation,generalist]", "--set", "base_arm=dual", "--set", "eval_seed=77"])
    assert res.returncode == 0, res.stderr[-3000:]
    trained = json.loads((lat / "runs" / "no_tau_augmentation" / "seed0" / "config.json").read_text())
    assert trained["model"]["conditioning"]["latent_dropout"] == 0.5  # the dual arm's dual_set
    assert trained["data"]["augment_tau"] is False and trained["model"]["generalist_inputs"] == "both"
    gen = json.loads((lat / "eval" / "generalist" / "g8_s0" / "all" / "results.json").read_text())
    assert gen["settings"]["seed"] == 77


@pytest.mark.hostile
@pytest.mark.parametrize("sets, needle", [
    (["arms=[dual,nonsense]"], "arms"),
    (["arms=[]"], "arms"),
    (["arms=[union_specialist]"], "union_specialist"),
    (["comparisons=[dual - specialist_same]"], "specialist_same"),
    (["comparisons=[dual-specialist_only]"], "comparisons"),
    (["dual_set=[nonsense]"], "dual_set"),
    (["generalization_visual=dark"], "generalization_visual"),
    (["generalist=/no/such/folder"], "generalist"),
    (["latency_split=generalist=0"], "latency_split"),
    (["latency_split=soon"], "latency_split"),
])
def test_bad_study_arms_are_refused_before_anything_runs(tmp_path, sets, needle):
    args = ["study", "data-efficiency", "--quick", "--out", str(tmp_path / "de")]
    for s in sets:
        args += ["--set", s]
    res = run(args)
    assert res.returncode != 0 and needle in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "de" / "data").exists()
