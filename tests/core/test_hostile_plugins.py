"""Misbehaving third-party plugins: built-in names win, clashes are refused naming both plugins, and a plugin
that exits, raises or returns garbage is reported in one line, never fatal.

Each fake plugin is a real distribution (a temporary dist-info on sys.path), found by importlib.metadata.
"""

from __future__ import annotations

import json
import os
import shutil
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
    monkeypatch.setenv("ROBODUAL_PLUGIN_CACHE", str(tmp_path / "plugin-probes.json"))
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


# -- a plugin can never end the process or stop every command --------------------------------------------------
def run_cli(site, *args, env=None, pre=""):
    """``robodual ARGS`` in a fresh process that sees the fake site (an exit there cannot take pytest down)."""
    env = {**os.environ, "PYTHONPATH": str(site.root) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "COLUMNS": "250", "ROBODUAL_PLUGIN_CACHE": str(site.root.parent / "plugin-probes.json"), **(env or {})}
    code = f"{pre}\nfrom robodual_cli.app import main\nmain({list(args)!r})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    return proc.returncode, " ".join(proc.stdout.replace("│", " ").split()), proc.stderr


# how a plugin ends its process on import, and what the report says
PROCESS_ENDERS = {
    "os-exit-0": ("import os\nos._exit(0)\n", "ended the process with exit status 0"),
    "os-exit-3": ("import os\nos._exit(3)\n", "ended the process with exit status 3"),
    "from-os-import-exit": ("from os import _exit\n_exit(0)\n", "ended the process with exit status 0"),
    "posix-exit": ("import posix\nposix._exit(0)\n", "ended the process with exit status 0"),
    "sigkill-itself": ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n", "killed the process with SIGKILL"),
    "segfault": ("import ctypes\nctypes.string_at(0)\n", "killed the process with SIGSEGV"),
    "abort": ("import os\nos.abort()\n", "killed the process with SIGABRT"),
}


@pytest.mark.parametrize("case", list(PROCESS_ENDERS))
def test_a_plugin_ending_its_process_on_import_cannot_end_the_cli(site, case):
    source, needle = PROCESS_ENDERS[case]
    site.dist("ender-plugin", "ender", source)
    code, out, err = run_cli(site, "--help")
    assert code == 0 and "Usage" in out, (code, out, err)
    assert "'ender' (ender-plugin 1.0)" in out and needle in out, out


@pytest.mark.parametrize("args,expect", [(["--help"], "Usage"), (["version"], "robodual 0.1.0"),
                                         (["plugins", "list"], "robodual plugins")])
def test_os_exit_0_on_import_leaves_every_command_working(site, args, expect):
    site.dist("exit-zero-plugin", "exit_zero", "import os\nos._exit(0)\n")
    code, out, err = run_cli(site, *args)
    assert code == 0 and expect in out, (code, out, err)
    if args[0] == "plugins":
        assert "exit_zero" in out and "ended the process with exit status 0" in out


def test_a_probe_that_passed_is_cached_and_repeated_when_the_plugin_changes(site):
    import robodual_core.plugins as plugins_mod

    module = site.dist("steady-plugin", "steady", HOOKIMPL + """
        @hookimpl
        def robodual_register_sensors(registry):
            registry.register("steady_sensor", object)
    """)
    calls = []
    real = plugins_mod._probe_batch

    def spy(batch):
        calls.append([name for name, _ in batch])
        return real(batch)

    import pytest as _pytest

    with _pytest.MonkeyPatch.context() as mp:
        mp.setattr(plugins_mod, "_probe_batch", spy)
        assert "steady_sensor" in get_plugin_manager().sensors()
        reset_plugin_manager()
        assert "steady_sensor" in get_plugin_manager().sensors()
        assert calls == [["steady"]]  # probed once, then cached
        path = site.root / f"{module}.py"
        path.write_text(path.read_text() + "\n# changed\n")
        os.utime(path, ns=(1, 1))
        reset_plugin_manager()
        get_plugin_manager().load()
        assert calls == [["steady"], ["steady"]]  # a changed plugin is probed again
        cache = site.root.parent / "plugin-probes.json"
        cache.write_text("{not json")  # a corrupt cache is probed again, never trusted
        reset_plugin_manager()
        assert "steady_sensor" in get_plugin_manager().sensors()
        assert len(calls) == 3 and json.loads(cache.read_text())["version"] == 1


