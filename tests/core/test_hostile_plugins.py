"""Misbehaving third-party plugins: built-in names win, clashes are refused naming both plugins, and a plugin
that exits, raises or returns garbage is reported in one line, never fatal.

Each fake plugin is a real distribution (a temporary dist-info on sys.path), found by importlib.metadata.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from robodual_core.errors import RegistryError
from robodual_core.plugins import get_plugin_manager, reset_plugin_manager

pytestmark = pytest.mark.hostile

HOOKIMPL = "from robodual_core.hookspecs import hookimpl\n"


class Site:
    """A folder on sys.path holding fake distributions and their plugin modules."""

    def __init__(self, root: Path):
        self.root = root
        self.modules: list[str] = []

    def dist(self, dist: str, entry: str, source: str, module: str | None = None, value: str | None = None,
             extra_modules: dict[str, str] | None = None) -> str:
        module = module or f"hostile_{dist.replace('-', '_')}_plugin"
        head = HOOKIMPL if source.startswith(HOOKIMPL) else ""
        (self.root / f"{module}.py").write_text(head + textwrap.dedent(source[len(head):]))
        for name, text in (extra_modules or {}).items():
            (self.root / f"{name}.py").write_text(textwrap.dedent(text))
            self.modules.append(name)
        info = self.root / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir(exist_ok=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[robodual]\n{entry} = {value or module}\n")
        self.modules.append(module)
        return module


@pytest.fixture
def site(tmp_path, monkeypatch):
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    s = Site(root)
    reset_plugin_manager()
    yield s
    reset_plugin_manager()
    for name in s.modules:
        sys.modules.pop(name, None)


def infos():
    return {i.name: i for i in get_plugin_manager().plugin_infos()}


def cli(capsys, *args):
    from robodual_cli.app import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    cap = capsys.readouterr()
    return code, " ".join(cap.out.replace("│", " ").split()), " ".join(cap.err.replace("│", " ").split())


def one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


# -- registry names: built-ins win --------------------------------------------------------------------
# (kind, built-in name, built-in plugin, module prefix of the built-in's lazy target)
BUILTIN_NAMES = [("sensors", "rgb_static", "sensors", "robodual_sensors."),
                 ("conditioners", "film", "specialist", "robodual_specialist."),
                 ("specialists", "dit", "specialist", "robodual_specialist."),
                 ("generalists", "openvla", "generalist", "robodual_generalist."),
                 ("envs", "metaworld", "metaworld", "robodual_envs.metaworld."),
                 ("dataset_converters", "calvin", "calvin", "robodual_envs.calvin.")]


@pytest.mark.parametrize("kind,name,owner,target", BUILTIN_NAMES, ids=[b[1] for b in BUILTIN_NAMES])
def test_third_party_cannot_take_a_builtin_name(site, kind, name, owner, target):
    site.dist("evil-robodual", "aaa_evil", HOOKIMPL + f"""
        class Impostor:
            pass

        @hookimpl
        def robodual_register_{kind}(registry):
            registry.register("evil_extra", Impostor)
            registry.register("{name}", Impostor, "takes over the built-in")
    """)
    reg = get_plugin_manager().registry(kind)
    assert reg.entry(name).plugin == owner and reg.entry(name).target.startswith(target)  # still the lazy string
    assert "evil_extra" not in reg  # the refused hook registers nothing (all or nothing)
    all_infos = infos()
    assert all_infos[owner].status == "ok", all_infos[owner].error
    evil = all_infos["aaa_evil"]
    assert evil.status == "error"
    assert f"'{name}' is already registered by plugin '{owner}' (built-in)" in evil.error
    assert "'aaa_evil' (evil-robodual 1.0) cannot replace it" in evil.error


def test_a_clash_the_plugin_swallows_is_still_refused(site):
    site.dist("sly-robodual", "sly", HOOKIMPL + """
        @hookimpl
        def robodual_register_sensors(registry):
            try:
                registry.register("rgb_static", object)
            except Exception:
                pass
    """)
    reg = get_plugin_manager().sensors()
    assert reg.entry("rgb_static").plugin == "sensors"
    assert "cannot replace it" in infos()["sly"].error


def test_plugins_list_reports_the_clash(site, capsys):
    site.dist("evil-robodual", "evil", HOOKIMPL + """
        @hookimpl
        def robodual_register_sensors(registry):
            registry.register("rgb_static", "os:getcwd")
    """)
    code, out, _ = cli(capsys, "plugins", "list", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and rows["sensors"]["status"] == "ok" and "rgb_static" in rows["sensors"]["registers"]["sensors"]
    assert rows["evil"]["status"] == "error" and "plugin 'sensors' (built-in)" in rows["evil"]["error"]


@pytest.mark.parametrize("entry", ["sensors", "specialist", "generalist", "metaworld", "calvin"])
def test_entry_point_named_like_a_builtin_does_not_drop_it(site, entry):
    site.dist("aaa-impostor", entry, HOOKIMPL + """
        @hookimpl
        def robodual_register_sensors(registry):
            registry.register("impostor_sensor", object)
    """)
    all_infos = infos()
    assert all_infos[entry].distribution.startswith("robodual") and all_infos[entry].status == "ok"
    assert all_infos[entry].registers  # the built-in still registers its entries
    refused = all_infos[f"{entry} (aaa-impostor)"]
    assert refused.status == "error" and f"'{entry}' is taken by plugin '{entry}' (built-in)" in refused.error
    assert "impostor_sensor" not in get_plugin_manager().sensors()


# -- CLI commands: built-ins cannot be replaced --------------------------------------------------------
COMMAND_TAKEOVERS = {
    "version": ("@hookimpl\ndef robodual_register_commands(app):\n"
                "    app.command('version')(lambda: print('PWNED'))\n", ["version"]),
    "info": ("@hookimpl\ndef robodual_register_commands(app):\n"
             "    @app.command()\n    def info():\n        print('PWNED')\n", ["info", "--json"]),
    "plugins-group": ("import typer\n@hookimpl\ndef robodual_register_commands(app):\n"
                      "    sub = typer.Typer()\n    sub.command('list')(lambda: print('PWNED'))\n"
                      "    sub.command('other')(lambda: print('PWNED'))\n"
                      "    app.add_typer(sub, name='plugins')\n", ["plugins", "list", "--json"]),
    "train-specialist": ("from robodual_core.cli_groups import group\n@hookimpl\n"
                         "def robodual_register_commands(app):\n"
                         "    group(app, 'train').command('specialist')(lambda: print('PWNED'))\n",
                         ["train", "specialist", "--help"]),
    "dataset-embed-language": ("from robodual_core.cli_groups import group\n@hookimpl\n"
                               "def robodual_register_commands(app):\n"
                               "    group(app, 'dataset').command('embed-language')(lambda: print('PWNED'))\n",
                               ["dataset", "embed-language", "--help"]),
    "unnamed-group-merge": ("import typer\n@hookimpl\ndef robodual_register_commands(app):\n"
                            "    sub = typer.Typer()\n    sub.command('version')(lambda: print('PWNED'))\n"
                            "    sub.command('other')(lambda: print('PWNED'))\n    app.add_typer(sub)\n",
                            ["version"]),
    "callback-swap": ("@hookimpl\ndef robodual_register_commands(app):\n"
                      "    for c in app.registered_commands:\n"
                      "        if (c.name or c.callback.__name__) == 'version':\n"
                      "            c.callback = lambda: print('PWNED')\n", ["version"]),
    "insert-first": ("import typer\n@hookimpl\ndef robodual_register_commands(app):\n"
                     "    from typer.models import CommandInfo\n"
                     "    app.registered_commands.append(CommandInfo(name='version', callback=lambda: print('PWNED')))\n",
                     ["version"]),
}


@pytest.mark.parametrize("case", list(COMMAND_TAKEOVERS))
def test_a_plugin_cannot_replace_a_builtin_command(site, capsys, case):
    source, argv = COMMAND_TAKEOVERS[case]
    site.dist("evil-commands", "evil_commands", HOOKIMPL + source)
    code, out, err = cli(capsys, *argv)
    assert "PWNED" not in out and code == 0, (out, err)
    info = infos()["evil_commands"]
    assert info.status == "error" and "robodual_register_commands" in info.error
    assert "cannot be replaced" in info.error or "can only add commands" in info.error
    code, out, _ = cli(capsys, "other") if case == "unnamed-group-merge" else (2, "", "")
    assert "PWNED" not in out  # rolled back: none of the plugin's commands stay


def test_a_command_hook_that_raises_is_rolled_back(site, capsys):
    site.dist("half-commands", "half", HOOKIMPL + """
        @hookimpl
        def robodual_register_commands(app):
            app.command("half-done")(lambda: print("HALF"))
            raise RuntimeError("broke halfway")
    """)
    code, out, err = cli(capsys, "half-done")
    assert code != 0 and "HALF" not in out and "No such command" in err
    assert "RuntimeError: broke halfway" in infos()["half"].error


@pytest.mark.parametrize("raise_", ["RuntimeError('disk on fire')", "KeyError('missing')"])
def test_a_plugin_command_that_raises_fails_in_one_line_naming_the_plugin(site, capsys, raise_):
    site.dist("crashy-commands", "crashy", HOOKIMPL + f"""
        @hookimpl
        def robodual_register_commands(app):
            @app.command("crash-now")
            def crash_now(times: int = 1):
                raise {raise_}
    """)
    code, out, err = cli(capsys, "crash-now", "--times", "2")
    assert code == 1 and "Traceback" not in err
    line = one_line(err)
    assert line.startswith("error: 'robodual crash-now' of plugin 'crashy' (crashy-commands 1.0) failed: ")
    assert raise_.split("(")[0] in line and "--debug" not in line


def test_a_plugin_command_robodual_error_passes_unchanged(site, capsys):
    site.dist("polite-commands", "polite", HOOKIMPL + """
        from robodual_core.errors import RobodualError

        @hookimpl
        def robodual_register_commands(app):
            @app.command("refuse")
            def refuse():
                raise RobodualError("--x must be 1, found 2")
    """)
    code, _, err = cli(capsys, "refuse")
    assert code == 1 and one_line(err) == "error: --x must be 1, found 2"


# -- import failures: reported, never fatal ------------------------------------------------------------
IMPORT_FAILURES = {
    "sys-exit-3": ("import sys\nsys.exit(3)\n", "SystemExit: 3"),
    "sys-exit-0": ("import sys\nsys.exit(0)\n", "SystemExit: 0"),
    "system-exit-text": ("raise SystemExit('bye from plugin')\n", "SystemExit: bye from plugin"),
    "base-exception": ("class Doom(BaseException):\n    pass\nraise Doom('the end')\n", "Doom: the end"),
    "runtime-error": ("raise RuntimeError('kaput')\n", "RuntimeError: kaput"),
    "missing-dependency": ("import hostile_no_such_dependency_xyz\n", "ModuleNotFoundError"),
    "syntax-error": ("def broken(:\n", "SyntaxError"),
    "bad-hook-signature": (HOOKIMPL + "@hookimpl\ndef robodual_register_sensors(registry, surprise):\n    pass\n",
                           "PluginValidationError"),
}


@pytest.mark.parametrize("case", list(IMPORT_FAILURES))
def test_a_plugin_failing_on_import_is_reported_and_help_works(site, capsys, case):
    source, needle = IMPORT_FAILURES[case]
    site.dist("doomed-plugin", "doomed", source)
    code, out, err = cli(capsys, "--help")
    assert code == 0 and "Usage" in out
    assert "Plugins in error" in out and "'doomed' (doomed-plugin 1.0)" in out and needle in out
    assert infos()["sensors"].status == "ok"
    assert infos()["doomed"].status == "error" and needle in infos()["doomed"].error


@pytest.mark.parametrize("value", ["hostile_module_that_does_not_exist_xyz", "os:no_such_attribute_xyz"])
def test_an_entry_point_at_a_missing_target_is_reported(site, capsys, value):
    site.dist("dangling-plugin", "dangling", "", value=value)
    code, out, _ = cli(capsys, "--help")
    assert code == 0 and "'dangling' (dangling-plugin 1.0)" in out
    assert infos()["dangling"].error.startswith("import failed: ")


def test_sys_exit_on_import_in_a_real_process(site):
    site.dist("exiting-plugin", "exiting", "import sys\nsys.exit(3)\n")
    env = {**os.environ, "PYTHONPATH": str(site.root) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "robodual_cli.app", "--help"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0 and "Usage" in proc.stdout, proc.stderr
    assert "exiting" in proc.stdout and "SystemExit: 3" in " ".join(proc.stdout.split())


def test_keyboard_interrupt_on_import_is_not_swallowed(site):
    site.dist("interrupting-plugin", "interrupting", "raise KeyboardInterrupt\n")
    with pytest.raises(KeyboardInterrupt):
        get_plugin_manager().load()


def test_a_plugin_printing_on_import_does_not_break_json(site, capsys):
    site.dist("chatty-plugin", "chatty", HOOKIMPL + """
        print("hello from chatty")

        @hookimpl
        def robodual_register_sensors(registry):
            print("registering")
            registry.register("chatty_sensor", object)
    """)
    code, out, err = cli(capsys, "plugins", "list", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and rows["chatty"]["registers"] == {"sensors": ["chatty_sensor"]}
    assert "hello from chatty" in err and "registering" in err


# -- hooks that raise, return garbage or register garbage ---------------------------------------------
HOOK_FAILURES = {
    "raises-runtime-error": ("raise RuntimeError('hook exploded')", "RuntimeError: hook exploded"),
    "raises-system-exit": ("import sys; sys.exit(4)", "SystemExit: 4"),
    "raises-base-exception": ("raise GeneratorExit('odd')", "GeneratorExit: odd"),
    "returns-int": ("return 42", "returned a int"),
    "returns-list": ("return ['rgb_static']", "returned a list"),
    "is-a-generator": ("yield registry", "returned a generator"),
    "name-not-a-string": ("registry.register(123, object)", "sensor name '123'"),
    "empty-name": ("registry.register('', object)", "sensor name ''"),
    "name-with-space": ("registry.register('my sensor', object)", "sensor name 'my sensor'"),
    "target-without-colon": ("registry.register('nocolon', 'just_a_module')", "expected an object or 'module:attribute'"),
    "target-none": ("registry.register('nothing', None)", "expected an object or 'module:attribute'"),
    "description-not-text": ("registry.register('numdesc', object, 5)", "description; expected a string"),
}


@pytest.mark.parametrize("case", list(HOOK_FAILURES))
def test_a_misbehaving_hook_is_reported_and_registers_nothing(site, case):
    body, needle = HOOK_FAILURES[case]
    site.dist("wild-hooks", "wild", HOOKIMPL + f"""
        @hookimpl
        def robodual_register_sensors(registry):
            registry.register("wild_first", object)
            {body}
    """)
    reg = get_plugin_manager().sensors()
    assert "wild_first" not in reg and "rgb_static" in reg
    info = infos()["wild"]
    assert info.status == "error" and needle in info.error and "robodual_register_sensors" in info.error
    assert infos()["sensors"].status == "ok"


def test_a_hook_taking_no_arguments_is_valid(site):
    site.dist("quiet-hooks", "quiet", HOOKIMPL + """
        @hookimpl
        def robodual_register_sensors():
            pass
    """)
    assert "rgb_static" in get_plugin_manager().sensors()
    assert infos()["quiet"].status == "ok", infos()["quiet"].error


# -- a registered class that fails when used ----------------------------------------------------------
USE_FAILURES = {
    "missing-module": ("hostile_gone_module_xyz:Thermal", None, "ModuleNotFoundError"),
    "missing-attribute": ("hostile_thermal_impl:Nope", "class Thermal:\n    pass\n", "AttributeError"),
    "raises-on-import": ("hostile_thermal_impl:Thermal", "raise RuntimeError('no driver')\n", "RuntimeError: no driver"),
    "exits-on-import": ("hostile_thermal_impl:Thermal", "import sys\nsys.exit(5)\n", "SystemExit: 5"),
}


@pytest.mark.parametrize("case", list(USE_FAILURES))
def test_a_class_that_fails_at_use_time_is_a_clear_error(site, case):
    target, impl, needle = USE_FAILURES[case]
    site.dist("thermal-robodual", "thermal", HOOKIMPL + f"""
        @hookimpl
        def robodual_register_sensors(registry):
            registry.register("thermal", "{target}", "a thermal camera")
    """, extra_modules={"hostile_thermal_impl": impl} if impl else None)
    sys.modules.pop("hostile_thermal_impl", None)
    reg = get_plugin_manager().sensors()
    with pytest.raises(RegistryError) as info:
        reg.get("thermal")
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"sensor 'thermal' of plugin 'thermal' cannot be loaded "
                                                      f"from '{target}': ")
    assert needle in message
