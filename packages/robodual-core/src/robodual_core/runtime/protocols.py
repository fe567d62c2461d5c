"""What the runtime needs of the runners that plugin packages provide."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from robodual_core.interfaces import GeneralistOutput


class GeneralistRunner(Protocol):
    k_g: int

    def predict(self, observation: dict[str, np.ndarray], instruction: str) -> GeneralistOutput: ...

    def actions_to_env(self, actions: Any) -> np.ndarray: ...


class SpecialistRunner(Protocol):
    """``predict`` runs the specialist on one step's observation; a runner that keeps history frames may also
    have ``observe(observation)``, which the policies call on the steps they skip ``predict``."""

    k_s: int

    def predict(self, observation: dict[str, np.ndarray], instruction: str, generalist: GeneralistOutput | None,
                tau: int) -> np.ndarray: ...


@runtime_checkable
class BatchedGeneralistRunner(Protocol):
    """A generalist runner whose calls lockstep sessions can batch (:mod:`robodual_core.runtime.lockstep`):
    ``predict_batch(images [B, H, W, 3] uint8, instructions)`` returns B rows of outputs; ``image_key`` names the
    observation key of the images."""

    image_key: str

    def predict_batch(self, images: np.ndarray, instructions: list[str]) -> GeneralistOutput: ...


@runtime_checkable
class BatchedSpecialistRunner(Protocol):
    """A specialist runner whose calls lockstep sessions can batch: ``prepare`` turns one session's step into a
    model input (recording its history frames), ``predict_prepared`` runs any number of them, from sessions of
    the same model, as one batch, each with its initial noise of ``noise_shape``."""

    noise_shape: tuple[int, ...]

    def prepare(self, observation: dict[str, np.ndarray], instruction: str, generalist: GeneralistOutput | None,
                tau: int) -> Any: ...

    def predict_prepared(self, prepared: list[Any], noise: list[Any] | None = None) -> list[np.ndarray]: ...


@runtime_checkable
class PrefixSpecialistRunner(Protocol):
    """A specialist runner that can take the committed prefix (real-time chunking): ``predict`` and ``prepare``
    accept ``prefix=`` (a :class:`robodual_core.runtime.latency.CommittedPrefix`); ``wants_prefix`` says whether
    its model uses it (the policies pass it only then)."""

    wants_prefix: bool
