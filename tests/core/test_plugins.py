"""The plugin manager: broken plugins are reported, blocking works, unknown names list alternatives."""

import types

import pytest

from robodual_core.errors import RegistryError
from robodual_core.hookspecs import hookimpl
from robodual_core.plugins import PluginManager
from robodual_core.registry import Registry


def make_plugin(name, register):
    mod = types.ModuleType(name)
    mod.robodual_register_sensors = hookimpl(register)
    return mod


def test_registry_unknown_name_lists_registered():
    reg = Registry("sensors")
    reg.register("depth_static", object)
    reg.register("rgb_static", "collections:OrderedDict")
    with pytest.raises(RegistryError, match="unknown sensor 'rgb'; registered sensors: depth_static, rgb_static"):
        reg.get("rgb")
    import collections

    assert reg.get("rgb_static") is collections.OrderedDict


def test_hook_error_is_recorded_and_others_work():
    pm = PluginManager()
    pm.register_module(make_plugin("good", lambda registry: registry.register("good_sensor", object)), "good")

    def broken(registry):
        raise RuntimeError("boom")

    pm.register_module(make_plugin("bad", broken), "bad")
    assert "good_sensor" in pm.sensors()
    infos = {i.name: i for i in pm.plugin_infos()}
    assert infos["bad"].status == "error" and "boom" in infos["bad"].error
    assert infos["good"].status == "ok" and infos["good"].registers == {"sensors": ["good_sensor"]}


def test_misspelled_hook_is_reported():
    pm = PluginManager()
    mod = types.ModuleType("typo")
    mod.robodual_register_sensor = hookimpl(lambda registry: None)
    pm.register_module(mod, "typo")
    pm.check_pending()
    assert "unknown hook 'robodual_register_sensor'" in pm.infos["typo"].error


def test_first_party_plugins_load():
    pm = PluginManager()
    names = {i.name for i in pm.plugin_infos()}
    assert {"sensors", "specialist", "generalist", "calvin", "metaworld"} <= names


@pytest.mark.parametrize("args", [["some-robodual-plugin"], ["-e", "."]])
def test_plugins_install_runs_pip_with_the_torch_constraint(monkeypatch, args):
    """A plugin can never pull another torch: pip gets the same pins as scripts/venv.sh (no real install here)."""
    import subprocess
    import sys
    from pathlib import Path

    from robodual_cli.app import main
    from robodual_cli.commands import plugins as plugins_cmd

    calls = []

    def fake_run(cmd, **kwargs):
        i = cmd.index("-c")
        calls.append((cmd, Path(cmd[i + 1]).read_text().split()))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(plugins_cmd.subprocess, "run", fake_run)
    main(["plugins", "install", *args])
    (cmd, pins), = calls
    assert cmd[:4] == [sys.executable, "-m", "pip", "install"] and cmd[4] == "-c"
    assert pins == ["torch==2.14.1", "torchvision==0.29.1"]
    assert args[-1] in cmd[-1] or str(Path(args[-1]).resolve()) == cmd[-1]
    venv_sh = (Path(__file__).resolve().parents[2] / "scripts" / "venv.sh").read_text()
    assert all(f'"{pin}"' in venv_sh for pin in pins)  # the same pins as the set-up
