"""The one plugin manager: entry points of group ``robodual``, loaded lazily and idempotently.

First-party packages register through the same entry points as third-party ones, but they come first and
their names win: a third-party plugin that takes a built-in's entry-point name, registers a name already
registered (a sensor, a generalist, ...) or adds a CLI command that exists is refused, naming both plugins,
and the built-in keeps working. A plugin that fails to import (an exception, ``sys.exit``, any
``BaseException`` but ``KeyboardInterrupt``), whose hook raises or returns something, is recorded with its
error; everything else keeps working. Set ``ROBODUAL_DISABLE_PLUGINS=a,b`` to block plugins by name.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import traceback
from dataclasses import dataclass, field
from importlib import metadata
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

    def fail(self, message: str) -> None:
        self.status = "error"
        self.error = f"{self.error}; {message}" if self.error and message not in self.error else message

    def label(self) -> str:
        where = "built-in" if self.builtin else f"{self.distribution} {self.version}".strip()
        return f"'{self.name}' ({where})"


def _disabled_names() -> set[str]:
    return {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}


def _normalize(dist: str) -> str:
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
        found = []
        for ep in metadata.entry_points(group=GROUP):
            dist = ep.dist.name if ep.dist is not None else "?"
            version = ep.dist.version if ep.dist is not None else "?"
            found.append((_normalize(dist) not in FIRST_PARTY, ep.name, dist, version, ep))
        for third_party, name, dist, version, ep in sorted(found, key=lambda f: f[:3]):
            info = PluginInfo(name, dist, version, ep.value, builtin=not third_party)
            if name in self.infos:  # the first keeps the name: a built-in, else the first distribution by name
                first = self.infos[name]
                info.fail(f"entry-point name '{name}' is taken by plugin {first.label()}; {dist} cannot replace "
                          "it (rename its entry point)")
                info.name = f"{name} ({dist})"
                self.infos[info.name] = info
                continue
            self.infos[name] = info
            if name in disabled:
                info.status = "disabled"
                self.pm.set_blocked(name)
                continue
            try:
                with contextlib.redirect_stdout(sys.stderr):  # stdout is for results (--json)
                    module = ep.load()
                self.pm.register(module, name=name)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # a broken plugin, even one calling sys.exit, must not take the CLI down
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
        with contextlib.redirect_stdout(sys.stderr):
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
                except KeyboardInterrupt:
                    raise
                except BaseException as exc:
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
            except KeyboardInterrupt:
                raise
            except BaseException as exc:
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
