"""The one plugin manager: entry points of group ``robodual``, loaded lazily and idempotently.

First-party packages register through the same entry points as third-party ones, but they come first and
their names win: a third-party plugin that takes a built-in's entry-point name, registers a name already
registered (a sensor, a generalist, ...) or adds a CLI command that exists is refused, naming both plugins,
and the built-in keeps working. Set ``ROBODUAL_DISABLE_PLUGINS=a,b`` to block plugins by name.

First party is a distribution, not a name: one of :data:`FIRST_PARTY` installed in the same place as the
``robodual-core`` that is running (its site directory), at robodual-core's version (they are released
together). A distribution named like one of them but found elsewhere (``robodual_sensors`` earlier on
``sys.path``) or at another version (a squatter that replaced one) is refused and loads nothing; every
distribution on the path is seen, so one cannot hide the real one either.

A plugin can never end or take over the process: a failure on import or in a hook (an exception,
``sys.exit``, ``KeyboardInterrupt``, any ``BaseException``, a Python-level ``os._exit``) is recorded with its
error and everything else keeps working. A ``KeyboardInterrupt`` is the plugin's unless SIGINT arrived (a
real Ctrl-C still stops robodual). Third-party entry points are first imported in a subprocess (a *probe*,
one per batch of plugins not seen before), so one that ends its process in any way (``os._exit``, a crash in
native code, a signal) or hangs is reported without being imported here. A probe that passed is cached by
distribution, version, location, entry point and the module files' size and mtime (``ROBODUAL_PLUGIN_CACHE``,
default ``~/.cache/robodual/plugin-probes.json``), so a plugin is probed again when it changes.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pluggy

from robodual_core import hookspecs
from robodual_core.errors import RegistryError, RobodualError
from robodual_core.registry import KINDS, Registry

GROUP = "robodual"
DISABLE_ENV = "ROBODUAL_DISABLE_PLUGINS"
# Distributions that ship with robodual: their plugins load first and their names cannot be taken over.
FIRST_PARTY = frozenset({"robodual-core", "robodual-cli", "robodual-client", "robodual-sensors",
                         "robodual-specialist", "robodual-generalist", "robodual-envs"})
BUILTIN_COMMANDS = "robodual-cli (built-in)"
CACHE_ENV = "ROBODUAL_PLUGIN_CACHE"
PROBE_TIMEOUT = 60.0  # seconds for a probe to import one plugin
CACHE_ENTRIES = 500


@dataclass
class PluginInfo:
    name: str
    distribution: str
    version: str
    value: str
    status: str = "ok"  # ok | disabled | error
    error: str = ""
    registers: dict[str, list[str]] = field(default_factory=dict)
    commands: bool = False
    builtin: bool = False
    location: str = ""  # the site directory of the distribution

    def fail(self, message: str) -> None:
        self.status = "error"
        self.error = f"{self.error}; {message}" if self.error and message not in self.error else message

    def label(self) -> str:
        where = "built-in" if self.builtin else f"{self.distribution} {self.version}".strip()
        return f"'{self.name}' ({where})"


def _disabled_names() -> set[str]:
    return {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}


def normalize_name(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


class PluginManager:
    """Loads the ``robodual`` entry points and exposes each hook through a typed method."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self._loaded = False
        self._registries: dict[str, Registry] = {}

    # -- loading ---------------------------------------------------------------------------------
    def load(self) -> None:
        """Import every entry point once (built-ins first); later calls do nothing."""
        if self._loaded:
            return
        self._loaded = True
        disabled = _disabled_names()
        pending: list[tuple[PluginInfo, Any]] = []
        for found in discover():
            ep, name = found.ep, found.ep.name
            info = PluginInfo(name, found.dist, found.version, ep.value, builtin=found.first_party,
                              location=found.location)
            if name in self.infos:  # the first keeps the name: a built-in, else the first distribution by name
                first = self.infos[name]
                info.fail(found.refusal or f"entry-point name '{name}' is taken by plugin {first.label()}; "
                          f"{found.dist} cannot replace it (rename its entry point)")
                info.name = f"{name} ({found.dist})"
                self.infos[info.name] = info
                continue
            self.infos[name] = info
            if found.refusal:
                info.fail(found.refusal)
            elif name in disabled:
                info.status = "disabled"
                self.pm.set_blocked(name)
            else:
                pending.append((info, ep))
        try:
            probed = probe([(info, ep) for info, ep in pending if not info.builtin])
        except Exception:  # no subprocess here (no sys.executable, no temp dir): import in-process, guarded
            probed = {}
        for info, ep in pending:
            if not info.builtin and probed.get(info.name):
                info.fail(f"import failed: {probed[info.name]}")
                continue
            try:
                with plugin_code(), contextlib.redirect_stdout(sys.stderr):  # stdout is for results (--json)
                    module = ep.load()
                    self.pm.register(module, name=info.name)
            except BaseException as exc:  # a broken plugin, even one exiting or interrupting, must not end the CLI
                reraise_real_interrupt(exc)
                info.fail(f"import failed: {_describe(exc)}")
        self.check_pending()

    def register_module(self, module: Any, name: str) -> None:
        """Register an in-process plugin (tests, notebooks) exactly like a third-party entry point."""
        self.load()
        if name in self.infos:
            raise RegistryError(f"plugin name '{name}' is taken by plugin {self.infos[name].label()}")
        self.pm.register(module, name=name)
        self.infos[name] = PluginInfo(name, "<in-process>", "", getattr(module, "__name__", repr(module)))
        self._registries.clear()

    def check_pending(self) -> None:
        """Record plugins that implement a hook that does not exist (a misspelled hook name)."""
        for hook_name, caller in vars(self.pm.hook).items():
            if not hook_name.startswith("robodual_") or caller.spec is not None:
                continue
            for impl in caller.get_hookimpls():
                info = self.infos.get(impl.plugin_name)
                if info is not None:
                    info.fail(f"implements unknown hook '{hook_name}' (misspelled?)")
                if self.pm.is_registered(impl.plugin):
                    self.pm.unregister(impl.plugin)

    def describe_plugin(self, name: str) -> str:
        if name == BUILTIN_COMMANDS:
            return "robodual itself"
        info = self.infos.get(name)
        return f"plugin {info.label()}" if info is not None else f"plugin '{name}'"

    # -- hooks -----------------------------------------------------------------------------------
    def _impls(self, hook_name: str) -> list[Any]:
        """Built-in plugins first, then the others by name (pluggy itself calls the last registered first)."""
        def order(impl: Any) -> tuple[bool, str]:
            info = self.infos.get(impl.plugin_name)
            return (not (info is not None and info.builtin), impl.plugin_name)

        return sorted(getattr(self.pm.hook, hook_name).get_hookimpls(), key=order)

    def _call(self, impl: Any, hook_name: str, kwargs: dict[str, Any]) -> None:
        with plugin_code(), contextlib.redirect_stdout(sys.stderr):
            result = impl.function(*[kwargs[a] for a in impl.argnames])
        if result is not None:
            raise RobodualError(f"{hook_name} returned a {type(result).__name__}; a robodual hook registers "
                                "through its argument and returns None")

    def _fail(self, plugin: str, message: str) -> None:
        info = self.infos.get(plugin)
        if info is not None:
            info.fail(message)

    def registry(self, kind: str) -> Registry:
        """The filled registry of one kind (built once)."""
        if kind not in KINDS:
            raise ValueError(f"unknown registry kind {kind!r}; expected one of {KINDS}")
        self.load()
        if kind not in self._registries:
            hook_name = f"robodual_register_{kind}"
            reg = Registry(kind, describe=self.describe_plugin)
            for impl in self._impls(hook_name):
                reg.current_plugin = impl.plugin_name
                try:
                    self._call(impl, hook_name, {"registry": reg})
                    refused = reg.refused_for(impl.plugin_name)
                    if refused:  # a clash the plugin caught and ignored is still a clash
                        raise RegistryError(refused[0])
                except BaseException as exc:
                    reraise_real_interrupt(exc)
                    reg.drop(impl.plugin_name)  # all or nothing: the hook's other entries go too
                    msg = str(exc) if isinstance(exc, RobodualError) else _describe(exc)
                    self._fail(impl.plugin_name, f"{hook_name}: {msg}")
            reg.current_plugin = "<direct>"
            for entry in reg.entries():
                info = self.infos.get(entry.plugin)
                if info is not None:
                    info.registers.setdefault(kind, []).append(entry.name)
            self._registries[kind] = reg
        return self._registries[kind]

    def sensors(self) -> Registry:
        return self.registry("sensors")

    def conditioners(self) -> Registry:
        return self.registry("conditioners")

    def generalists(self) -> Registry:
        return self.registry("generalists")

    def specialists(self) -> Registry:
        return self.registry("specialists")

    def envs(self) -> Registry:
        return self.registry("envs")

    def dataset_converters(self) -> Registry:
        return self.registry("dataset_converters")

    def register_commands(self, app: Any) -> None:
        """Let each plugin add commands; one that replaces an existing command or fails is rolled back."""
        from typer.models import CommandInfo

        self.load()
        owners = {id(item): BUILTIN_COMMANDS for _, item in _walk(app)}
        for impl in self._impls("robodual_register_commands"):
            before = _snapshot(app)
            try:
                self._call(impl, "robodual_register_commands", {"app": app})
                _check_commands(app, before, owners, impl.plugin_name, self.describe_plugin)
            except BaseException as exc:
                reraise_real_interrupt(exc)
                _restore(before)
                msg = str(exc) if isinstance(exc, RobodualError) else _describe(exc)
                self._fail(impl.plugin_name, f"robodual_register_commands: {msg}")
                continue
            info = self.infos.get(impl.plugin_name)
            for path, item in _walk(app):
                if id(item) in owners:
                    continue
                owners[id(item)] = impl.plugin_name
                if info is not None and not info.builtin and isinstance(item, CommandInfo) and item.callback:
                    item.callback = _named_failures(item.callback, " ".join(path), info)
            if info is not None and any(o == impl.plugin_name for o in owners.values()):
                info.commands = True

    def failed(self) -> list[PluginInfo]:
        """Plugins in error so far (without filling the registries)."""
        return sorted((i for i in self.infos.values() if i.status == "error"), key=lambda i: i.name)

    def plugin_infos(self) -> list[PluginInfo]:
        """Every plugin with what it registers (fills all registries)."""
        for kind in KINDS:
            self.registry(kind)
        return sorted(self.infos.values(), key=lambda i: i.name)


