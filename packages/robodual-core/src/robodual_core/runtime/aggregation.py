"""Temporal aggregation of overlapping action chunks (paper App. A)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from robodual_core.errors import RobodualError


@dataclass
class AggregationConfig:
    enabled: bool = True
    m: float = 0.1
    oldest_first: bool = True  # w_0 for the oldest prediction (paper App. A)
    binarize_gripper: bool = True
    gripper_dims: tuple[int, ...] = (-1,)
    gripper_threshold: float = 0.0


class TemporalAggregator:
    """Weighted average of the predictions that overlapping action chunks make for the current step."""

    def __init__(self, cfg: AggregationConfig | None = None):
        self.cfg = cfg or AggregationConfig()
        self.chunks: deque[tuple[int, np.ndarray]] = deque()
        self.added = 0  # chunks ever added (not reset): a step that adds one switches to it (runtime.motion)

    def reset(self) -> None:
        self.chunks.clear()

    def add(self, t: int, chunk: np.ndarray) -> None:
        """Record a chunk ``[k, D]`` predicted at step ``t`` (its row 0 is the action for step ``t``)."""
        self.chunks.append((t, np.asarray(chunk, dtype=np.float64)))
        self.added += 1
        if not self.cfg.enabled:
            while len(self.chunks) > 1:
                self.chunks.popleft()

    def action(self, t: int) -> np.ndarray:
        """The action for step ``t``; chunks that no longer cover ``t`` are dropped."""
        while self.chunks and t - self.chunks[0][0] >= len(self.chunks[0][1]):
            self.chunks.popleft()
        preds = [chunk[t - t0] for t0, chunk in self.chunks if 0 <= t - t0 < len(chunk)]  # oldest first
        if not preds:
            raise RobodualError(f"no action chunk covers control step {t}; the policy fell behind")
        return self._combine(preds)

    def peek(self, t: int) -> np.ndarray | None:
        """What :meth:`action` would return for step ``t`` (now or later) with the chunks held now, without
        dropping any; None when none covers ``t``."""
        preds = [chunk[t - t0] for t0, chunk in self.chunks if 0 <= t - t0 < len(chunk)]
        return self._combine(preds) if preds else None

    def hold(self) -> np.ndarray | None:
        """The newest chunk's last action: what the runtime repeats on a step no chunk covers (under latency)."""
        return self._combine([self.chunks[-1][1][-1]]) if self.chunks else None

    def _combine(self, preds: list[np.ndarray]) -> np.ndarray:
        if self.cfg.enabled:
            idx = np.arange(len(preds)) if self.cfg.oldest_first else np.arange(len(preds))[::-1]
            w = np.exp(-self.cfg.m * idx)
            action = (np.stack(preds) * (w / w.sum())[:, None]).sum(0)
        else:
            action = preds[-1].copy()
        if self.cfg.binarize_gripper:
            for d in self.cfg.gripper_dims:
                action[d] = 1.0 if action[d] > self.cfg.gripper_threshold else -1.0
        return action.astype(np.float32)
