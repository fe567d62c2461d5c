"""Registered generalist families, found by name or by a folder they trained or wrote.

A ``generalists`` registry entry is a :class:`~robodual_core.interfaces.GeneralistFamily`: what it can do is
declared by that protocol (checked with ``isinstance`` when an entry is used), never probed attribute by
attribute. The commands (``train generalist``, ``generalist cache``/``merge``), the cache writer and the
runtime all find a generalist through these two functions.
"""

from __future__ import annotations

from pathlib import Path

from robodual_core.errors import RobodualError
from robodual_core.interfaces import GeneralistFamily

_GENERALIST_MEMBERS = ("name", "merge", "train_config", "build", "from_checkpoint", "load_runner", "recognizes")


def generalist_family(name: str) -> GeneralistFamily:
    """The registered generalist family ``name``; an entry that is not a GeneralistFamily is refused, naming
    its plugin and the members it lacks."""
    from robodual_core.plugins import registry

    reg = registry("generalists")
    family = reg.get(name)
    if not isinstance(family, GeneralistFamily):
        missing = [m for m in _GENERALIST_MEMBERS if not hasattr(family, m)]
        raise RobodualError(f"generalist '{name}' of plugin '{reg.entry(name).plugin}' is a "
                            f"{type(family).__name__}, not a robodual_core.interfaces.GeneralistFamily "
                            f"(missing: {', '.join(missing)}); register a family object")
    return family


def generalist_family_of(path: str | Path) -> tuple[str, GeneralistFamily]:
    """``(name, family)`` of a generalist run, checkpoint or standalone model folder.

    A robodual checkpoint (or a run folder's latest) names its family in ``model_config.json``; any other
    folder is offered to every registered family's ``recognizes``.
    """
    from robodual_core.checkpoint import latest_checkpoint, read_json
    from robodual_core.plugins import registry

    path = Path(path)
    ckpt = path if (path / "model_config.json").is_file() else latest_checkpoint(path)
    if ckpt is None:
        reg = registry("generalists")
        for name in reg.names():
            family = generalist_family(name)
            if family.recognizes(path):
                return name, family
        if not path.exists():
            raise RobodualError(f"generalist '{path}' does not exist; expected a generalist run, checkpoint or "
                                "merged model folder")
        raise RobodualError(f"'{path}' is not a generalist run, checkpoint or merged folder (no model_config.json, "
                            f"no checkpoints/, and no registered generalist family ({', '.join(reg.names())}) "
                            "recognizes it)")
    meta = read_json(ckpt, "model_config", expect=dict)
    name = meta.get("family")
    reg = registry("generalists")
    if name not in reg:
        raise RobodualError(f"'{path}' holds a '{name}' model, not a generalist of an installed plugin "
                            f"(registered generalists: {', '.join(reg.names()) or 'none'})")
    return name, generalist_family(name)
