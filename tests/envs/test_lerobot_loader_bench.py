"""``robodual bench lerobot-loader`` (issue 33): robodual's loader against LeRobotDataset, process by process.

LeRobot needs a torch this project does not pin, so CI has no lerobot. The robodual side runs for real here; the
LeRobot side is a stand-in interpreter (a shell script speaking the side script's protocol: a JSON object on the
last line) that checks the orchestration (every process in turn, medians, ratios) and the errors of a side process
that misbehaves. Where lerobot imports, the last test runs the real comparison.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest

from robodual_core.data import DatasetWriter


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("llb") / "tiny.zarr"
    rng = np.random.default_rng(0)
    with DatasetWriter(path, fps=10, modalities={"rgb_static": "rgb", "proprio": "proprio", "action": "action"},
                       action_space={"type": "continuous", "dim": 4}) as w:
        for _ in range(3):
            w.add_episode({"rgb_static": rng.integers(0, 255, (20, 16, 16, 3), dtype=np.uint8),
                           "proprio": rng.normal(size=(20, 4)).astype(np.float32),
                           "action": rng.uniform(-1, 1, (20, 4)).astype(np.float32)}, instruction="t", task="t")
    return path


def fake_lerobot(tmp_path: Path, time_line: str = '{"samples_per_s": 50.0, "first_batch_s": 0.5}',
                 exit_code: int = 0) -> Path:
    """A stand-in for a LeRobot environment's interpreter: ``$1`` is the side script, ``$2`` its command."""
    script = tmp_path / "fake-python"
    log = tmp_path / "fake.log"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$2 $3" >> "{log}"\n'
        'case "$2" in\n'
        "  version) echo '{\"lerobot\": \"0.0-standin\"}' ;;\n"
        '  images) mkdir -p "$4"; echo "{\\"root\\": \\"$4\\"}" ;;\n'
        f"  time) echo 'decoding...'; echo '{time_line}'; exit {exit_code} ;;\n"
        "esac\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


class Result:
    def __init__(self, exit_code: int, output: str):
        self.exit_code, self.output = exit_code, output


@pytest.fixture
def bench(capsys):
    """``robodual bench lerobot-loader ARGS`` through the CLI's own entry point (its error handling included)."""
    from robodual_cli.app import main

    def run(args: list[str]) -> Result:
        code = 0
        try:
            main(["bench", "lerobot-loader", *map(str, args)])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        got = capsys.readouterr()
        return Result(code, got.out + got.err)

    return run