# -- CLI commands: snapshot, clash check, rollback ----------------------------------------------------
def _value(v: Any) -> Any:
    from typer.models import DefaultPlaceholder

    return v.value if isinstance(v, DefaultPlaceholder) else v


def _command_name(info: Any) -> str:
    from typer.main import get_command_name

    name = _value(info.name)
    callback = _value(info.callback)
    return name or (get_command_name(callback.__name__) if callback is not None else "")


def _group_name(info: Any) -> str | None:
    from typer.main import get_command_name

    name = _value(info.name) or _value(info.typer_instance.info.name)
    if not name:
        callback = _value(info.callback) or _value(info.typer_instance.info.callback)
        name = get_command_name(callback.__name__) if callback is not None else None
    return name


def _namespace(typer_app: Any) -> list[tuple[str, Any, Any]]:
    """(name, item, sub-Typer or None) of one command level; groups without a name merge into it."""
    found: list[tuple[str, Any, Any]] = [(_command_name(c), c, None) for c in typer_app.registered_commands]
    for g in typer_app.registered_groups:
        name = _group_name(g)
        if name:
            found.append((name, g, g.typer_instance))
        else:
            found += _namespace(g.typer_instance)
    return found


def _walk(typer_app: Any, path: tuple[str, ...] = ("robodual",)) -> list[tuple[tuple[str, ...], Any]]:
    items = []
    for name, item, sub in _namespace(typer_app):
        items.append((path + (name,), item))
        if sub is not None:
            items += _walk(sub, path + (name,))
    return items