def test_a_plugin_hanging_on_import_is_reported_after_the_probe_timeout(site, monkeypatch):
    import robodual_core.plugins as plugins_mod

    monkeypatch.setattr(plugins_mod, "PROBE_TIMEOUT", 1.0)
    site.dist("hanging-plugin", "hanging", "import time\ntime.sleep(600)\n")
    site.dist("zz-fine-plugin", "zz_fine", HOOKIMPL + """
        @hookimpl
        def robodual_register_sensors(registry):
            registry.register("fine_after_hang", object)
    """)
    assert "fine_after_hang" in get_plugin_manager().sensors()  # the next plugin of the batch is probed anew
    error = infos()["hanging"].error
    assert "did not finish within 1 s" in error and infos()["zz_fine"].status == "ok"


INTERRUPTS = {
    "on-import": "raise KeyboardInterrupt\n",
    "in-a-registry-hook": HOOKIMPL + "@hookimpl\ndef robodual_register_sensors(registry):\n"
                          "    registry.register('kb_sensor', object)\n    raise KeyboardInterrupt\n",
    "in-the-command-hook": HOOKIMPL + "@hookimpl\ndef robodual_register_commands(app):\n"
                           "    raise KeyboardInterrupt\n",
}


@pytest.mark.parametrize("where", list(INTERRUPTS))
def test_a_keyboard_interrupt_raised_by_a_plugin_is_its_failure_not_the_clis(site, capsys, where):
    site.dist("interrupting-plugin", "interrupting", INTERRUPTS[where])
    for args in (["version"], ["plugins", "list", "--json"]):
        code, out, err = cli(capsys, *args)
        assert code == 0, (args, out, err)
    assert infos()["interrupting"].status == "error" and "KeyboardInterrupt" in infos()["interrupting"].error
    assert "kb_sensor" not in get_plugin_manager().sensors() and "rgb_static" in get_plugin_manager().sensors()


def test_a_real_ctrl_c_still_stops_robodual(site):
    import signal

    # Python's own Ctrl-C handler, as in a terminal: a suite started in the background by a non-interactive shell
    # (`cmd &`) inherits SIGINT ignored, and then no signal would arrive at all
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    site.dist("slowhook-plugin", "slowhook", HOOKIMPL + """
        import signal

        @hookimpl
        def robodual_register_sensors(registry):
            signal.raise_signal(signal.SIGINT)  # as a Ctrl-C arriving while the hook runs
    """)
    try:
        with pytest.raises(KeyboardInterrupt):
            get_plugin_manager().sensors()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is restored
    finally:
        signal.signal(signal.SIGINT, before)


OS_EXIT_IN_PROCESS = {
    # passes the probe (the marker module is only imported by the real process), exits there on import
    "on-import-after-the-probe": "import os, sys\nif 'hostile_marker_xyz' in sys.modules:\n    os._exit(0)\n",
    "in-a-registry-hook": HOOKIMPL + "import os\n@hookimpl\ndef robodual_register_sensors(registry):\n"
                          "    os._exit(0)\n",
    "in-the-command-hook": HOOKIMPL + "import os\n@hookimpl\ndef robodual_register_commands(app):\n"
                           "    os._exit(7)\n",
}


@pytest.mark.parametrize("where", list(OS_EXIT_IN_PROCESS))
def test_os_exit_in_the_cli_process_is_intercepted(site, where):
    site.dist("late-exit-plugin", "late_exit", OS_EXIT_IN_PROCESS[where])
    (site.root / "hostile_marker_xyz.py").write_text("")
    code, out, err = run_cli(site, "plugins", "list", "--json", pre="import hostile_marker_xyz")
    assert code == 0, (code, out, err)
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["late_exit"]["status"] == "error" and "PluginExit: os._exit(" in rows["late_exit"]["error"]
    assert rows["sensors"]["status"] == "ok"


# -- first party is a distribution installed with the running robodual-core, not a name ------------------------
IMPOSTOR_NAMES = ["robodual_sensors", "robodual-sensors", "Robodual.Sensors", "robodual-core", "robodual-cli"]


