"""Packaging (issue 31): every package in packages/ builds an sdist and a wheel, the `robodual` meta-distribution
pulls in all of them with the same extras, every version agrees (scripts/version.py), and the built wheels,
installed into a clean venv (no editable install, no system site-packages), give a `robodual` that finds every
first-party plugin through its entry points and runs the demo end to end.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = sorted(p.parent for p in (ROOT / "packages").glob("*/pyproject.toml"))
META = ROOT / "packages" / "robodual"
TORCH_PINS = ["torch==2.14.1", "torchvision==0.29.1"]  # as scripts/venv.sh: never let pip fetch another torch


def _project(pkg: Path) -> dict:
    return tomllib.loads((pkg / "pyproject.toml").read_text())["project"]


def _name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower()


def _version_script():
    spec = importlib.util.spec_from_file_location("robodual_version_script", ROOT / "scripts" / "version.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- versions -------------------------------------------------------------------------------------------
def test_every_version_agrees():
    version = _version_script()
    assert version.mismatches() == []
    places = version.places()
    # every package's own version, the meta-distribution's pins of each part, and the __version__ of core
    assert len([w for w, _ in places if w.endswith(": version")]) == len(PACKAGES) == 8
    assert len([w for w, _ in places if "robodual/pyproject.toml: robodual-" in w]) >= len(PACKAGES) - 1
    import robodual_core

    assert {v for _, v in places} == {robodual_core.__version__}


def test_version_check_names_a_disagreeing_place_and_set_changes_them_all(tmp_path, monkeypatch):
    version = _version_script()
    for pkg in PACKAGES:  # a copy of the files that hold the version
        (tmp_path / pkg.relative_to(ROOT)).mkdir(parents=True)
        shutil.copy(pkg / "pyproject.toml", tmp_path / pkg.relative_to(ROOT) / "pyproject.toml")
        for init in pkg.glob("src/*/__init__.py"):
            (tmp_path / init.relative_to(ROOT)).parent.mkdir(parents=True)
            shutil.copy(init, tmp_path / init.relative_to(ROOT))
    monkeypatch.setattr(version, "ROOT", tmp_path)
    monkeypatch.setattr(version, "CORE_INIT", tmp_path / version.CORE_INIT.relative_to(ROOT))
    assert version.mismatches() == []
    sensors = tmp_path / "packages" / "robodual-sensors" / "pyproject.toml"
    sensors.write_text(sensors.read_text().replace('version = "', 'version = "9', 1))
    bad = version.mismatches()
    assert len(bad) == 1 and bad[0].startswith("packages/robodual-sensors/pyproject.toml: version has 9"), bad
    version.set_version("0.7.1")
    assert version.mismatches() == [] and version.current() == "0.7.1"
    assert '"robodual-envs[metaworld]==0.7.1"' in (tmp_path / "packages" / "robodual" / "pyproject.toml").read_text()


# -- the meta-distribution -------------------------------------------------------------------------------
def test_the_meta_distribution_depends_on_every_package_and_mirrors_their_extras():
    meta = _project(META)
    parts = {_project(p)["name"]: _project(p) for p in PACKAGES if p != META}
    assert meta["name"] == "robodual" and {_name(r) for r in meta["dependencies"]} == set(parts)
    assert all(f"=={meta['version']}" in r for r in meta["dependencies"])
    extras = meta["optional-dependencies"]
    for name, project in parts.items():
        for extra in project.get("optional-dependencies", {}):
            assert extra in extras, f"{name}[{extra}] has no robodual[{extra}]"
            assert any(r.startswith(f"{name}[") and extra in r.split("[")[1].split("]")[0].split(",")
                       for r in extras[extra]), extras[extra]
            assert any(r.startswith(f"{name}[") and extra in r.split("[")[1].split("]")[0].split(",")
                       for r in extras["all"]), f"robodual[all] lacks {name}[{extra}]"
    assert not (META / "src").exists()  # no code of its own


def test_every_plugin_package_registers_through_the_robodual_entry_point_group():
    """The CLI finds first-party plugins as it finds third-party ones: through `[project.entry-points.robodual]`."""
    groups = {_project(p)["name"]: _project(p).get("entry-points", {}).get("robodual", {}) for p in PACKAGES}
    for name in ("robodual-sensors", "robodual-specialist", "robodual-generalist", "robodual-envs"):
        assert groups[name], f"{name} registers no plugin"
    assert "robodual" in _project(ROOT / "packages" / "robodual-cli")["scripts"]


# -- build, install, run ------------------------------------------------------------------------------------
def _run(cmd: list, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kwargs)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_wheels_install_into_a_clean_venv_and_the_cli_runs_the_demo(tmp_path, clean_venv):
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    # 1. an sdist and a wheel for every package; the wheel is built from the sdist (so the sdist is complete).
    # Built from a copy: a build writes egg-info into src/, where the editable dev install would see it.
    dist = tmp_path / "dist"
    for pkg in PACKAGES:
        copy = tmp_path / "src" / pkg.name
        shutil.copytree(pkg, copy, ignore=shutil.ignore_patterns("*.egg-info", "build", "dist", "__pycache__"))
        _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, copy], timeout=300)
    timings["build"] = time.perf_counter() - t0
    version = _project(META)["version"]
    wheels = {}
    for pkg in PACKAGES:
        project = _project(pkg)
        stem = project["name"].replace("-", "_") + f"-{version}"
        wheel, sdist = dist / f"{stem}-py3-none-any.whl", dist / f"{stem}.tar.gz"
        assert wheel.is_file() and sdist.is_file(), sorted(p.name for p in dist.iterdir())
        with tarfile.open(sdist) as tar:
            assert f"{stem}/pyproject.toml" in tar.getnames()
        with zipfile.ZipFile(wheel) as zf:
            names = zf.namelist()
            entry_points = next((zf.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt")), "")
        for ep in project.get("entry-points", {}).get("robodual", {}):
            assert re.search(rf"^\[robodual\][^\[]*^{ep} = ", entry_points, re.M | re.S), (wheel.name, entry_points)
        module = project["name"].replace("-", "_")
        if pkg != META:
            assert any(n.startswith(f"{module}/") and n.endswith(".py") for n in names), wheel.name
        wheels[project["name"]] = wheel

    # 2. a clean venv: its own site-packages only; the wheels as files, everything else from the index
    env_dir = tmp_path / "clean-venv"
    py = clean_venv(env_dir)
    robodual = py.parent / "robodual"
    constraint = tmp_path / "constraints.txt"
    constraint.write_text("\n".join(TORCH_PINS) + "\n")
    t1 = time.perf_counter()
    parts = [w for name, w in wheels.items() if name != "robodual"]
    _run([py, "-m", "pip", "install", "-q", "-c", constraint, f"{wheels['robodual']}[metaworld,language]", *parts],
         timeout=900)
    timings["install"] = time.perf_counter() - t1
    clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    clean_env.update(MUJOCO_GL="egl", OMP_NUM_THREADS="1", COLUMNS="200")
    where = json.loads(_run([py, "-c", "import json, robodual_core, robodual_cli, torch; print(json.dumps("
                                       "[robodual_core.__file__, robodual_cli.__file__, torch.__version__]))"],
                            timeout=300, env=clean_env, cwd=tmp_path).stdout)
    assert all(Path(p).is_relative_to(env_dir) for p in where[:2]), where  # the installed copies, not src/
    assert where[2].split("+")[0] == TORCH_PINS[0].split("==")[1]
    listed = json.loads(_run([py, "-m", "pip", "list", "--format=json", "--editable"], timeout=120,
                             env=clean_env).stdout)
    assert listed == []

    # 3. the installed CLI: its version, every first-party plugin through entry points, the demo end to end
    def cli(*args, timeout=300):
        return _run([robodual, *args], timeout=timeout, env=clean_env, cwd=tmp_path)

    assert cli("version").stdout.strip() == f"robodual {version}"
    plugins = {p["name"]: p for p in json.loads(cli("plugins", "list", "--json").stdout)}
    expected = {ep: _project(p)["name"] for p in PACKAGES
                for ep in _project(p).get("entry-points", {}).get("robodual", {})}
    assert set(expected) <= set(plugins), (sorted(expected), sorted(plugins))
    for name, distribution in expected.items():
        assert plugins[name]["status"] == "ok" and plugins[name]["distribution"] == distribution, plugins[name]
        assert plugins[name]["version"] == version and plugins[name]["registers"], plugins[name]
    # `demo --quick` as tests/cli/test_demo.py shrinks it: every stage (generate, both trainings, the cache, the
    # specialist-only baseline with instruction embeddings, three closed-loop evaluations, the report) at a size
    # that fits CI; the unshrunk --quick demo is what `make demo`'s users run (see the test's README note)
    t2 = time.perf_counter()
    out = tmp_path / "demo"
    cli("demo", "--quick", "--out", out, "--set", "tasks=button-press-topdown-v3", "--set", "episodes_per_task=3",
        "--set", "generalist_steps=20", "--set", "specialist_steps=20", "--set", "batch_size=8",
        "--set", "eval_episodes=1", "--set", "max_steps=20", "--set", "workers=1", timeout=900)
    timings["demo"] = time.perf_counter() - t2
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert set(summary["success_rate"]) == {"dual system", "specialist only", "generalist only"}
    assert (out / "report" / "README.md").is_file()
    timings["total"] = time.perf_counter() - t0
    print("packaging timings (s):", {k: round(v, 1) for k, v in timings.items()})