def _typers(typer_app: Any) -> list[Any]:
    out = [typer_app]
    for g in typer_app.registered_groups:
        out += _typers(g.typer_instance)
    return out


def _snapshot(typer_app: Any) -> list[tuple[Any, list[Any], list[Any], list[tuple[Any, Any, Any]]]]:
    return [(t, list(t.registered_commands), list(t.registered_groups),
             [(c, c.name, c.callback) for c in t.registered_commands]) for t in _typers(typer_app)]


def _restore(snapshot: list[tuple[Any, list[Any], list[Any], list[tuple[Any, Any, Any]]]]) -> None:
    for t, commands, groups, fields in snapshot:
        t.registered_commands[:] = commands
        t.registered_groups[:] = groups
        for c, name, callback in fields:
            c.name, c.callback = name, callback


def _check_commands(app: Any, before: list[Any], owners: dict[int, str], plugin: str, describe: Any) -> None:
    for _t, _commands, _groups, fields in before:
        for c, name, callback in fields:
            if c.name is not name or c.callback is not callback:
                raise RobodualError(f"changes the existing command '{_command_name(c)}' of "
                                    f"{describe(owners.get(id(c), BUILTIN_COMMANDS))}; a plugin can only add commands")

    def check(typer_app: Any, path: tuple[str, ...]) -> None:
        seen: dict[str, Any] = {}
        for name, item, sub in _namespace(typer_app):
            if name in seen:
                old, new = (seen[name], item) if id(seen[name]) in owners else (item, seen[name])
                if id(new) in owners:  # both existed before: not this plugin's doing
                    continue
                if id(old) not in owners:
                    raise RobodualError(f"adds the command '{' '.join(path + (name,))}' twice")
                raise RobodualError(f"command '{' '.join(path + (name,))}' is already provided by "
                                    f"{describe(owners.get(id(old), BUILTIN_COMMANDS))}; it cannot be replaced "
                                    "(rename the plugin's command)")
            seen[name] = item
            if sub is not None:
                check(sub, path + (name,))

    check(app, ("robodual",))