def test_processes_alternate_and_leads_are_ratios_of_medians(store, tmp_path, bench):
    fake = fake_lerobot(tmp_path)
    out = tmp_path / "r.json"
    result = bench(["--lerobot-python", str(fake), "--data", str(store), "--workers", "0,auto", "--rounds", "2",
                    "--seconds", "0.2", "--batch-size", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    r = report.get("results", report)
    rates = r["samples_per_s"]
    assert set(rates) == {"robodual", "lerobot_video", "lerobot_image"}
    assert set(rates["robodual"]) == {"0", "auto"} and set(rates["lerobot_video"]) == {"0"}  # auto is robodual's
    for w in ("0", "auto"):
        runs = r["runs"]["robodual"][w]
        assert len(runs) == 2 and all(x["samples_per_s"] > 0 and x["samples"] > 0 for x in runs)
    assert r["runs"]["robodual"]["auto"][0]["auto_num_workers"] in (0, 1, 2)
    assert r["robodual_over_lerobot"]["lerobot_video"]["0"] == pytest.approx(rates["robodual"]["0"] / 50.0, rel=0.01)
    assert r["goals"]["min_lead_over_lerobot"] == min(v for d in r["robodual_over_lerobot"].values()
                                                      for v in d.values())
    assert r["lerobot"] == "0.0-standin" and r["frames"] == 60
    # the side interpreter saw: its version, one image dataset written from the exported video one, and each
    # LeRobot timing twice (two rounds), on the video dataset and on the image one
    calls = (tmp_path / "fake.log").read_text().splitlines()
    assert calls[0].startswith("version") and calls[1].startswith("images") and calls[1].endswith("lerobot_video")
    times = sorted(Path(c.split()[1]).name for c in calls if c.startswith("time"))
    assert times == ["lerobot_image", "lerobot_image", "lerobot_video", "lerobot_video"]
    assert "quiet, robodual over lerobot_video: 0 workers" in result.output


def test_busy_times_every_process_beside_a_busy_core_too(store, tmp_path, bench):
    out = tmp_path / "r.json"
    result = bench(["--lerobot-python", str(fake_lerobot(tmp_path)), "--data", str(store), "--workers", "0",
                    "--rounds", "1", "--seconds", "0.1", "--busy", "--out", str(out)])
    assert result.exit_code == 0, result.output
    r = json.loads(out.read_text())
    r = r.get("results", r)
    assert set(r["conditions"]) == {"quiet", "busy"} and r["condition"] == "quiet"
    assert r["samples_per_s"] == r["conditions"]["quiet"]["samples_per_s"]
    for c in ("quiet", "busy"):
        assert r["conditions"][c]["runs"]["robodual"]["0"][0]["samples_per_s"] > 0
        assert r["conditions"][c]["robodual_over_lerobot"]["lerobot_image"]["0"] > 0
    assert "busy, robodual over lerobot_image" in result.output


@pytest.mark.hostile
@pytest.mark.parametrize("line, code, expect", [
    ("not json at all", 0, "expected a JSON object on the last line of stdout, found 'not json at all'"),
    ('["a", "list"]', 0, "expected a JSON object"),
    ('{"samples_per_s": 1}', 3, "exited with 3"),
])
def test_a_misbehaving_side_process_is_named(store, tmp_path, bench, line, code, expect):
    fake = fake_lerobot(tmp_path, line, code)
    result = bench(["--lerobot-python", str(fake), "--data", str(store), "--workers", "0", "--rounds", "1",
                    "--seconds", "0.1", "--out", str(tmp_path / "r.json")])
    assert result.exit_code != 0
    text = " ".join(result.output.split())
    assert "with 0 workers" in text and expect in text, text
    assert not (tmp_path / "r.json").exists()


@pytest.mark.hostile
def test_no_lerobot_is_a_clear_error(store, tmp_path, bench):
    result = bench(["--lerobot-python", str(tmp_path / "no-such-python"), "--data", str(store)])
    text = " ".join(result.output.split())
    assert result.exit_code != 0 and "--lerobot-python" in text and "cannot run" in text and "side" in text
    if find_spec("lerobot") is None:  # this interpreter has none: the flag is needed, and the error says so
        result = bench(["--data", str(store)])
        text = " ".join(result.output.split())
        assert result.exit_code != 0 and "--lerobot-python" in text and "torch<2.11" in text
    # an interpreter without lerobot: the side script's import fails, reported with the hint
    result = bench(["--lerobot-python", sys.executable, "--data", str(store)]) if find_spec("lerobot") is None \
        else None
    if result is not None:
        text = " ".join(result.output.split())
        assert result.exit_code != 0 and "No module named 'lerobot'" in text and "side environment" in text


@pytest.mark.hostile
@pytest.mark.parametrize("args, expect", [
    (["--workers", "0,many"], "--workers"),
    (["--rounds", "0"], "--rounds"),
    (["--data", "/nonexistent/x.zarr"], "--data"),
])
def test_bad_flags(tmp_path, bench, args, expect):
    fake = fake_lerobot(tmp_path)
    result = bench(["--lerobot-python", str(fake), *args])
    assert result.exit_code != 0 and expect in result.output
    assert not (tmp_path / "fake.log").exists()  # refused before any process ran


@pytest.mark.skipif(find_spec("lerobot") is None and not os.environ.get("ROBODUAL_LEROBOT_PYTHON"),
                    reason="needs lerobot here or an interpreter with it in ROBODUAL_LEROBOT_PYTHON")
def test_real_lerobot(store, tmp_path, bench):
    python = os.environ.get("ROBODUAL_LEROBOT_PYTHON", sys.executable)
    out = tmp_path / "r.json"
    result = bench(["--lerobot-python", python, "--data", str(store), "--workers", "0", "--rounds", "1",
                    "--seconds", "0.5", "--batch-size", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    r = json.loads(out.read_text())
    r = r.get("results", r)
    assert all(r["samples_per_s"][lib]["0"] > 0 for lib in ("robodual", "lerobot_video", "lerobot_image"))
