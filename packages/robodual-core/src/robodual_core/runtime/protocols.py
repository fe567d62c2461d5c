"""What the runtime needs of the runners that plugin packages provide."""

from __future__ import annotations

from typing import Any, Protocol

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