def _named_failures(callback: Any, command: str, info: PluginInfo) -> Any:
    """A third-party command that raises fails as one line naming the plugin (--debug: the traceback)."""
    if getattr(callback, "__robodual_plugin__", None):
        return callback

    @functools.wraps(callback)
    def run(*args: Any, **kwargs: Any) -> Any:
        import typer
        from typer.exceptions import TyperException

        try:
            return callback(*args, **kwargs)
        except (RobodualError, TyperException, typer.Exit, typer.Abort):
            raise
        except Exception as exc:
            client_errors = sys.modules.get("robodual_client.errors")
            if client_errors is not None and isinstance(exc, client_errors.ClientError):
                raise
            raise RobodualError(f"'{command}' of plugin {info.label()} failed: {type(exc).__name__}: "
                                f"{exc}") from exc

    run.__robodual_plugin__ = info.name  # type: ignore[attr-defined]
    return run


def _describe(exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" ({last[0].filename}:{last[0].lineno})" if last else ""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}{where}"


# -- a plugin cannot end the process: os._exit and KeyboardInterrupt -------------------------------------------
class PluginExit(BaseException):
    """Raised in place of ``os._exit`` called by a plugin while it is imported or its hook runs."""

    def __init__(self, code: Any):
        super().__init__(f"os._exit({code!r}) called by the plugin")
        self.code = code


_interrupts = threading.local()
_guard_lock = threading.Lock()
_guarded_threads: dict[int, int] = {}  # thread id -> nesting depth of plugin_code()
_saved_exit: list[Any] = []


def _plugin_exit(code: Any = 0) -> None:
    """``os._exit`` while plugin code runs: raises in the guarded thread, exits as usual in any other."""
    if _guarded_threads.get(threading.get_ident()):
        raise PluginExit(code)
    _saved_exit[0](code)  # set when this function was installed; a plugin may keep a reference to it


@contextlib.contextmanager
def plugin_code() -> Iterator[None]:
    """While a plugin's code runs: ``os._exit`` raises :class:`PluginExit` in this thread, and SIGINT is
    noted, so a real Ctrl-C can be told from a ``KeyboardInterrupt`` the plugin raised itself."""
    owner = threading.get_ident()
    previous = None
    main = threading.current_thread() is threading.main_thread()
    _interrupts.real = False
    if main:
        previous = signal.getsignal(signal.SIGINT)

        def on_sigint(signum: int, frame: Any) -> None:
            if previous == signal.SIG_IGN:
                return
            _interrupts.real = True
            if callable(previous):
                previous(signum, frame)
            else:
                raise KeyboardInterrupt

        try:
            signal.signal(signal.SIGINT, on_sigint)
        except (ValueError, OSError):  # not settable here (an embedded interpreter): every interrupt is real
            main, _interrupts.real = False, True
    with _guard_lock:
        if not _guarded_threads:
            _saved_exit[:] = [os._exit]
            os._exit = _plugin_exit
        _guarded_threads[owner] = _guarded_threads.get(owner, 0) + 1
    try:
        yield
    finally:
        with _guard_lock:
            _guarded_threads[owner] -= 1
            if not _guarded_threads[owner]:
                del _guarded_threads[owner]
            if not _guarded_threads and os._exit is _plugin_exit:
                os._exit = _saved_exit[0]
        if main:
            signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)


