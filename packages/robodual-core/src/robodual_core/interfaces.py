"""The interfaces plugins implement, and the data they exchange (DESIGN.md section 2).

Shapes use B = batch, T = time steps in a chunk, D = action dimension, N = tokens, C = channels/width.
Dataset keys are the Zarr store's ``data/<key>`` names (``rgb_static``, ``depth_static``, ``proprio``,
``action``, ...).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass
class GeneralistOutput:
    """What the generalist hands the specialist.

    actions:        [B, k_g, D] float, discretized actions in [-1, 1] (normalized space)
    task_latents:   [B, Nt, H] float, last-layer hidden states at prompt positions
    action_latents: [B, Na, H] float, hidden states at the generated action positions
    task_mask:      [B, Nt] bool, True = valid token (False = padding)
    action_mask:    [B, Na] bool, True = valid token
    """

    actions: Any
    task_latents: Any
    action_latents: Any
    task_mask: Any
    action_mask: Any

    def to(self, device: Any) -> GeneralistOutput:
        return GeneralistOutput(*(getattr(self, f).to(device) for f in
                                  ("actions", "task_latents", "action_latents", "task_mask", "action_mask")))

    def row(self, i: int) -> GeneralistOutput:
        """Row ``i`` of a batch, as a batch of one."""
        return GeneralistOutput(*(getattr(self, f)[i:i + 1] for f in
                                  ("actions", "task_latents", "action_latents", "task_mask", "action_mask")))

    @staticmethod
    def concat(outputs: list[GeneralistOutput]) -> GeneralistOutput:
        """Batches stacked along B; token lengths that differ (instructions of other lengths) are padded at the
        end with masked tokens, which attention ignores."""
        import torch

        def padded(name: str, mask: str) -> tuple[Any, Any]:
            n = max(getattr(o, name).shape[1] for o in outputs)
            values, masks = [], []
            for o in outputs:
                v, m = getattr(o, name), getattr(o, mask)
                extra = n - v.shape[1]
                values.append(torch.nn.functional.pad(v, (0, 0, 0, extra)) if extra else v)
                masks.append(torch.nn.functional.pad(m, (0, extra), value=False) if extra else m)
            return torch.cat(values), torch.cat(masks)

        task, task_mask = padded("task_latents", "task_mask")
        act, act_mask = padded("action_latents", "action_mask")
        return GeneralistOutput(torch.cat([o.actions for o in outputs]), task, act, task_mask, act_mask)


@dataclass
class StepObservation:
    """One control step's observation as numpy arrays keyed by dataset key (HWC uint8 images, float vectors)."""

    arrays: dict[str, np.ndarray]
    instruction: str = ""


class SensorEncoder(ABC):
    """Turns one modality into tokens for the specialist.

    ``keys``: the dataset keys it reads. ``forward``: what the loader serves for them (float [B, C, H, W], or
    [B, T, C, H, W] with history) -> tokens [B, N, C]. The kernel preprocesses every frame before ``forward`` sees
    it, the same way in training and at control time (``robodual_core.data.preprocess.prepare_observation``:
    resize to ``data.image_size``, dataset-statistics normalization, dtype and layout); an encoder does nothing
    of its own for that, and whatever else it needs happens in ``forward``. ``preprocess`` is optional, for
    standalone use outside a policy: the runtime never calls it.
    Implementations are ``torch.nn.Module`` subclasses as well; frozen ones report no trainable parameters.

    ``width_option``: the name of the constructor option that sets ``out_dim``, if there is one; a
    specialist whose config leaves that option unset passes its own hidden width through it, so the tokens
    need no projection (the width an encoder picks by itself is then only the default of standalone use).
    """

    name: str
    keys: tuple[str, ...]
    out_dim: int
    trainable: bool
    width_option: str | None = None

    def preprocess(self, arrays: dict[str, np.ndarray]) -> Any:
        """Standalone use only (the runtime applies the kernel's preprocessing itself)."""
        from robodual_core.errors import RobodualError

        raise RobodualError(f"sensor '{getattr(self, 'name', type(self).__name__)}' has no standalone preprocess; "
                            "use robodual_core.data.preprocess.prepare_observation (what the loader and the "
                            "runtime apply)")

    @abstractmethod
    def forward(self, x: Any) -> Any: ...


class Conditioner(ABC):
    """How condition tokens ``cond [B, N, C]`` (with ``cond_mask [B, N]``, True = valid) enter a
    specialist block's hidden states ``x [B, T, C]``: cross-attention, FiLM or in-context.

    ``precompute(cond, cond_mask)`` returns whatever can be computed once per control step (e.g.
    cross-attention keys and values); ``forward(x, pre)`` applies it inside every denoising step.
    """

    @abstractmethod
    def precompute(self, cond: Any, cond_mask: Any) -> Any: ...

    @abstractmethod
    def forward(self, x: Any, pre: Any) -> Any: ...


