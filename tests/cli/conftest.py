"""Fixtures shared by the CLI tests."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.fixture(scope="session")
def quick_data_efficiency(tmp_path_factory):
    """One `robodual study data-efficiency --quick` folder for the session: its own test checks it and its resume,
    the ablations and the latency study read it as their base (read only; they check that it stays as it is)."""
    out = tmp_path_factory.mktemp("quick-de") / "de"
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    proc = subprocess.run([sys.executable, "-m", "robodual_cli.app", "study", "data-efficiency", "--quick", "--out",
                           str(out)], capture_output=True, text=True, env=env, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out
