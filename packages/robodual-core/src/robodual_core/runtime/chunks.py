"""Action chunks on request, for a robot that executes them itself (``robodual serve``'s ``chunk`` messages and
:class:`robodual_client.chunks.ChunkExecutor`).

A :class:`ChunkSession` wraps one robot's policy session. The robot's clock is the number of actions it reports
executed (``executed`` of each request), so the generalist's schedule and the shifted window's age ``tau`` follow
the robot, not the server: the dual system's generalist runs when ``generalist_every`` robot steps have passed
since the observation of its last chunk, and the specialist conditions on that chunk with ``tau`` = steps since.
The specialist receives the committed prefix (what the robot will execute while this chunk is computed) when it
does real-time chunking (:class:`~robodual_core.runtime.protocols.PrefixSpecialistRunner`); the chunk comes back
whole, row ``i`` for ``i`` steps after the observation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from robodual_core.errors import RobodualError
from robodual_core.runtime.latency import CommittedPrefix, wants_prefix
from robodual_core.runtime.policies import DualSystemPolicy, GeneralistOnlyPolicy, SpecialistOnlyPolicy


class ChunkSession:
    def __init__(self, policy: Any):
        if not isinstance(policy, DualSystemPolicy | SpecialistOnlyPolicy | GeneralistOnlyPolicy):
            raise RobodualError(f"this policy ({type(policy).__name__}) serves single actions only; chunk requests "
                                "need a robodual dual-system, specialist-only or generalist-only policy")
        self.policy = policy
        self.reset()

    def reset(self) -> None:
        self.t = 0  # robot steps executed (reported) in this episode
        self.generalist_chunk: tuple[int, Any] | None = None  # (robot step of its observation, GeneralistOutput)
        self.requests = 0

    def chunk(self, observation: dict[str, np.ndarray], instruction: str, executed: np.ndarray, prefix: np.ndarray,
              delay: int) -> np.ndarray:
        """The chunk ``[k, D]`` (environment units) for ``observation``, taken after the robot executed ``executed``
        since its previous request; ``prefix [p, D]``: what it executes next, the first ``delay`` rows committed."""
        self.t += len(executed)
        self.requests += 1
        policy = self.policy
        if isinstance(policy, GeneralistOnlyPolicy):
            return np.asarray(policy.generalist.actions_to_env(policy.generalist.predict(observation, instruction)
                                                               .actions[0]), dtype=np.float32)
        generalist, tau = None, 0
        if isinstance(policy, DualSystemPolicy):
            last = self.generalist_chunk
            if last is None or self.t - last[0] >= policy.generalist_every:
                self.generalist_chunk = (self.t, policy.generalist.predict(observation, instruction))
                policy.stats["generalist_calls"] += 1
            assert self.generalist_chunk is not None
            generalist = self.generalist_chunk[1]
            tau = min(self.t - self.generalist_chunk[0], policy.k_g - 1)
        specialist = policy.specialist
        kwargs = {"prefix": CommittedPrefix(prefix, delay)} if wants_prefix(specialist) else {}
        return np.asarray(specialist.predict(observation, instruction, generalist, tau, **kwargs), dtype=np.float32)
