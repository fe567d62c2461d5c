"""scripts/study_carry.py: a study's results travel without its checkpoints; the stages that made the dropped files
rerun, and their new checkpoints are checked against the packed checksums."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "study_carry.py"


def load():
    spec = importlib.util.spec_from_file_location("study_carry", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_study(root: Path) -> Path:
    """A study folder as robodual writes one: stage records, a dataset, a run with checkpoints, results."""
    root.mkdir(parents=True)
    (root / "study.json").write_text(json.dumps({"study": "latency", "git_commit": "abc"}))
    stages = {"generate target n=5": {"seconds": 1}, "cache generalist n=5": {"seconds": 1},
              "train paper seed=0": {"seconds": 2}, "derive rtc_inference seed=0": {"seconds": 0},
              "eval paper L_g=0 d=0 seed0": {"seconds": 3}}
    (root / "progress.json").write_text(json.dumps({"study": "latency", "stages": stages}))
    (root / "data" / "target_5.zarr").mkdir(parents=True)
    (root / "data" / "target_5.zarr" / "zarr.json").write_text("{}")
    ckpt = root / "runs" / "paper" / "seed0" / "checkpoints" / "1000"
    ckpt.mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(b"weights" * 100)
    (ckpt / "model_config.json").write_text("{}")
    (root / "runs" / "paper" / "seed0" / "metrics.jsonl").write_text('{"step": 1}\n')
    (root / "eval" / "paper" / "g0_s0" / "seed0").mkdir(parents=True)
    (root / "eval" / "paper" / "g0_s0" / "seed0" / "results.json").write_text('{"episodes": []}')
    (root / "eval" / "paper" / "g0_s0" / "seed0" / "episode0.mp4").write_bytes(b"video")
    return root


def test_pack_restore_verify(tmp_path):
    carry = load()
    study = fake_study(tmp_path / "here" / "latency-sweep")
    archive = tmp_path / "carry.tar.gz"
    carry.pack([study], archive)
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert "latency-sweep/eval/paper/g0_s0/seed0/results.json" in names
    assert "latency-sweep/runs/paper/seed0/metrics.jsonl" in names
    assert not any("checkpoints" in n or n.endswith(".mp4") or "/data/" in n for n in names)

    there = tmp_path / "there"
    redo = carry.restore(archive, there)
    assert sorted(redo["latency-sweep"]) == ["cache generalist n=5", "derive rtc_inference seed=0",
                                             "generate target n=5", "train paper seed=0"]
    progress = json.loads((there / "latency-sweep" / "progress.json").read_text())
    assert list(progress["stages"]) == ["eval paper L_g=0 d=0 seed0"]  # the finished evaluation is kept
    assert (there / "latency-sweep" / "eval" / "paper" / "g0_s0" / "seed0" / "results.json").is_file()

    # before the trainings rerun, their checkpoints are missing; a bit-for-bit retraining matches
    assert carry.verify(archive, there) == ["latency-sweep/runs/paper/seed0/checkpoints/1000/model.safetensors: "
                                            "missing"]
    ckpt = there / "latency-sweep" / "runs" / "paper" / "seed0" / "checkpoints" / "1000"
    ckpt.mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(b"weights" * 100)
    assert carry.verify(archive, there) == []
    (ckpt / "model.safetensors").write_bytes(b"other" * 100)
    assert carry.verify(archive, there) == ["latency-sweep/runs/paper/seed0/checkpoints/1000/model.safetensors: "
                                            "sha256 differs"]


def test_cli_refuses_bad_input(tmp_path):
    run = [sys.executable, str(SCRIPT)]
    (tmp_path / "plain").mkdir()
    out = subprocess.run([*run, "pack", str(tmp_path / "plain"), "--out", str(tmp_path / "a.tar.gz")],
                         capture_output=True, text=True)
    assert out.returncode != 0 and "not a study folder" in out.stderr and "plain" in out.stderr
    assert not (tmp_path / "a.tar.gz").exists()

    study = fake_study(tmp_path / "s" / "latency-base")
    ok = subprocess.run([*run, "pack", str(study), "--out", str(tmp_path / "a.tar.gz")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    with pytest.raises(SystemExit, match="already holds a study"):
        load().restore(tmp_path / "a.tar.gz", tmp_path / "s")  # never over a study that is there
    bad = subprocess.run([*run, "verify", str(tmp_path / "a.tar.gz"), "--into", str(tmp_path / "nowhere")],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "missing" in bad.stdout


@pytest.mark.hostile
def test_damaged_or_hostile_packs_are_refused(tmp_path):
    import io

    carry = load()
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tarball at all")
    with pytest.raises(SystemExit, match="junk.tar.gz.*expected a study_carry.py pack"):
        carry.restore(junk, tmp_path / "into")
    study = fake_study(tmp_path / "s" / "latency-sweep")
    good = tmp_path / "good.tar.gz"
    carry.pack([study], good)
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # truncated mid-file
    with pytest.raises(SystemExit, match="cut.tar.gz"):
        carry.restore(cut, tmp_path / "into")
    # a member that climbs out of the target folder is refused, and nothing lands outside it
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        for name, data in ((carry.MANIFEST, json.dumps({"studies": {}}).encode()), ("../escaped.txt", b"x")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(SystemExit, match="evil.tar.gz"):
        carry.restore(evil, tmp_path / "into")
    assert not (tmp_path / "escaped.txt").exists()