def reraise_real_interrupt(exc: BaseException) -> None:
    """A KeyboardInterrupt from a real Ctrl-C (SIGINT) stops robodual; one a plugin raised is its failure."""
    if isinstance(exc, KeyboardInterrupt) and getattr(_interrupts, "real", False):
        raise exc


# -- which distributions are first party -----------------------------------------------------------------------
@dataclass
class Found:
    """One entry point of group ``robodual`` and the distribution that declares it."""

    ep: Any
    dist: str
    version: str
    location: str
    first_party: bool
    refusal: str = ""


def _dist_name(dist: Any) -> str:
    try:
        return str(dist.metadata["Name"] or "?")
    except Exception:
        return "?"


def _location(dist: Any) -> str:
    try:
        return str(Path(dist.locate_file("")).resolve())
    except Exception:
        return "?"


def _owns_kernel(dist: Any, kernel: Path) -> bool:
    """Whether ``dist`` is the installed robodual-core whose code is running (a wheel or an editable install)."""
    from urllib.parse import unquote, urlparse

    try:
        if Path(dist.locate_file("robodual_core/__init__.py")).resolve().parent == kernel:
            return True
        url = json.loads(dist.read_text("direct_url.json") or "{}").get("url", "")
        if isinstance(url, str) and url.startswith("file://"):
            return kernel.is_relative_to(Path(unquote(urlparse(url).path)).resolve())
    except Exception:
        pass
    return False


def _kernel_distribution() -> Any:
    """The installed robodual-core distribution whose code is running, or None (a bare source tree)."""
    import robodual_core

    kernel = Path(robodual_core.__file__).resolve().parent
    owners = [d for d in metadata.distributions(name="robodual-core") if _owns_kernel(d, kernel)]
    owners.sort(key=lambda d: not (d.read_text("INSTALLER") or "").strip())  # installed first, build leftovers last
    return owners[0] if owners else None


def _editable_trees() -> dict[str, Path]:
    """Source trees of the installed editable first-party distributions, by normalised name."""
    from urllib.parse import unquote, urlparse

    trees: dict[str, Path] = {}
    for norm in FIRST_PARTY:
        for dist in metadata.distributions(name=norm):
            try:
                if not (dist.read_text("INSTALLER") or "").strip():
                    continue
                info = json.loads(dist.read_text("direct_url.json") or "{}")
                url = info.get("url", "")
                if info.get("dir_info", {}).get("editable") and isinstance(url, str) and url.startswith("file://"):
                    trees.setdefault(norm, Path(unquote(urlparse(url).path)).resolve())
            except Exception:
                continue
    return trees


def _build_leftover(dist: Any, location: str, tree: Path | None) -> bool:
    """Whether ``dist`` is metadata a build left in the source tree of the editable install of the same name
    (setuptools writes ``src/<name>.egg-info`` there, and ``src`` is on sys.path): a second copy of the real
    distribution, not a distribution of its own, so it is neither loaded nor refused."""
    if tree is None or location == "?":
        return False
    try:
        if (dist.read_text("INSTALLER") or "").strip():
            return False  # installed by a tool: a distribution of its own
        return Path(location).is_relative_to(tree)
    except Exception:
        return False


def first_party_home() -> str | None:
    """The site directory of the running robodual-core's distribution (None: not installed, e.g. a bare
    source tree; then first party falls back to the name and the first distribution on sys.path)."""
    kernel = _kernel_distribution()
    return _location(kernel) if kernel is not None else None