@pytest.mark.parametrize("entry", ["aaa_first", "sensors"])
@pytest.mark.parametrize("dist", IMPOSTOR_NAMES)
def test_a_distribution_named_like_a_first_party_one_is_refused(site, dist, entry):
    site.dist(dist, entry, HOOKIMPL + """
        class Impostor:
            pass

        @hookimpl
        def robodual_register_sensors(registry):
            registry.register("rgb_static", Impostor, "the impostor's camera")
            registry.register("impostor_extra", Impostor)
    """, module="hostile_impostor_plugin")
    reg = get_plugin_manager().sensors()
    assert reg.entry("rgb_static").plugin == "sensors" and reg.entry("rgb_static").target.startswith(
        "robodual_sensors.")  # training builds the real camera encoder
    assert "impostor_extra" not in reg
    all_infos = infos()
    real = all_infos["sensors"]
    assert real.status == "ok" and real.distribution == "robodual-sensors" and real.builtin
    impostor = [i for i in all_infos.values() if i.location == str(site.root.resolve())]
    assert len(impostor) == 1 and impostor[0].status == "error" and not impostor[0].builtin
    assert f"is named like robodual's own '{dist.lower().replace('_', '-').replace('.', '-')}'" in impostor[0].error
    assert str(site.root.resolve()) in impostor[0].error and impostor[0].distribution == dist


def test_first_party_home_is_where_the_running_kernel_is_installed():
    from robodual_core.plugins import first_party_home

    home = first_party_home()
    assert home is not None and Path(home).is_dir()
    assert {i.location for i in infos().values() if i.builtin} == {home}


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


# -- robodual plugins install: a plugin that does not load is not a success ------------------------------------
INSTALLED_BROKEN = {
    "raises-on-import": ("raise RuntimeError('no driver')\n", "RuntimeError: no driver"),
    "exits-on-import": ("import os\nos._exit(0)\n", "ended the process with exit status 0"),
    "takes-a-builtin-name": (HOOKIMPL + "@hookimpl\ndef robodual_register_sensors(registry):\n"
                             "    registry.register('rgb_static', object)\n", "is already registered by plugin"),
}


@pytest.mark.parametrize("case", list(INSTALLED_BROKEN))
def test_plugins_install_of_a_plugin_that_does_not_load_fails_and_says_why(site, capsys, monkeypatch, case):
    from robodual_cli.commands import plugins as plugins_cmd

    source, needle = INSTALLED_BROKEN[case]
    monkeypatch.setattr(plugins_cmd, "_pip", lambda *args: site.dist("broken-robodual", "broken", source))
    code, out, err = cli(capsys, "plugins", "install", "broken-robodual")
    assert code == 1, (out, err)
    assert "installed plugin broken (broken-robodual 1.0)" in out and "[error: " in out and needle in out, out
    line = one_line(err)
    assert line.startswith("error: 'broken-robodual' was installed, but plugin 'broken' (broken-robodual 1.0) does "
                           "not load: ") and needle in line and "robodual plugins uninstall broken-robodual" in line


def test_plugins_install_of_a_working_plugin_reports_ok(site, capsys, monkeypatch):
    from robodual_cli.commands import plugins as plugins_cmd

    monkeypatch.setattr(plugins_cmd, "_pip", lambda *args: site.dist("good-robodual", "good", HOOKIMPL + """
        @hookimpl
        def robodual_register_sensors(registry):
            registry.register("good_sensor", object)
    """))
    code, out, err = cli(capsys, "plugins", "install", "good-robodual")
    assert code == 0 and "installed plugin good (good-robodual 1.0): sensors: good_sensor [ok]" in out, (out, err)


PIP_CONFLICTS = {
    "torch": ("    conflictplug 1.0 depends on torch==2.0.0\n    The user requested (constraint) torch==2.14.1\n",
              "conflictplug 1.0 depends on torch==2.0.0, which conflicts with the pinned torch==2.14.1"),
    "torchvision-range": ("    visionplug 2.1 depends on torchvision<0.20\n"
                          "    The user requested (constraint) torchvision==0.29.1\n",
                          "visionplug 2.1 depends on torchvision<0.20, which conflicts with the pinned "
                          "torchvision==0.29.1"),
    "torch-extra": ("    xplug 1.0 depends on torch[opt-einsum]>=3\n    The user requested (constraint) torch==2.14.1\n",
                    "xplug 1.0 depends on torch[opt-einsum]>=3, which conflicts with the pinned torch==2.14.1"),
    "other-packages": ("    aplug 1.0 depends on numpy<1\n    bplug 1.0 depends on numpy>=2\n",
                       "conflicting dependencies: aplug 1.0 depends on numpy<1; bplug 1.0 depends on numpy>=2"),
}


