"""The CLI shell: lazy imports, plugin listing, broken/disabled plugins, install/uninstall, clear errors."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROBODUAL = [sys.executable, "-m", "robodual_cli.app"]


def run(args, env_extra=None, **kw):
    env = dict(os.environ)
    env.update(env_extra or {})
    return subprocess.run(ROBODUAL + list(args), capture_output=True, text=True, env=env, timeout=600, **kw)


def fake_dist(root: Path, dist: str, entry: str, module: str, source: str) -> dict:
    """A distribution visible to importlib.metadata through PYTHONPATH, without pip."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-0.0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.0.1\n")
    (info / "entry_points.txt").write_text(f"[robodual]\n{entry} = {module}\n")
    return {"PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_help_and_plugins_list_do_not_import_torch():
    code = textwrap.dedent("""
        import sys
        from robodual_cli.app import main
        for argv in (["--help"], ["plugins", "list"], ["version"]):
            try:
                main(argv)
            except SystemExit as exc:
                assert exc.code in (0, None), (argv, exc.code)
        heavy = [m for m in ("torch", "transformers", "timm", "diffusers", "zarr", "mujoco") if m in sys.modules]
        print("HEAVY", heavy)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout


def test_broken_plugin_is_listed_and_cli_keeps_working(tmp_path):
    env = fake_dist(tmp_path, "robodual-broken", "broken", "robodual_broken_plugin", "raise RuntimeError('kaput')\n")
    proc = run(["plugins", "list", "--json"], env)
    assert proc.returncode == 0, proc.stderr
    assert '"name": "broken"' in proc.stdout and "kaput" in proc.stdout
    assert run(["version"], env).returncode == 0
    disabled = run(["plugins", "list", "--json"], {**env, "ROBODUAL_DISABLE_PLUGINS": "broken"})
    assert '"status": "disabled"' in disabled.stdout and "kaput" not in disabled.stdout


def test_disabled_plugin_hides_its_registrations(tmp_path):
    env = fake_dist(tmp_path, "robodual-extra", "extra", "robodual_extra_plugin", """
        from robodual_core.hookspecs import hookimpl

        @hookimpl
        def robodual_register_sensors(registry):
            registry.register("extra_sensor", "collections:OrderedDict", "a test sensor")
    """)
    code = "from robodual_core.plugins import registry; print(registry('sensors').names())"
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env})
    assert "extra_sensor" in shown.stdout, shown.stderr
    hidden = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, **env, "ROBODUAL_DISABLE_PLUGINS": "extra"})
    assert "extra_sensor" not in hidden.stdout


def test_bad_input_is_one_line_without_traceback():
    for args, needle in ((["--bogus"], "No such option"), (["plugins", "show", "nope"], "unknown plugin 'nope'"),
                         (["plugins", "uninstall", "nope"], "unknown plugin 'nope'"),
                         (["plugins", "install", "./does/not/exist"], "does not exist")):
        proc = run(args)
        assert proc.returncode != 0
        assert needle in proc.stderr
        assert "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) <= 2, proc.stderr


def test_info_names_versions_and_plugins():
    proc = run(["info", "--json"])
    assert proc.returncode == 0, proc.stderr
    for key in ('"torch"', '"transformers"', '"diffusers"', '"peft"', '"timm"', '"zarr"', '"device"', '"sensors"'):
        assert key in proc.stdout


@pytest.mark.slow
def test_install_third_party_plugin_and_uninstall(tmp_path):
    pkg = tmp_path / "robodual-thirdparty-test"
    (pkg / "src" / "robodual_thirdparty_test").mkdir(parents=True)
    (pkg / "pyproject.toml").write_text(textwrap.dedent("""
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "robodual-thirdparty-test"
        version = "0.0.1"

        [project.entry-points.robodual]
        thirdparty = "robodual_thirdparty_test"

        [tool.setuptools.packages.find]
        where = ["src"]
    """))
    (pkg / "src" / "robodual_thirdparty_test" / "__init__.py").write_text(textwrap.dedent("""
        from robodual_core.hookspecs import hookimpl

        class Thermal:
            name = "thermal"

        @hookimpl
        def robodual_register_sensors(registry):
            registry.register("thermal", Thermal, "a third-party thermal camera")
    """))
    try:
        proc = run(["plugins", "install", str(pkg)], {"PIP_NO_BUILD_ISOLATION": "1"})
        assert proc.returncode == 0, proc.stderr
        assert "installed plugin thirdparty" in proc.stdout and "sensors: thermal" in proc.stdout
        listed = run(["plugins", "list", "--json"])
        assert '"thirdparty"' in listed.stdout
        code = "from robodual_core.plugins import registry; print(registry('sensors').get('thermal').name)"
        used = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert used.stdout.strip() == "thermal", used.stderr
    finally:
        proc = run(["plugins", "uninstall", "thirdparty"])
    assert proc.returncode == 0, proc.stderr
    assert '"thirdparty"' not in run(["plugins", "list", "--json"]).stdout
