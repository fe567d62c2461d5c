"""LeRobot's statistics, as its v3.0 writer keeps them (``lerobot.datasets.compute_stats``, 0.4.x).

Per episode and feature, ``min``, ``max``, ``mean``, ``std`` (population), ``count`` and the quantiles
``q01``, ``q10``, ``q50``, ``q90``, ``q99``; they go into the episode table as columns
``stats/<feature>/<stat>``. ``meta/stats.json`` aggregates the episodes as LeRobot does
(:func:`aggregate`): min of mins, max of maxes, the count-weighted mean, the pooled std, and each
quantile as the count-weighted mean of the episodes' quantiles (LeRobot's approximation, not the
quantile of all frames).

- numeric features (``timestamp``, ``frame_index``, ``episode_index``, ``index`` and ``task_index``
  included): over the episode's frames, per element, with the feature's shape; ``count`` = frames;
- videos: over frames sampled as LeRobot samples them (:func:`sample_indices`), downsampled as it does
  when a side reaches 300 pixels, per channel in [0, 1] with shape ``[C, 1, 1]``; ``count`` = frames
  sampled.

LeRobot estimates quantiles from 5000-bin histograms; these are numpy's exact quantiles (``linear``),
which its estimate approaches within a bin (``(max - min) / 5000``). Pixel quantiles come exactly from
the 256 counts of each channel.
"""

from __future__ import annotations

from typing import Any

import numpy as np

QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
QUANTILE_KEYS = tuple(f"q{round(q * 100):02d}" for q in QUANTILES)
STAT_KEYS = ("min", "max", "mean", "std", "count", *QUANTILE_KEYS)  # LeRobot's order


def sample_indices(length: int) -> list[int]:
    """The frames of an episode LeRobot computes image statistics on (``estimate_num_samples``)."""
    num = max(min(100, length), min(int(length**0.75), 10_000))
    return np.round(np.linspace(0, length - 1, num)).astype(int).tolist()


def downsample(frames: np.ndarray) -> np.ndarray:
    """``[N, H, W, C]`` thinned as LeRobot's ``auto_downsample_height_width`` (a side of 300 or more)."""
    h, w = frames.shape[1:3]
    if max(h, w) < 300:
        return frames
    step = int(w / 150) if w > h else int(h / 150)
    return frames[:, ::step, ::step]


def numeric_stats(x: np.ndarray, shape: list[int]) -> dict[str, np.ndarray]:
    """Statistics of one episode's values ``[T, *shape]``, each of ``shape``."""
    flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    out = {"min": flat.min(0), "max": flat.max(0), "mean": flat.mean(0), "std": flat.std(0)}
    out = {k: v.reshape(shape) for k, v in out.items()}
    out["count"] = np.array([len(flat)], dtype=np.int64)
    for key, q in zip(QUANTILE_KEYS, np.quantile(flat, QUANTILES, axis=0), strict=True):
        out[key] = q.reshape(shape)
    return {k: out[k] for k in STAT_KEYS}


def quantiles_from_counts(counts: np.ndarray, qs: tuple[float, ...] = QUANTILES) -> np.ndarray:
    """``np.quantile(values, qs)`` (linear) of integer values given as ``counts[v]``."""
    n = int(counts.sum())
    cum = np.cumsum(counts)
    pos = np.asarray(qs, dtype=np.float64) * (n - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    v_lo = np.searchsorted(cum, lo, side="right")  # the value of the lo-th smallest
    v_hi = np.searchsorted(cum, hi, side="right")
    return v_lo + (pos - lo) * (v_hi - v_lo)


def image_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel statistics in [0, 1] (shape ``[C, 1, 1]``) of sampled uint8 frames ``[N, H, W, C]``."""
    frames = downsample(np.asarray(frames))
    channels = frames.shape[-1]
    values = np.arange(256, dtype=np.float64)
    per: dict[str, list[float]] = {k: [] for k in STAT_KEYS if k != "count"}
    for c in range(channels):
        counts = np.bincount(frames[..., c].reshape(-1), minlength=256).astype(np.float64)
        n = counts.sum()
        mean = float((values * counts).sum() / n)
        present = np.flatnonzero(counts)
        per["min"].append(float(present[0]))
        per["max"].append(float(present[-1]))
        per["mean"].append(mean)
        per["std"].append(float(np.sqrt((counts * (values - mean) ** 2).sum() / n)))
        for key, q in zip(QUANTILE_KEYS, quantiles_from_counts(counts), strict=True):
            per[key].append(float(q))
    out = {k: (np.asarray(v) / 255.0).reshape(channels, 1, 1) for k, v in per.items()}
    out["count"] = np.array([len(frames)], dtype=np.int64)
    return {k: out[k] for k in STAT_KEYS}


def aggregate(episodes: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One feature's statistics over episodes, as LeRobot's ``aggregate_feature_stats``."""
    means = np.stack([s["mean"] for s in episodes])
    variances = np.stack([s["std"] ** 2 for s in episodes])
    counts = np.stack([s["count"] for s in episodes]).astype(np.float64)
    total = counts.sum(axis=0)
    while counts.ndim < means.ndim:
        counts = counts[..., None]
    mean = (means * counts).sum(axis=0) / total
    variance = ((variances + (means - mean) ** 2) * counts).sum(axis=0) / total
    out: dict[str, np.ndarray] = {"min": np.min(np.stack([s["min"] for s in episodes]), axis=0),
                                  "max": np.max(np.stack([s["max"] for s in episodes]), axis=0),
                                  "mean": mean, "std": np.sqrt(variance), "count": total.astype(np.int64)}
    for key in QUANTILE_KEYS:
        out[key] = (np.stack([s[key] for s in episodes]) * counts).sum(axis=0) / total
    return out


def to_json(stats: dict[str, np.ndarray]) -> dict[str, Any]:
    """Lists, as LeRobot's ``serialize_dict`` writes them (``count`` as integers)."""
    return {k: np.asarray(v).tolist() for k, v in stats.items()}