@pytest.mark.parametrize("case", list(PIP_CONFLICTS))
def test_a_pip_conflict_names_the_conflicting_requirement(capsys, monkeypatch, case):
    from robodual_cli.commands import plugins as plugins_cmd

    causes, needle = PIP_CONFLICTS[case]
    stdout = ("ERROR: Cannot install plug because these package versions have conflicting dependencies.\n\n"
              f"The conflict is caused by:\n{causes}\nTo fix this you could try to:\n1. loosen the range\n\n")
    stderr = "ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/en/latest/topics/\n"
    monkeypatch.setattr(plugins_cmd.subprocess, "run",
                        lambda *a, **k: subprocess.CompletedProcess(a, 1, stdout=stdout, stderr=stderr))
    code, _, err = cli(capsys, "plugins", "install", "plug")
    line = err[err.index("error: "):]  # after pip's command line (dim, on stderr)
    assert code == 1 and needle in line and "ResolutionImpossible" not in line, line


@pytest.mark.slow
def test_a_real_pip_torch_conflict_is_named(tmp_path, capsys, monkeypatch):
    import zipfile

    wheel = tmp_path / "torchpinned_robodual-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("torchpinned_robodual/__init__.py", "")
        zf.writestr("torchpinned_robodual-1.0.dist-info/METADATA", "Metadata-Version: 2.1\n"
                    "Name: torchpinned-robodual\nVersion: 1.0\nRequires-Dist: torch==2.0.0\n")
        zf.writestr("torchpinned_robodual-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\n"
                    "Root-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr("torchpinned_robodual-1.0.dist-info/RECORD", "")
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # nothing is downloaded: the conflict is found from the pins
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    code, _, err = cli(capsys, "plugins", "install", str(wheel))
    line = err[err.index("error: "):]
    assert code == 1 and "torchpinned-robodual 1.0 depends on torch==2.0.0, which conflicts with the pinned " \
        "torch==2.14.1" in line, err


# -- robodual plugins show: what a plugin's describe() does stays in one line ----------------------------------
DESCRIBE_FAILURES = {
    "raises": ("raise RuntimeError('no weights\\nsecond line')", "RuntimeError: no weights"),
    "sys-exit": ("import sys; sys.exit(2)", "SystemExit: 2"),
    "keyboard-interrupt": ("raise KeyboardInterrupt", "KeyboardInterrupt"),
    "os-exit": ("import os; os._exit(0)", "PluginExit: os._exit(0) called by the plugin"),
    "str-raises": ("return type('Bad', (), {'__str__': lambda self: 1 / 0})()", "ZeroDivisionError"),
}


@pytest.mark.parametrize("case", list(DESCRIBE_FAILURES))
def test_plugins_show_of_a_describe_that_fails_is_one_line(site, capsys, case):
    body, needle = DESCRIBE_FAILURES[case]
    site.dist("describing-robodual", "describing", HOOKIMPL + f"""
        class Cam:
            @staticmethod
            def describe():
                {body}

        class Fine:
            @staticmethod
            def describe():
                return "[red]fine[/] camera"

        @hookimpl
        def robodual_register_sensors(registry):
            registry.register("broken_cam", Cam, "a camera")
            registry.register("fine_cam", Fine, "another")
    """)
    code, out, err = cli(capsys, "plugins", "show", "describing")
    assert code == 0 and "Traceback" not in out + err, (out, err)
    assert f"error: sensor 'broken_cam'.describe() failed: {needle}" in out and "second line" not in out, out
    assert "[red]fine[/] camera" in out  # the next entry is shown, its text not taken as markup


def test_uninstalling_an_impostor_never_reaches_roboduals_own(site, capsys, monkeypatch):
    from robodual_cli.commands import plugins as plugins_cmd

    site.dist("robodual_sensors", "fake_sensors", "")
    ran = []
    monkeypatch.setattr(plugins_cmd, "_pip", lambda *args: ran.append(args))
    code, _, err = cli(capsys, "plugins", "uninstall", "fake_sensors")
    assert code == 1 and not ran  # pip would have uninstalled robodual-sensors itself
    assert "named like robodual's own 'robodual-sensors', so pip would uninstall robodual's" in one_line(err)


@pytest.mark.parametrize("command", [["info"], ["plugins", "list"], ["--help"], ["plugins", "show", "marked"]])
def test_a_plugin_error_holding_markup_is_printed_as_text(site, capsys, command):
    site.dist("marked-plugin", "marked", "raise RuntimeError('[/closing] [bold]loud')\n")
    code, out, err = cli(capsys, *command)
    assert code == 0 and "MarkupError" not in err and "[/closing] [bold]loud" in out, (out, err)


def test_without_a_subprocess_plugins_load_in_process_guarded(site, monkeypatch):
    import robodual_core.plugins as plugins_mod

    def no_subprocess(*args, **kwargs):
        raise OSError("no processes here")

    monkeypatch.setattr(plugins_mod.subprocess, "Popen", no_subprocess)
    site.dist("ok-robodual", "fine", HOOKIMPL + """
        @hookimpl
        def robodual_register_sensors(registry):
            registry.register("fine_sensor", object)
    """)
    site.dist("raising-robodual", "raising", "raise RuntimeError('kaput')\n")
    assert "fine_sensor" in get_plugin_manager().sensors()
    assert "RuntimeError: kaput" in infos()["raising"].error and infos()["fine"].status == "ok"


@pytest.mark.parametrize("layout", ["wheel", "editable", "elsewhere"])
def test_the_kernels_own_distribution_is_recognised_in_both_install_layouts(tmp_path, layout):
    from importlib import metadata

    from robodual_core.plugins import _owns_kernel

    site_dir, src = tmp_path / "site-packages", tmp_path / "repo" / "packages" / "robodual-core"
    kernel = (site_dir if layout == "wheel" else src / "src") / "robodual_core"
    kernel.mkdir(parents=True)
    (kernel / "__init__.py").write_text("")
    info = site_dir / "robodual_core-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: robodual-core\nVersion: 0.1.0\n")
    if layout != "wheel":
        (info / "direct_url.json").write_text(json.dumps({"url": (src if layout == "editable" else tmp_path / "x")
                                                          .as_uri(), "dir_info": {"editable": True}}))
    dist = metadata.PathDistribution(info)
    assert _owns_kernel(dist, kernel.resolve()) is (layout != "elsewhere")


