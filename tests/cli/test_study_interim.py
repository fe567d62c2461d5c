"""``robodual study data-efficiency --interim``: the finished evaluations of a running study, nothing run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

KEYS = {"target_tasks": ["push-v3"], "demo_scales": [1, 2], "train_seeds": [0, 1], "eval_seed": 5,
        "eval_episodes": 3, "arms": ["dual", "specialist_same"], "finetune_generalist": False,
        "comparisons": ["dual - specialist_same", "dual - generalist"]}


def _study(tmp_path: Path) -> tuple[Path, Path]:
    from robodual_cli.commands.study import data_efficiency as de
    from robodual_cli.commands.study.common import StudyFolder
    from robodual_core.config import to_dict

    conf = tmp_path / "study.yaml"
    conf.write_text(yaml.safe_dump(KEYS))
    cfg = de.check(de.DataEfficiencyConfig(**KEYS))
    StudyFolder(tmp_path / "s", de.STUDY, {**to_dict(cfg), "quick": False}, defaults=to_dict(de.DataEfficiencyConfig()))
    return conf, tmp_path / "s"


def _finish(root: Path, name: str, where: str, successes: list[bool]) -> None:
    """Stage ``name`` done, its results at eval/``where`` (placements 100, 101, 102)."""
    out = root / "eval" / where
    out.mkdir(parents=True, exist_ok=True)
    eps = [{"task": "push-v3", "seed": 100 + i, "success": s, "length": 10} for i, s in enumerate(successes)]
    (out / "results.json").write_text(json.dumps({"episodes": eps}))
    progress = root / "progress.json"
    stages = json.loads(progress.read_text())["stages"] if progress.exists() else {}
    stages[name] = {"seconds": 1.0, "kind": "eval", "units": 3}
    progress.write_text(json.dumps({"study": "data-efficiency", "stages": stages}))


def _interim(run, conf: Path, root: Path) -> dict:
    code, out = run("study", "data-efficiency", "--config", conf, "--out", root, "--interim")
    assert code == 0, out
    return json.loads((root / "report-interim" / "summary.json").read_text())


def test_interim_reports_only_comparisons_whose_arms_are_finished_for_every_seed(run, tmp_path):
    conf, root = _study(tmp_path)
    _finish(root, "eval dual n=1 seed=0", "n1/dual/seed0", [True, True, False])
    _finish(root, "eval dual n=1 seed=1", "n1/dual/seed1", [True, True, True])
    _finish(root, "eval specialist_same n=1 seed=0", "n1/specialist_same/seed0", [False, True, False])
    summary = _interim(run, conf, root)
    assert summary["interim"] and summary["evaluations_done"] == 3
    assert summary["evaluations"] == 2 * (1 + 2 * 2) - 1  # the broad generalist once, counted at both scales
    assert summary["comparisons"] == []  # specialist_same seed 1 and the generalist are not evaluated yet
    assert {"a": "dual", "b": "specialist_same", "where": {"scale": 1, "split": "seen"}} in summary["pending"]

    _finish(root, "eval specialist_same n=1 seed=1", "n1/specialist_same/seed1", [False, False, True])
    summary = _interim(run, conf, root)
    (c,) = summary["comparisons"]
    assert (c["a"], c["b"], c["where"]) == ("dual", "specialist_same", {"scale": 1, "split": "seen"})
    assert c["per_seed"] == {"0": pytest.approx(1 / 3), "1": pytest.approx(2 / 3)}
    assert c["difference"] == pytest.approx(0.5) and c["pairs"] == 6
    rows = [json.loads(line) for line in (root / "report-interim" / "episodes.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and {r["policy"] for r in rows} == {"dual", "specialist_same"}
    text = (root / "report-interim" / "README.md").read_text()
    assert "Interim: 4 of 9 evaluations are finished" in text and "| dual - specialist_same | seen | 1 |" in text
    assert "| generalist |" not in text
    _finish(root, "eval generalist", "generalist", [True, False, False])
    text = (root / "report-interim" / "README.md").read_text() if _interim(run, conf, root) else ""
    # the broad generalist is one model for every scale: one row, no training seed
    assert text.count("| generalist | seen |") == 1
    assert "| generalist | seen | any (none seen) | 33.3 [6.1, 79.2] (1/3) | one run |" in text
    assert "| dual - generalist | seen | 1 |" in text and "| dual - generalist | seen | 2 |" not in text
    assert not (root / "report").exists()  # the final report is never written by an interim look
    assert json.loads((root / "progress.json").read_text())["stages"].keys() == {
        "eval dual n=1 seed=0", "eval dual n=1 seed=1", "eval specialist_same n=1 seed=0",
        "eval specialist_same n=1 seed=1", "eval generalist"}  # nothing ran


@pytest.mark.hostile
def test_interim_on_a_folder_without_a_study_is_refused_and_creates_nothing(run, tmp_path):
    conf = tmp_path / "study.yaml"
    conf.write_text(yaml.safe_dump(KEYS))
    code, out = run("study", "data-efficiency", "--config", conf, "--out", tmp_path / "none", "--interim")
    assert code != 0 and "holds no study" in out.err and str(tmp_path / "none") in out.err
    assert not (tmp_path / "none").exists()
