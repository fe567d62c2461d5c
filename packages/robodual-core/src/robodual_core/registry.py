"""Named registries that plugins fill through the ``robodual_register_*`` hooks.

An entry is either an object (class, factory) or a lazy ``"module:attr"`` string that is imported on
first ``get``, so that listing plugins never imports torch or a model library. The first registration
of a name wins (the plugin manager calls built-in plugins first); a second one is refused, naming both.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from robodual_core.errors import RegistryError

KINDS = ("sensors", "conditioners", "generalists", "specialists", "envs", "dataset_converters")
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def _singular(kind: str) -> str:
    return kind[:-1] if kind.endswith("s") else kind


@dataclass
class Entry:
    name: str
    target: Any
    plugin: str
    description: str = ""
    kind: str = ""

    def load(self) -> Any:
        if isinstance(self.target, str):
            module, _, attr = self.target.partition(":")
            try:
                obj = importlib.import_module(module)
                for part in attr.split("."):
                    obj = getattr(obj, part)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # a plugin whose code fails at use time (even sys.exit) is an error
                text = str(exc).strip().splitlines()
                raise RegistryError(f"{_singular(self.kind) or 'entry'} '{self.name}' of plugin '{self.plugin}' "
                                    f"cannot be loaded from '{self.target}': {type(exc).__name__}: "
                                    f"{text[0] if text else ''}") from exc
            self.target = obj
        return self.target


class Registry:
    """A mapping from names to entries of one kind (sensors, conditioners, ...)."""

    def __init__(self, kind: str, describe: Callable[[str], str] | None = None):
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self.current_plugin = "<direct>"
        self.refused: list[tuple[str, str]] = []  # (plugin, message) of refused registrations
        self._describe = describe or (lambda plugin: f"plugin '{plugin}'")

    def register(self, name: str, target: Any, description: str = "") -> None:
        """Register ``target`` (an object or a lazy ``"module:attr"`` string) under ``name``."""
        what = _singular(self.kind)
        if not isinstance(name, str) or not NAME.match(name):
            raise RegistryError(f"{what} name {str(name)[:40]!r} from {self._describe(self.current_plugin)} is "
                                "not allowed: expected a letter then letters, digits, '_', '-' or '.' (64 at most)")
        if target is None or (isinstance(target, str) and not TARGET.match(target)):
            raise RegistryError(f"{what} '{name}' from {self._describe(self.current_plugin)} has target "
                                f"{str(target)[:60]!r}; expected an object or 'module:attribute'")
        if not isinstance(description, str):
            raise RegistryError(f"{what} '{name}' from {self._describe(self.current_plugin)} has a "
                                f"{type(description).__name__} description; expected a string")
        if name in self._entries and self._entries[name].plugin != self.current_plugin:
            first = self._entries[name].plugin
            message = (f"{what} '{name}' is already registered by {self._describe(first)}; "
                       f"{self._describe(self.current_plugin)} cannot replace it (rename its {what})")
            self.refused.append((self.current_plugin, message))
            raise RegistryError(message)
        self._entries[name] = Entry(name, target, self.current_plugin, description, self.kind)

    def refused_for(self, plugin: str) -> list[str]:
        return [message for p, message in self.refused if p == plugin]

    def drop(self, plugin: str) -> None:
        """Forget every entry of one plugin (its hook failed: all or nothing)."""
        self._entries = {n: e for n, e in self._entries.items() if e.plugin != plugin}

    def entry(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "(none: is the plugin that provides it installed?)"
            raise RegistryError(f"unknown {_singular(self.kind)} '{name}'; registered {self.kind}: {known}") from None

    def get(self, name: str) -> Any:
        """The registered object for ``name`` (lazy targets are imported now)."""
        return self.entry(name).load()

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)
