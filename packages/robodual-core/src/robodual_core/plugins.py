"""The one plugin manager: entry points of group ``robodual``, loaded lazily and idempotently.

First-party packages register through the same entry points as third-party ones. A plugin that fails
to import or whose hook raises is recorded with its error; everything else keeps working. Set
``ROBODUAL_DISABLE_PLUGINS=a,b`` to block plugins by entry-point name.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from robodual_core import hookspecs
from robodual_core.registry import KINDS, Registry

GROUP = "robodual"
DISABLE_ENV = "ROBODUAL_DISABLE_PLUGINS"


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


def _disabled_names() -> set[str]:
    return {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}


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
        """Import every entry point once; later calls do nothing."""
        if self._loaded:
            return
        self._loaded = True
        disabled = _disabled_names()
        for ep in sorted(metadata.entry_points(group=GROUP), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist is not None else "?"
            version = ep.dist.version if ep.dist is not None else "?"
            info = PluginInfo(ep.name, dist, version, ep.value)
            if ep.name in self.infos:  # two distributions with one plugin name: keep the first
                info.status, info.error = "error", f"duplicate plugin name '{ep.name}' (also in {dist})"
                self.infos[f"{ep.name} ({dist})"] = info
                continue
            self.infos[ep.name] = info
            if ep.name in disabled:
                info.status = "disabled"
                self.pm.set_blocked(ep.name)
                continue
            try:
                module = ep.load()
                self.pm.register(module, name=ep.name)
            except Exception as exc:  # a broken plugin must not take the CLI down
                info.status, info.error = "error", _describe(exc)
        self.check_pending()

    def register_module(self, module: Any, name: str) -> None:
        """Register an in-process plugin (tests, notebooks) exactly like an entry point."""
        self.load()
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
                    info.status = "error"
                    info.error = f"implements unknown hook '{hook_name}' (misspelled?)"
                if self.pm.is_registered(impl.plugin):
                    self.pm.unregister(impl.plugin)

    # -- hooks -----------------------------------------------------------------------------------
    def _call_each(self, hook_name: str, **kwargs: Any) -> None:
        hook = getattr(self.pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            reg = kwargs.get("registry")
            if reg is not None:
                reg.current_plugin = impl.plugin_name
            try:
                impl.function(**kwargs)
            except Exception as exc:
                info = self.infos.get(impl.plugin_name)
                if info is not None:
                    info.status, info.error = "error", f"{hook_name}: {_describe(exc)}"

    def registry(self, kind: str) -> Registry:
        """The filled registry of one kind (built once)."""
        if kind not in KINDS:
            raise ValueError(f"unknown registry kind {kind!r}; expected one of {KINDS}")
        self.load()
        if kind not in self._registries:
            reg = Registry(kind)
            self._call_each(f"robodual_register_{kind}", registry=reg)
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
        self.load()
        self._call_each("robodual_register_commands", app=app)
        for impl in self.pm.hook.robodual_register_commands.get_hookimpls():
            if impl.plugin_name in self.infos:
                self.infos[impl.plugin_name].commands = True

    def plugin_infos(self) -> list[PluginInfo]:
        """Every plugin with what it registers (fills all registries)."""
        for kind in KINDS:
            self.registry(kind)
        return sorted(self.infos.values(), key=lambda i: i.name)


def _describe(exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" ({last[0].filename}:{last[0].lineno})" if last else ""
    return f"{type(exc).__name__}: {exc}{where}"


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
