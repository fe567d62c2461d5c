"""Runners from checkpoints, through the plugin registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from robodual_core.errors import RobodualError


def load_runner(kind: str, path: str | Path, **options: Any) -> Any:
    """Build a generalist or specialist runner from a checkpoint through the registry.

    The checkpoint's ``model_config.json`` names its ``family``; the registered class provides
    ``load_runner(ckpt_dir)``.
    """
    from robodual_core.checkpoint import read_checkpoint_meta, resolve_checkpoint
    from robodual_core.plugins import registry

    ckpt = resolve_checkpoint(path)
    meta = read_checkpoint_meta(ckpt)
    family = meta.get("family")
    if family is None:
        raise RobodualError(f"checkpoint '{ckpt}' has no 'family' in model_config.json; cannot tell what it is")
    cls = registry("generalists" if kind == "generalist" else "specialists").get(family)
    loader = getattr(cls, "load_runner", None)
    if loader is None:
        raise RobodualError(f"{kind} family '{family}' provides no load_runner(); it cannot run in a policy")
    return loader(ckpt, **options)
