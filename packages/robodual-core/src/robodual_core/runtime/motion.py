"""How smooth an executed action sequence is, around chunk switches and inside chunks (latency studies).

``switches[t]`` marks the steps whose action came from a chunk first used at that step (a chunk the runtime had
just added; :attr:`TemporalAggregator.added` counts them). The *discontinuity* at a switch is the mean absolute
change ``|a_t - a_{t-1}|`` (over the position dimensions) at those steps, compared with the same at the other steps
(within a chunk): naive switching between chunks planned ``d`` steps apart jumps there; real-time chunking should
not. *Jerk* is the mean absolute second difference ``|a_t - 2 a_{t-1} + a_{t-2}|``: Meta-World's and CALVIN's
actions are end-effector displacements per step (a velocity), so their second difference is the jerk up to a
factor ``1 / dt^2``. The gripper (the last dimension, a graded effort or +-1) is left out by default.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def motion_metrics(actions: Any, switches: Any, position_dims: int | None = -1) -> dict[str, Any]:
    """``actions [T, D]``, ``switches [T]`` bool -> ``{"switch_jump", "within_jump", "jerk", "switches"}`` (None
    where no step qualifies). ``position_dims``: how many leading dimensions count (-1: all but the last)."""
    a = np.asarray(actions, dtype=np.float64)
    if a.ndim != 2 or len(a) == 0:
        return {"switch_jump": None, "within_jump": None, "jerk": None, "switches": 0}
    if position_dims is not None and a.shape[1] > 1:
        a = a[:, :position_dims]
    s = np.asarray(switches, dtype=bool)[: len(a)]
    jump = np.abs(np.diff(a, axis=0)).mean(axis=1)  # step t (t >= 1)
    at_switch = s[1:]
    jerk = np.abs(np.diff(a, n=2, axis=0)).mean(axis=1) if len(a) >= 3 else np.zeros(0)

    def mean(x: np.ndarray) -> float | None:
        return float(x.mean()) if x.size else None

    return {"switch_jump": mean(jump[at_switch]), "within_jump": mean(jump[~at_switch]), "jerk": mean(jerk),
            "switches": int(s.sum())}


def summarize_motion(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    """Episode means of :func:`motion_metrics` (episodes without a value left out) and their ratio."""
    out: dict[str, Any] = {}
    for key in ("switch_jump", "within_jump", "jerk"):
        values = [e["motion"][key] for e in episodes if e.get("motion") and e["motion"].get(key) is not None]
        out[key] = float(np.mean(values)) if values else None
    out["switches_per_episode"] = (float(np.mean([e["motion"]["switches"] for e in episodes if e.get("motion")]))
                                   if any(e.get("motion") for e in episodes) else None)
    sj, wj = out["switch_jump"], out["within_jump"]
    out["switch_over_within"] = sj / wj if sj is not None and wj else None
    return out
