"""Which generalist family a base or a trained folder is, and building/loading it.

- ``openvla`` (:class:`~robodual_generalist.model.VLAGeneralist`): ``base: tiny`` or an OpenVLA-format folder;
- ``hf_vlm`` (:class:`~robodual_generalist.hf_vlm.HFVLMGeneralist`): any other local Hugging Face folder that
  ``AutoModelForImageTextToText`` loads.

``model.family: auto`` (the default) tells them apart by the folder's config.json.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from robodual_core.errors import RobodualError

FAMILIES = ("openvla", "hf_vlm")


def resolve_family(base: str, family: str = "auto") -> str:
    """``openvla`` or ``hf_vlm`` for ``model.base`` (``family`` other than ``auto`` is checked and kept)."""
    from robodual_generalist.prismatic import is_openvla_dir

    if family not in ("auto", *FAMILIES):
        raise RobodualError(f"config key 'model.family' is {family!r}; expected auto, {', '.join(FAMILIES)}")
    if family != "auto":
        return family
    if base == "tiny":
        return "openvla"
    path = Path(base)
    if not (path / "config.json").is_file():
        raise RobodualError(f"model.base '{base}' is neither 'tiny' nor a model folder with a config.json")
    return "openvla" if is_openvla_dir(path) else "hf_vlm"


def build_generalist(cfg: Any, action_dim: int) -> Any:
    """A trainable generalist for a :class:`~robodual_generalist.config.GeneralistConfig`."""
    family = resolve_family(cfg.base, getattr(cfg, "family", "auto"))
    if family == "openvla":
        from robodual_generalist.model import VLAGeneralist

        return VLAGeneralist(cfg, action_dim=action_dim)
    from robodual_core.config import load_config
    from robodual_generalist.hf_vlm import HFVLMConfig, HFVLMGeneralist

    if cfg.base == "tiny":
        raise RobodualError("model.family hf_vlm needs model.base to be a local Hugging Face model folder")
    names = {f.name for f in dataclasses.fields(HFVLMConfig)}
    shared = {k: v for k, v in dataclasses.asdict(cfg).items() if k in names}
    return HFVLMGeneralist(load_config(HFVLMConfig, base=shared), action_dim=action_dim)


def family_of(path: str | Path) -> str:
    """The family of a run, checkpoint or merged folder."""
    from robodual_core.checkpoint import read_json, resolve_checkpoint
    from robodual_generalist.hf_vlm import is_merged_dir
    from robodual_generalist.prismatic import is_openvla_dir

    path = Path(path)
    if is_openvla_dir(path):
        return "openvla"
    if is_merged_dir(path):
        return "hf_vlm"
    try:
        family = read_json(resolve_checkpoint(path), "model_config").get("family")
    except (OSError, json.JSONDecodeError) as exc:
        raise RobodualError(f"'{path}' is not a generalist run, checkpoint or merged folder ({exc})") from None
    if family not in FAMILIES:
        raise RobodualError(f"'{path}' holds a '{family}' model, not a generalist ({', '.join(FAMILIES)})")
    return family


def generalist_class(family: str) -> Any:
    if family == "openvla":
        from robodual_generalist.model import VLAGeneralist

        return VLAGeneralist
    from robodual_generalist.hf_vlm import HFVLMGeneralist

    return HFVLMGeneralist


def load_generalist(path: str | Path, device: Any = "cpu") -> Any:
    """Any trained generalist (run, checkpoint or merged folder), in eval mode on ``device``."""
    return generalist_class(family_of(path)).from_checkpoint(path, device=device)