def discover() -> list[Found]:
    """Every ``robodual`` entry point of every distribution on sys.path, first party first, then by name.

    Unlike ``importlib.metadata.entry_points()`` nothing is hidden: a distribution named like a first-party one
    but installed elsewhere is found (and refused) instead of shadowing the real one. Third-party duplicates
    (one name at two places) keep the first on sys.path, as Python does.
    """
    kernel = _kernel_distribution()
    home = _location(kernel) if kernel is not None else None
    kernel_version = kernel.version if kernel is not None else ""
    first: dict[str, list[tuple[Any, str]]] = {}
    others: list[tuple[Any, str]] = []
    seen: set[tuple[str, str, str]] = set()
    trees = _editable_trees()
    for dist in metadata.distributions():
        try:
            text = dist.read_text("entry_points.txt")  # cheap: most distributions have none of robodual's
            eps = [ep for ep in dist.entry_points if ep.group == GROUP] if text and GROUP in text else []
        except Exception:
            eps = []
        if not eps:
            continue
        name, location = _dist_name(dist), _location(dist)
        norm = normalize_name(name)
        if norm in FIRST_PARTY and _build_leftover(dist, location, trees.get(norm)):
            continue
        key = (norm, location, str(dist.version))
        if key in seen:
            continue
        seen.add(key)
        (first.setdefault(norm, []) if norm in FIRST_PARTY else others).append((dist, location))
    found: list[Found] = []
    for norm, dists in first.items():
        if home is not None:
            at_home = [d for d in dists if d[1] == home]
            at_home.sort(key=lambda d: d[0].version != kernel_version)  # two at home: the kernel's version wins
            real = at_home[0] if at_home else None
        else:
            real = dists[0]
        for dist, location in dists:
            is_real = real is not None and dist is real[0]
            if not is_real:
                refusal = (f"distribution '{_dist_name(dist)}' {dist.version} at {location} is named like robodual's "
                           f"own '{norm}', which is installed at {home if home is not None else real[1]}; it is not "
                           "loaded (uninstall or rename it)")
            elif kernel_version and dist.version != kernel_version:  # robodual's packages are released together
                is_real = False
                refusal = (f"distribution '{_dist_name(dist)}' {dist.version} at {location} is named like robodual's "
                           f"own '{norm}' but robodual-core there is {kernel_version} (robodual's packages share one "
                           "version); it is not loaded (reinstall robodual or uninstall it)")
            else:
                refusal = ""
            found += [Found(ep, _dist_name(dist), dist.version, location, is_real, refusal)
                      for ep in dist.entry_points if ep.group == GROUP]
    third: set[str] = set()
    for dist, location in others:
        norm = normalize_name(_dist_name(dist))
        if norm in third:
            continue
        third.add(norm)
        found += [Found(ep, _dist_name(dist), dist.version, location, False)
                  for ep in dist.entry_points if ep.group == GROUP]
    return sorted(found, key=lambda f: (not f.first_party, f.ep.name, f.dist, f.location))


# -- probing third-party entry points in a subprocess ----------------------------------------------------------
def cache_path() -> Path:
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "robodual" / "plugin-probes.json"


def _read_cache() -> dict[str, str]:
    try:
        data = json.loads(cache_path().read_text())
    except Exception:  # missing, unreadable or corrupt: probe again
        return {}
    passed = data.get("passed") if isinstance(data, dict) and data.get("version") == 1 else None
    if not isinstance(passed, dict):
        return {}
    return {k: v for k, v in passed.items() if isinstance(k, str) and isinstance(v, str)}


def _write_cache(passed: dict[str, str]) -> None:
    from robodual_core.io import atomic_write_json

    keep = dict(list(passed.items())[-CACHE_ENTRIES:])  # the newest: old versions' entries age out
    try:
        atomic_write_json(cache_path(), {"version": 1, "passed": keep})
    except Exception:  # a read-only home: probe again next time
        pass


def _module_files(value: str) -> list[str]:
    """The files of an entry point's module, found without running any of its code."""
    import importlib.util

    parts = value.split(":")[0].strip().split(".")
    try:
        spec = importlib.util.find_spec(parts[0])  # a top-level name: no package __init__ is executed
    except Exception:
        return []
    if spec is None:
        return []
    files = [spec.origin] if spec.origin else []
    locations = list(spec.submodule_search_locations or [])
    if len(parts) > 1 and locations:
        base = Path(locations[0]).joinpath(*parts[1:])
        files += [str(base) + ".py", str(base / "__init__.py")]
    return files


def _fingerprint(info: PluginInfo) -> tuple[str, str]:
    key = json.dumps([info.distribution, info.version, info.location, info.name, info.value])
    stats = []
    for path in _module_files(info.value):
        try:
            st = os.stat(path)
        except OSError:
            continue
        stats.append(f"{path}:{st.st_size}:{st.st_mtime_ns}")
    return key, "|".join(stats)


