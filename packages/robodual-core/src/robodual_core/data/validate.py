"""``validate_store``: every problem of a store, as one line each (an empty list means valid)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from robodual_core.data.schema import (
    MODALITIES,
    STAT_FIELDS,
    STAT_MODALITIES,
    dtype_ok,
    frame_shape_ok,
    storage_dtype,
)
from robodual_core.errors import RobodualError


def _scan_finite(arr, key: str, problems: list[str]) -> None:
    step = max(1, int(arr.shards[0] if arr.shards else arr.chunks[0]))
    for start in range(0, arr.shape[0], step):
        block = np.asarray(arr[start:start + step])
        bad = ~np.isfinite(block.reshape(block.shape[0], -1))
        if bad.any():
            rows = np.unique(np.argwhere(bad)[:, 0]) + start
            problems.append(f"data/{key}: NaN or Inf at step(s) {rows[:5].tolist()}{' ...' if len(rows) > 5 else ''}")
            return


def validate_store(path: str | Path, scan_values: bool = True) -> list[str]:
    """Check a store against the schema; ``scan_values`` also reads every float array for NaN/Inf."""
    from robodual_core.data.store import open_dataset

    try:
        ds = open_dataset(path, require_complete=False)
    except RobodualError as exc:
        return [str(exc)]
    problems: list[str] = []
    if not ds.complete:
        problems.append("attrs 'complete' is not true: the store was not finalized (interrupted write?)")
    ends = ds.episode_ends
    if ends.size and (ends[0] <= 0 or np.any(np.diff(ends) <= 0)):
        bad = int(np.argmax(np.diff(np.concatenate([[0], ends])) <= 0))
        problems.append(f"meta/episode_ends is not strictly increasing from > 0 (first bad episode {bad}: "
                        f"{ends[max(0, bad - 1):bad + 1].tolist()})")
    if ends.size == 0:
        problems.append("meta/episode_ends is empty: the store has no episodes")
    meta = ds.root["meta"]
    for name in ("instruction", "task"):
        index = np.asarray(meta[f"{name}_index"][:])
        vocab = meta.attrs.get(f"{name}s", [])
        if index.shape[0] != ds.num_episodes:
            problems.append(f"meta/{name}_index has {index.shape[0]} entries but there are {ds.num_episodes} episodes")
        if index.size and (index.min() < 0 or index.max() >= len(vocab)):
            problems.append(f"meta/{name}_index has values outside meta attrs '{name}s' (length {len(vocab)})")
    modalities = ds.modalities
    for key in ds.keys:
        if key not in modalities:
            problems.append(f"data/{key} has no entry in attrs 'modalities'")
    stats = ds.stats
    for key, modality in sorted(modalities.items()):
        if modality not in MODALITIES:
            problems.append(f"attrs 'modalities' gives key '{key}' the unknown modality '{modality}'")
            continue
        if key not in ds.keys:
            problems.append(f"attrs 'modalities' lists '{key}' but there is no data/{key} array")
            continue
        arr = ds.array(key)
        if arr.shape[0] != ds.num_steps:
            problems.append(f"data/{key} has {arr.shape[0]} steps but meta/episode_ends ends at {ds.num_steps}")
        frame, dtype = tuple(arr.shape[1:]), np.dtype(arr.dtype)
        problem = frame_shape_ok(modality, frame) or dtype_ok(modality, dtype)
        if problem is None and storage_dtype(modality, dtype) != dtype:
            problem = str(storage_dtype(modality, dtype))
        if problem:
            problems.append(f"data/{key} ({modality}): expected {problem}; found per-step shape {frame}, dtype {dtype}")
        if modality in STAT_MODALITIES or modality == "depth":
            dims = 1 if modality == "depth" else int(np.prod(frame, dtype=np.int64))
            entry = stats.get(key)
            if entry is None:
                problems.append(f"attrs 'stats' has no entry for '{key}' (run `robodual dataset stats PATH --recompute`)")
            else:
                for field in STAT_FIELDS:
                    if len(entry.get(field, [])) != dims:
                        problems.append(f"attrs stats['{key}']['{field}'] has {len(entry.get(field, []))} values; "
                                        f"expected {dims}")
        if scan_values and dtype.kind == "f":
            _scan_finite(arr, key, problems)
    return problems
