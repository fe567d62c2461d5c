"""The dual-system runtime: a slow generalist and a fast specialist at their own rates (paper 3.2, App. A).

Models are reached through *runners*, small adapters that plugin packages provide:

- ``GeneralistRunner.predict(observation, instruction) -> GeneralistOutput`` (batch 1, normalized actions),
  ``.actions_to_env(actions [k_g, D]) -> np.ndarray`` (unnormalized), attribute ``k_g``;
- ``SpecialistRunner.predict(observation, instruction, generalist, tau) -> np.ndarray [k_s, D]`` in the
  environment's units, attribute ``k_s``. ``generalist`` is ``None`` for a specialist-only policy.

Policies (all implement :class:`robodual_core.interfaces.Policy`):

- :class:`DualSystemPolicy` -- synchronous (the generalist runs every ``k_g`` control steps, as in the
  paper's CALVIN evaluation) or asynchronous (the generalist runs in a background thread; the
  specialist never waits and conditions on the latest finished chunk, masked by its true age ``tau``);
- :class:`SpecialistOnlyPolicy` and :class:`GeneralistOnlyPolicy` -- baselines behind the same interface.

``latency=LatencyConfig(generalist=L_g, specialist=d)`` makes latency deterministic, counted in control steps
(:mod:`robodual_core.runtime.latency`): the generalist's chunk for step ``t`` is released at ``t + L_g``, the
specialist's chunk for step ``t`` starts executing at ``t + d``.

Temporal aggregation (:class:`TemporalAggregator`) averages the overlapping predictions of the last
``k_s`` chunks for the current step with weights ``w_i = exp(-m i)``; by default ``w_0`` belongs to the
oldest prediction, as the paper states.
"""

from robodual_core.runtime.aggregation import AggregationConfig, TemporalAggregator
from robodual_core.runtime.latency import CommittedPrefix, LatencyConfig, parse_latency
from robodual_core.runtime.loading import (
    checkpoint_kind,
    generalist_for_specialist,
    load_policy,
    recorded_generalist,
)
from robodual_core.runtime.policies import DualSystemPolicy, GeneralistOnlyPolicy, SpecialistOnlyPolicy
from robodual_core.runtime.process import ProcessGeneralist
from robodual_core.runtime.protocols import (
    BatchedGeneralistRunner,
    BatchedSpecialistRunner,
    GeneralistRunner,
    PrefixSpecialistRunner,
    SpecialistRunner,
)
from robodual_core.runtime.rate import measure_rate
from robodual_core.runtime.runners import load_runner

__all__ = [
    "AggregationConfig", "BatchedGeneralistRunner", "CommittedPrefix", "LatencyConfig", "PrefixSpecialistRunner",
    "parse_latency", "BatchedSpecialistRunner", "DualSystemPolicy", "GeneralistOnlyPolicy", "GeneralistRunner", "ProcessGeneralist",
    "SpecialistOnlyPolicy", "SpecialistRunner", "TemporalAggregator", "checkpoint_kind",
    "generalist_for_specialist", "load_policy", "load_runner", "measure_rate", "recorded_generalist",
]