def probe(entries: list[tuple[PluginInfo, Any]]) -> dict[str, str]:
    """Import third-party entry points not seen before in a subprocess; returns {plugin name: error} for those
    that failed (a plugin absent from the answer passed or was cached as passing)."""
    cache = _read_cache()
    todo = []
    for info, ep in entries:
        key, fingerprint = _fingerprint(info)
        if cache.get(key) != fingerprint or not fingerprint:
            todo.append((info, ep, key, fingerprint))
    if not todo:
        return {}
    errors: dict[str, str] = {}
    left = todo
    while left:
        results, died = _probe_batch([(info.name, ep.value) for info, ep, _, _ in left])
        for (info, _, key, fingerprint), (ok, error) in zip(left, results, strict=False):
            if ok:
                cache.pop(key, None)
                cache[key] = fingerprint  # last: the newest entry
            else:
                errors[info.name] = error
        if died is None:
            break
        crashed = left[len(results)]
        errors[crashed[0].name] = died
        left = left[len(results) + 1:]
    _write_cache(cache)
    return errors


PROBE_CODE = "from robodual_core.plugins import _probe_child; _probe_child()"


def _probe_batch(batch: list[tuple[str, str]]) -> tuple[list[tuple[bool, str]], str | None]:
    """Import ``batch`` (name, value) in order in one subprocess. Returns the results of those it finished and,
    when it ended before the rest, why (for the first unfinished one). Each import has PROBE_TIMEOUT s."""
    import time

    with tempfile.TemporaryDirectory(prefix="robodual-probe-") as tmp:
        out, err = Path(tmp) / "results.jsonl", Path(tmp) / "stderr.txt"
        out.touch()
        request = Path(tmp) / "request.json"
        request.write_text(json.dumps({"path": sys.path, "entries": batch, "out": str(out)}))
        with open(err, "wb") as err_file:
            proc = subprocess.Popen([sys.executable, "-c", PROBE_CODE, str(request)], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err_file)
            done, progress, code = -1, time.monotonic(), None
            try:
                while True:
                    try:
                        code = proc.wait(timeout=0.05)
                        break
                    except subprocess.TimeoutExpired:
                        pass
                    lines = out.read_bytes().count(b"\n")
                    if lines != done:
                        done, progress = lines, time.monotonic()
                    elif time.monotonic() - progress > PROBE_TIMEOUT:
                        break
            finally:
                if code is None:
                    proc.kill()
                    proc.wait()
        results = []
        for line in out.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
                results.append((bool(row["ok"]), str(row.get("error", ""))))
            except Exception:
                break
        tail = err.read_text(errors="replace")[-4000:]
    if len(results) >= len(batch):
        return results[:len(batch)], None
    last = next((ln.strip() for ln in reversed(tail.splitlines()) if ln.strip()), "")[:200]
    if code is None:
        why = f"its import did not finish within {PROBE_TIMEOUT:g} s (probed in a subprocess)"
    elif code < 0:
        try:
            sig = signal.Signals(-code).name
        except ValueError:
            sig = f"signal {-code}"
        why = f"its import killed the process with {sig} (probed in a subprocess)"
    else:
        why = f"its import ended the process with exit status {code} (os._exit or native code; probed in a subprocess)"
    return results, why + (f"; last words: {last}" if last else "")


def _probe_child() -> None:
    """The probe's side: import each entry point, write one JSON line per result, then end without atexit."""
    request = json.loads(Path(sys.argv[1]).read_text())
    sys.path[:] = [p for p in request["path"] if isinstance(p, str)]
    with open(request["out"], "a", encoding="utf-8") as out:
        for name, value in request["entries"]:
            try:
                with contextlib.redirect_stdout(sys.stderr):
                    metadata.EntryPoint(name=name, value=value, group=GROUP).load()
                row = {"ok": True}
            except BaseException as exc:
                row = {"ok": False, "error": _describe(exc)}
            out.write(json.dumps(row) + "\n")
            out.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # a plugin's atexit handlers or threads cannot change the answer


_manager: PluginManager | None = None


def get_plugin_manager() -> PluginManager:
    """The process-wide plugin manager."""
    global _manager
    if _manager is None:
        _manager = PluginManager()
    return _manager


def reset_plugin_manager() -> None:
    """Forget loaded plugins (after installing one, or in tests)."""
    global _manager
    _manager = None


def registry(kind: str) -> Registry:
    """Shortcut: ``registry("sensors").get("rgb_static")``."""
    return get_plugin_manager().registry(kind)
