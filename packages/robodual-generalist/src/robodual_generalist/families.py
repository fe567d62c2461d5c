"""The generalist families this package registers, as :class:`robodual_core.interfaces.GeneralistFamily`
objects (``plugin.py`` registers :data:`OPENVLA` and :data:`HF_VLM` lazily):

- ``openvla`` (:class:`~robodual_generalist.model.VLAGeneralist`): ``base: tiny`` or an OpenVLA-format folder;
- ``hf_vlm`` (:class:`~robodual_generalist.hf_vlm.HFVLMGeneralist`): any other local Hugging Face folder that
  ``AutoModelForImageTextToText`` loads.

``model.family: auto`` (the default) chooses between these two by the base folder's config.json; any other
registered family (a third-party plugin's) is chosen by name (``--set model.family=NAME``). Nothing here is
imported at registration: the model modules load when a method runs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from robodual_core.errors import RobodualError

# the families ``model.family: auto`` chooses between (by the base folder)
AUTO_FAMILIES = ("openvla", "hf_vlm")


def resolve_family(base: str, family: str = "auto") -> str:
    """``openvla`` or ``hf_vlm`` for ``model.base`` when ``family`` is ``auto``; any other name is kept (the
    registry refuses one that no plugin registers)."""
    from robodual_generalist.prismatic import is_openvla_dir

    if family != "auto":
        return family
    if base == "tiny":
        return "openvla"
    path = Path(base)
    if not (path / "config.json").is_file():
        raise RobodualError(f"model.base '{base}' is neither 'tiny' nor a model folder with a config.json")
    return "openvla" if is_openvla_dir(path) else "hf_vlm"


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def builtin_train_config(path: Path | None, overrides: list[str], prior: dict[str, Any]) -> Any:
    """:class:`~robodual_generalist.config.GeneralistTrainConfig`: defaults (+ tiny defaults when the base is
    tiny) < ``prior`` (a resumed run's config) < ``path`` < ``overrides``."""
    from robodual_core.config import load_config
    from robodual_generalist.config import TINY_TRAIN_DEFAULTS, GeneralistTrainConfig, stored_model_config

    prior = {k: v for k, v in prior.items() if k != "dataset"}
    if isinstance(prior.get("model"), dict):
        prior["model"] = stored_model_config(prior["model"])
    probe = load_config(GeneralistTrainConfig, path, overrides, base=prior)
    start = _deep_merge(TINY_TRAIN_DEFAULTS, prior) if probe.model.base == "tiny" else prior
    return load_config(GeneralistTrainConfig, path, overrides, base=start)


def train_overrides(sets: list[str], base: str | None = None, steps: int | None = None,
                    seed: int | None = None) -> list[str]:
    """``--set`` items with ``--base``, ``--steps`` and ``--seed`` as the overrides they stand for."""
    out = list(sets)
    if base is not None:
        out.append(f"model.base={base}")
    if steps is not None:
        out.append(f"trainer.steps={steps}")
    if seed is not None:
        out.append(f"trainer.seed={seed}")
    return out


def resolve_train_config(config: Path | None, sets: list[str], base: str | None, steps: int | None,
                         saved: Path | None = None) -> Any:
    """The built-in families' train config from the command's options (``saved``: a resumed run's config.json)."""
    from robodual_core.config import read_config_file

    prior = read_config_file(saved) if saved is not None and saved.is_file() else {}
    return builtin_train_config(config, train_overrides(sets, base, steps), prior)


class _BuiltinFamily:
    """What the two built-in families share: one train config (:class:`GeneralistTrainConfig`)."""

    name = ""

    def train_config(self, path: Path | None, overrides: list[str], prior: dict[str, Any]) -> Any:
        return builtin_train_config(path, overrides, prior)

    def model_class(self) -> Any:
        raise NotImplementedError

    def from_checkpoint(self, path: str | Path, device: Any = "cpu") -> Any:
        return self.model_class().from_checkpoint(path, device=device)

    def load_runner(self, path: str | Path, **options: Any) -> Any:
        return self.model_class().load_runner(path, **options)

    def describe(self) -> str:
        return f"model class {self.model_class().__module__}.{self.model_class().__name__}; merge: yes"


class OpenVLAFamily(_BuiltinFamily):
    name = "openvla"

    def model_class(self) -> Any:
        from robodual_generalist.model import VLAGeneralist

        return VLAGeneralist

    def build(self, cfg: Any, action_dim: int) -> Any:
        return self.model_class()(cfg, action_dim=action_dim)

    def recognizes(self, path: Path) -> bool:
        from robodual_generalist.prismatic import is_openvla_dir

        return is_openvla_dir(path)

    def merge(self, run: Path, out: Path) -> Path:
        from robodual_generalist.export import merge_openvla

        return merge_openvla(run, out)


class HFVLMFamily(_BuiltinFamily):
    name = "hf_vlm"

    def model_class(self) -> Any:
        from robodual_generalist.hf_vlm import HFVLMGeneralist

        return HFVLMGeneralist

    def build(self, cfg: Any, action_dim: int) -> Any:
        from robodual_core.config import load_config
        from robodual_generalist.hf_vlm import HFVLMConfig

        if cfg.base == "tiny":
            raise RobodualError("model.family hf_vlm needs model.base to be a local Hugging Face model folder")
        names = {f.name for f in dataclasses.fields(HFVLMConfig)}
        shared = {k: v for k, v in dataclasses.asdict(cfg).items() if k in names}
        return self.model_class()(load_config(HFVLMConfig, base=shared), action_dim=action_dim)

    def recognizes(self, path: Path) -> bool:
        from robodual_generalist.hf_vlm import is_merged_dir

        return is_merged_dir(path)

    def merge(self, run: Path, out: Path) -> Path:
        from robodual_generalist.export import merge_hf_vlm

        return merge_hf_vlm(run, out)


OPENVLA = OpenVLAFamily()
HF_VLM = HFVLMFamily()


def family_of(path: str | Path) -> str:
    """The family of a run, checkpoint or merged folder (any registered family)."""
    from robodual_core.families import generalist_family_of

    return generalist_family_of(path)[0]


def load_generalist(path: str | Path, device: Any = "cpu") -> Any:
    """Any trained generalist (run, checkpoint or merged folder), in eval mode on ``device``."""
    from robodual_core.families import generalist_family_of

    return generalist_family_of(path)[1].from_checkpoint(path, device=device)