@pytest.mark.parametrize("version,loaded", [("0.1.0", True), ("9.9", False)])
def test_a_first_party_name_at_home_loads_only_at_the_kernels_version(site, monkeypatch, version, loaded):
    from importlib import metadata

    import robodual_core.plugins as plugins_mod

    core_info = site.root / "robodual_core-0.1.0.dist-info"  # make the fake site robodual-core's home
    core_info.mkdir()
    (core_info / "METADATA").write_text("Metadata-Version: 2.1\nName: robodual-core\nVersion: 0.1.0\n")
    monkeypatch.setattr(plugins_mod, "_kernel_distribution", lambda: metadata.PathDistribution(core_info))
    site.dist("robodual-sensors", "home_sensors", HOOKIMPL + """
        @hookimpl
        def robodual_register_sensors(registry):
            registry.register("home_sensor", object)
    """)
    info = site.root / "robodual_sensors-1.0.dist-info"
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: robodual-sensors\nVersion: {version}\n")
    assert ("home_sensor" in get_plugin_manager().sensors()) is loaded
    home = infos()["home_sensors"]
    assert home.builtin is loaded and (home.status == "ok") is loaded
    if not loaded:
        assert "robodual-core there is 0.1.0 (robodual's packages share one version)" in home.error


def test_build_metadata_left_in_an_editable_source_tree_is_neither_loaded_nor_refused(site):
    """setuptools leaves ``src/<name>.egg-info`` in an editable install's source tree, which is on sys.path: a
    second copy of the real distribution's metadata. It must not be taken for an impostor (nor hide one)."""
    from importlib import metadata as md

    real = md.distribution("robodual-sensors")
    direct = json.loads(real.read_text("direct_url.json") or "{}")
    if not direct.get("dir_info", {}).get("editable"):
        pytest.skip("robodual-sensors is not an editable install here")
    import robodual_sensors

    src = Path(robodual_sensors.__file__).resolve().parents[1]
    egg = src / "robodual_sensors.egg-info"
    made = not egg.exists()  # an editable install made with setuptools may have left it already
    if made:
        egg.mkdir()
        (egg / "PKG-INFO").write_text(f"Metadata-Version: 2.1\nName: robodual-sensors\nVersion: {real.version}\n")
        (egg / "entry_points.txt").write_text(real.read_text("entry_points.txt"))
    try:
        site.dist("robodual-sensors", "sensors", HOOKIMPL + """
            @hookimpl
            def robodual_register_sensors(registry):
                registry.register("impostor_extra", object)
        """, module="hostile_impostor_plugin")
        all_infos = infos()
        assert all_infos["sensors"].status == "ok" and all_infos["sensors"].builtin
        assert not [i for i in all_infos.values() if i.location and Path(i.location).resolve() == src], [
            (i.name, i.location, i.status) for i in all_infos.values()]
        impostor = [i for i in all_infos.values() if i.location == str(site.root.resolve())]
        assert len(impostor) == 1 and impostor[0].status == "error"
        assert "impostor_extra" not in get_plugin_manager().sensors()
    finally:
        if made:
            shutil.rmtree(egg, ignore_errors=True)
