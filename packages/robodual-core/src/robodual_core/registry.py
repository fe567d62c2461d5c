"""Named registries that plugins fill through the ``robodual_register_*`` hooks.

An entry is either an object (class, factory) or a lazy ``"module:attr"`` string that is imported on
first ``get``, so that listing plugins never imports torch or a model library.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from robodual_core.errors import RegistryError

KINDS = ("sensors", "conditioners", "generalists", "specialists", "envs", "dataset_converters")


@dataclass
class Entry:
    name: str
    target: Any
    plugin: str
    description: str = ""

    def load(self) -> Any:
        if isinstance(self.target, str):
            module, _, attr = self.target.partition(":")
            if not attr:
                raise RegistryError(f"registry entry '{self.name}' from plugin '{self.plugin}' has target "
                                    f"'{self.target}'; expected 'module:attribute'")
            obj = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
            self.target = obj
        return self.target


class Registry:
    """A mapping from names to entries of one kind (sensors, conditioners, ...)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self.current_plugin = "<direct>"

    def register(self, name: str, target: Any, description: str = "") -> None:
        """Register ``target`` (an object or a lazy ``"module:attr"`` string) under ``name``."""
        if name in self._entries and self._entries[name].plugin != self.current_plugin:
            other = self._entries[name].plugin
            raise RegistryError(
                f"{self.kind} name '{name}' is registered twice: by plugin '{other}' and by '{self.current_plugin}'"
            )
        self._entries[name] = Entry(name, target, self.current_plugin, description)

    def entry(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "(none: is the plugin that provides it installed?)"
            raise RegistryError(f"unknown {self.kind[:-1] if self.kind.endswith('s') else self.kind} '{name}'; "
                                f"registered {self.kind}: {known}") from None

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
