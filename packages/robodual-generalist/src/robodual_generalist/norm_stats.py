"""OpenVLA's action statistics (``config.json`` ``norm_stats``) and the ``unnorm_key`` that picks one dataset's.

An OpenVLA checkpoint records, per training dataset, ``{dataset: {"action": {"q01", "q99", "mask", ...},
"proprio": ...}}``. Its ``predict_action(..., unnorm_key=KEY)`` turns a bin centre ``a`` back into robot units
with that dataset's statistics, leaving the dimensions whose ``mask`` is False (e.g. the gripper) in
normalized units::

    np.where(mask, 0.5 * (a + 1) * (q99 - q01) + q01, a)

With one dataset the key may be left out; with several it must be given; an unknown key is refused. Here
that becomes a :class:`robodual_core.data.Normalizer` (q99 mode with the mask, float64 statistics), so the
runtime unnormalizes exactly as OpenVLA does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from robodual_core.errors import RobodualError

KEY_HINT = "unnorm_key (--unnorm-key)"


def dataset_stats(config: dict[str, Any], where: str | Path) -> dict[str, Any]:
    """``config["norm_stats"]``, checked to be an object of datasets (one line naming ``where`` otherwise)."""
    stats = config.get("norm_stats")
    if not stats:
        raise RobodualError(f"'{where}' has no norm_stats in its config.json; expected OpenVLA's per-dataset action "
                            "statistics ({dataset: {action: {q01, q99, mask}}}) to turn actions into robot units")
    if not isinstance(stats, dict) or not all(isinstance(v, dict) for v in stats.values()):
        raise RobodualError(f"'{where}' config.json norm_stats is not an object of datasets; expected "
                            "{dataset: {action: {q01, q99, mask}}}")
    return stats


def select_unnorm_key(config: dict[str, Any], unnorm_key: str | None, where: str | Path) -> str:
    """The dataset whose statistics unnormalize actions, as OpenVLA's ``_check_unnorm_key`` picks it."""
    stats = dataset_stats(config, where)
    available = ", ".join(sorted(stats))
    if unnorm_key is None:
        if len(stats) != 1:
            raise RobodualError(f"'{where}' holds action statistics of {len(stats)} datasets; choose one with "
                                f"{KEY_HINT}: {available}")
        return next(iter(stats))
    if unnorm_key not in stats:
        raise RobodualError(f"{KEY_HINT} '{unnorm_key}' is not a dataset of the norm_stats of '{where}'; "
                            f"available: {available}")
    return unnorm_key


def action_stats(config: dict[str, Any], unnorm_key: str | None, where: str | Path) -> dict[str, Any]:
    """``norm_stats[key]["action"]`` with its ``q01`` and ``q99`` checked (``mask`` defaults to all True)."""
    key = select_unnorm_key(config, unnorm_key, where)
    action = dataset_stats(config, where)[key].get("action")
    if not isinstance(action, dict) or not all(f in action for f in ("q01", "q99")):
        raise RobodualError(f"'{where}' config.json norm_stats['{key}']['action'] lacks q01/q99; expected "
                            "OpenVLA's action statistics {q01, q99, mask}")
    q01, q99 = np.asarray(action["q01"], dtype=np.float64), np.asarray(action["q99"], dtype=np.float64)
    if q01.ndim != 1 or q01.shape != q99.shape:
        raise RobodualError(f"'{where}' config.json norm_stats['{key}']['action'] q01 and q99 have shapes "
                            f"{list(q01.shape)} and {list(q99.shape)}; expected two lists of one value per dimension")
    return action


def action_dim(config: dict[str, Any], unnorm_key: str | None, where: str | Path) -> int:
    """Dimensions of the actions a stock OpenVLA checkpoint predicts (``len(q01)`` of the chosen dataset, as
    OpenVLA's ``get_action_dim``); without a key, the one dimension all its datasets share."""
    stats = dataset_stats(config, where)
    if unnorm_key is None and len(stats) > 1:
        dims = {len((v.get("action") or {}).get("q01") or []) for v in stats.values()}
        if len(dims) == 1 and 0 not in dims:
            return dims.pop()
    return len(action_stats(config, unnorm_key, where)["q01"])


def openvla_normalizer(config: dict[str, Any], unnorm_key: str | None, where: str | Path) -> Any:
    """The action :class:`~robodual_core.data.Normalizer` of ``norm_stats[unnorm_key]``: q99 bounds with the
    mask, float64 statistics (OpenVLA's arithmetic, bit for bit on float64 inputs)."""
    from robodual_core.data import Normalizer

    action = action_stats(config, unnorm_key, where)
    stats = {"q01": action["q01"], "q99": action["q99"]}
    if action.get("mask") is not None:
        stats["mask"] = action["mask"]
    return Normalizer.from_stats({"action": stats}, {"action": "q99"}, dtype=np.float64)


def norm_stats_of(normalizer: dict[str, Any] | None) -> dict[str, Any] | None:
    """A run's ``normalizer.json`` action entry as OpenVLA's ``{"action": {q01, q99, mask}}`` (its own mask kept;
    all True when it has none), or None when its actions are not q99-normalized."""
    action = (normalizer or {}).get("action")
    if not isinstance(action, dict) or action.get("mode") != "q99":
        return None
    mask = action.get("mask")
    return {"action": {"q01": action["q01"], "q99": action["q99"],
                       "mask": list(mask) if mask is not None else [True] * len(action["q01"])}}
