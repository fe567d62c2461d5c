"""Dataset statistics: min, max, mean, std, q01, q99 per key, streamed over chunks.

Low-dimensional keys (proprio, action, lowdim) are exact and streamed chunk by chunk in three passes,
so memory stays at one chunk plus a histogram however long the dataset is: (1) min, max, mean and std
(Chan's parallel update), (2) a histogram per dimension between min and max, (3) only the values in
the histogram bins that hold the ranks numpy's linear ``np.quantile`` needs. The result equals
``np.quantile(x, q, axis=0)`` up to float rounding. Images are never decoded for these.

Depth keys get scalar statistics (lists of length 1) over an evenly spaced subsample of frames
(``depth_frames``, recorded in ``stats_info``): depth is normalized by dataset statistics, and a few
hundred frames pin its distribution down without decoding the whole dataset.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from robodual_core.data.integrity import CheckedArray
from robodual_core.data.schema import ALL_CHUNKS_ATTR, STAT_MODALITIES
from robodual_core.errors import RobodualError

QUANTILES = (0.01, 0.99)
BINS = 2048


def _blocks(arr: Any, step: int):
    n = arr.shape[0]
    for start in range(0, n, step):
        block = np.asarray(arr[start:min(n, start + step)])
        yield start, block.reshape(block.shape[0], -1).astype(np.float64)


def _check_finite(block: np.ndarray, key: str, start: int) -> None:
    bad = ~np.isfinite(block)
    if bad.any():
        row = int(np.argwhere(bad)[0][0]) + start
        raise RobodualError(f"data/{key} has a NaN or Inf value at step {row}; expected finite values "
                            f"(fix the source data, then convert again)")


def lowdim_stats(arr: Any, key: str = "?", step: int | None = None) -> dict[str, list[float]]:
    """Exact streaming statistics of a zarr (or numpy) array ``[T, ...]``, per flattened dimension."""
    step = step or (arr.chunks[0] if hasattr(arr, "chunks") else 4096)
    n_total = int(arr.shape[0])
    if n_total == 0:
        raise RobodualError(f"data/{key} is empty; expected at least one step to compute statistics")
    count = 0
    mean = m2 = lo = hi = None
    for start, x in _blocks(arr, step):
        _check_finite(x, key, start)
        n_b = x.shape[0]
        mean_b = x.mean(axis=0)
        m2_b = ((x - mean_b) ** 2).sum(axis=0)
        if mean is None:
            mean, m2, lo, hi = mean_b, m2_b, x.min(axis=0), x.max(axis=0)
        else:
            delta = mean_b - mean
            tot = count + n_b
            mean = mean + delta * (n_b / tot)
            m2 = m2 + m2_b + delta**2 * (count * n_b / tot)
            lo, hi = np.minimum(lo, x.min(axis=0)), np.maximum(hi, x.max(axis=0))
        count += n_b
    dims = mean.shape[0]
    width = np.where(hi > lo, hi - lo, 1.0)

    def bins_of(x: np.ndarray) -> np.ndarray:
        return np.clip(((x - lo) / width * BINS).astype(np.int64), 0, BINS - 1)

    counts = np.zeros((dims, BINS), np.int64)
    offsets = np.arange(dims)[None, :] * BINS
    for _, x in _blocks(arr, step):
        counts += np.bincount((bins_of(x) + offsets).ravel(), minlength=dims * BINS).reshape(dims, BINS)
    cum = np.cumsum(counts, axis=1)

    # ranks needed by numpy's "linear" quantile: floor and ceil of q * (n - 1)
    wanted: dict[tuple[int, int], list[int]] = {}  # (dim, bin) -> ranks
    for q in QUANTILES:
        r = q * (count - 1)
        for k in {int(np.floor(r)), int(np.ceil(r))}:
            for d in range(dims):
                b = int(np.searchsorted(cum[d], k, side="right"))
                wanted.setdefault((d, b), []).append(k)
    found: dict[tuple[int, int], list[np.ndarray]] = {key_: [] for key_ in wanted}
    for _, x in _blocks(arr, step):
        b = bins_of(x)
        for d, bin_ in wanted:
            found[(d, bin_)].append(x[b[:, d] == bin_, d])
    order_stat: dict[tuple[int, int], float] = {}
    for (d, bin_), ranks in wanted.items():
        values = np.sort(np.concatenate(found[(d, bin_)]))
        before = int(cum[d, bin_ - 1]) if bin_ > 0 else 0
        for k in ranks:
            order_stat[(d, k)] = float(values[k - before])
    quant = {}
    for q in QUANTILES:
        r = q * (count - 1)
        k0, k1 = int(np.floor(r)), int(np.ceil(r))
        t = r - k0
        quant[q] = [order_stat[(d, k0)] + (order_stat[(d, k1)] - order_stat[(d, k0)]) * t for d in range(dims)]
    return {
        "min": lo.tolist(),
        "max": hi.tolist(),
        "mean": mean.tolist(),
        "std": np.sqrt(m2 / count).tolist(),
        "q01": quant[0.01],
        "q99": quant[0.99],
    }


def depth_stats(arr: Any, key: str = "?", max_frames: int = 256) -> tuple[dict[str, list[float]], int]:
    """Scalar statistics of a depth array ``[T, H, W(, 1)]`` over evenly spaced frames."""
    n = int(arr.shape[0])
    if n == 0:
        raise RobodualError(f"data/{key} is empty; expected at least one frame to compute statistics")
    idx = np.unique(np.linspace(0, n - 1, min(n, max_frames)).round().astype(np.int64))
    x = np.stack([np.asarray(arr[int(i)], dtype=np.float32).ravel() for i in idx]).ravel()
    bad = ~np.isfinite(x)
    if bad.any():
        raise RobodualError(f"data/{key} has NaN or Inf depth values in the sampled frames; expected finite depth "
                            "(replace invalid depth with 0 or the sensor's far plane before converting)")
    x64 = x.astype(np.float64)
    q01, q99 = np.quantile(x, QUANTILES)
    stats = {"min": [float(x.min())], "max": [float(x.max())], "mean": [float(x64.mean())],
             "std": [float(x64.std())], "q01": [float(q01)], "q99": [float(q99)]}
    return stats, len(idx)


def compute_stats(root: Any, modalities: dict[str, str], depth_frames: int = 256,
                  progress: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Statistics of every low-dim and depth key of a store's ``data`` group, and how they were computed.

    ``progress`` is an optional callable ``progress(key)`` called before each key.
    """
    stats: dict[str, Any] = {}
    info: dict[str, Any] = {"quantiles": "exact (numpy linear)", "depth_frames": {}}
    for key, modality in sorted(modalities.items()):
        if key not in root["data"]:
            continue
        if progress is not None:
            progress(key)
        # a missing or damaged chunk must not count as zeros
        arr = CheckedArray(root["data"][key], f"data/{key}", strict=root.attrs.get(ALL_CHUNKS_ATTR, False) is True,
                           store=getattr(getattr(root, "store", None), "root", None))
        if modality in STAT_MODALITIES:
            stats[key] = lowdim_stats(arr, key)
        elif modality == "depth":
            stats[key], used = depth_stats(arr, key, depth_frames)
            info["depth_frames"][key] = used
    return stats, info