class Generalist(ABC):
    """The slow system: a model (a ``torch.nn.Module`` as well) that the trainer, the cache writer and the
    runners drive without knowing what is inside.

    ``batch``: ``{"obs": {image_key: float [B, 3, H, W] in [0, 1] at the store's size}, "instruction":
    [B strings]}``, plus ``"action": [B, k_g, D]`` normalized to [-1, 1] (q99) when training.
    ``loss(batch) -> (loss tensor, metrics dict)``; ``generate(batch) -> GeneralistOutput`` (free-running,
    deterministic, in eval mode); ``robodual_config()``: the JSON a checkpoint's ``model_config.json`` holds
    (``family``: the registered family name, ``model``, ``action_dim``).

    ``k_g``, ``action_dim``, ``hidden_size`` (H of the latents) and ``image_key`` (the camera it reads; by
    default ``self.cfg.image_key``) size the cache; ``task_token_count(instruction)`` is the number of task
    latent tokens ``generate`` returns for it (the cache's ``Nt`` is the largest over a store's instructions).
    """

    k_g: int
    action_dim: int
    hidden_size: int

    @property
    def image_key(self) -> str:
        return self.__dict__.get("_image_key") or self.cfg.image_key  # type: ignore[attr-defined]

    @image_key.setter
    def image_key(self, value: str) -> None:
        self.__dict__["_image_key"] = value

    @abstractmethod
    def loss(self, batch: dict[str, Any]) -> tuple[Any, dict[str, float]]: ...

    @abstractmethod
    def generate(self, batch: dict[str, Any]) -> GeneralistOutput: ...

    @abstractmethod
    def task_token_count(self, instruction: str) -> int: ...

    @abstractmethod
    def robodual_config(self) -> dict[str, Any]: ...


@runtime_checkable
class GeneralistFamily(Protocol):
    """One kind of generalist, as a plugin registers it: ``registry.register(name, "pkg.mod:FAMILY")`` in
    ``robodual_register_generalists``, the target an object with these members (its ``name`` is the
    registered name, and the ``family`` its models write into ``model_config.json``).

    ``train_config(path, overrides, prior)``: the typed config of ``robodual train generalist`` for this
    family from a ``--config`` file, ``--set`` overrides and ``prior`` (a resumed run's saved config, else
    ``{}``); it has ``model`` (with ``image_key`` and ``k_g``), ``data`` (``val_ratio``, ``split_seed``) and
    ``trainer`` (:class:`robodual_core.training.TrainerConfig`). ``build(model_cfg, action_dim)``: a fresh
    trainable :class:`Generalist`. ``from_checkpoint(path, device)``: a trained one (a run folder, a checkpoint
    folder, or a model folder it ``recognizes``), in eval mode. ``load_runner(path, **options)``: what the
    runtime drives (``predict``, ``predict_batch``, ``actions_to_env``, ``k_g``, ``image_key``; options
    ``device``, ``pooling``, ``latent_dtype``); :class:`robodual_core.runtime.runners.GeneralistModelRunner`
    serves any :class:`Generalist`. ``recognizes(path)``: True for a standalone model folder of this family
    that is not a robodual checkpoint (a merged export); False when it has none. ``merge``: ``merge(run, out)
    -> folder`` writing a standalone model folder (LoRA merged), or ``None`` when the family has none.
    """

    name: str
    merge: Callable[[Path, Path], Path] | None

    def train_config(self, path: Path | None, overrides: list[str], prior: dict[str, Any]) -> Any: ...

    def build(self, cfg: Any, action_dim: int) -> Generalist: ...

    def from_checkpoint(self, path: str | Path, device: Any = "cpu") -> Generalist: ...

    def load_runner(self, path: str | Path, **options: Any) -> Any: ...

    def recognizes(self, path: Path) -> bool: ...


@runtime_checkable
class SpecialistFamily(Protocol):
    """What a ``specialists`` registry entry provides: ``load_runner(checkpoint)`` (a classmethod of the
    specialist's class is one), returning a :class:`robodual_core.runtime.protocols.SpecialistRunner`."""

    def load_runner(self, path: str | Path, **options: Any) -> Any: ...


@runtime_checkable
class TrainableSpecialistFamily(SpecialistFamily, Protocol):
    """A specialist entry that also declares ``build_trainer(dataset, out, **options)``: the
    :class:`robodual_core.training.Trainer` that ``robodual train specialist`` would run (options as its flags),
    for plugins that drive specialist training themselves (``robodual bench generalist`` steps cache-fed and
    online trainers side by side)."""

    def build_trainer(self, dataset: str | Path, out: str | Path, **options: Any) -> Any: ...


class Specialist(ABC):
    """Fast diffusion policy.

    ``loss(batch, cond: GeneralistOutput | None) -> (loss, metrics)``;
    ``sample(batch, cond, steps) -> actions [B, k_s, D]`` in normalized space.
    """

    k_s: int

    @abstractmethod
    def loss(self, batch: dict[str, Any], cond: GeneralistOutput | None) -> tuple[Any, dict[str, float]]: ...

    @abstractmethod
    def sample(self, batch: dict[str, Any], cond: GeneralistOutput | None, steps: int | None = None) -> Any: ...


@dataclass
class EnvSpec:
    """What an environment produces and accepts."""

    observation_keys: dict[str, tuple[tuple[int, ...], str]]  # key -> (shape, dtype)
    action_dim: int
    fps: float
    max_steps: int
    tasks: list[str] = field(default_factory=list)


class Environment(ABC):
    """A closed-loop environment. ``step`` returns (observation, reward, done, info with 'success')."""

    spec: EnvSpec

    @abstractmethod
    def reset(self, task: str | None = None, seed: int | None = None) -> StepObservation: ...

    @abstractmethod
    def step(self, action: np.ndarray) -> tuple[StepObservation, float, bool, dict[str, Any]]: ...

    @abstractmethod
    def success(self) -> bool: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release renderers and simulators."""


@runtime_checkable
class Policy(Protocol):
    """Anything the runtime or an evaluator can drive: local or remote."""

    def reset(self) -> None: ...

    def step(self, observation: dict[str, np.ndarray], instruction: str) -> np.ndarray: ...


class DatasetConverter(ABC):
    """Converts a source dataset (a folder) into a robodual Zarr store."""

    name: str

    @abstractmethod
    def convert(self, src: Path, dst: Path, **options: Any) -> Path: ...
