"""``validate_store``: every problem of a store, as one line each (an empty list means valid).

The checks, cheapest first: the store opens as a robodual store; its structure
(:meth:`ZarrDataset.structure_problems`: attributes, meta arrays, ``episode_ends``, array lengths, shapes,
dtypes, every chunk file on disk; the same checks :func:`open_dataset` runs before a store is used);
statistics entries; with ``full`` (default), every chunk of every array is present and decodes
(:meth:`ZarrDataset.chunk_problems`) and float arrays hold no NaN/Inf (``scan_values``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from robodual_core.data.schema import STAT_FIELDS, STAT_MODALITIES, storage_dtype
from robodual_core.data.schema import stats_order as _stats_order
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


def _stats_match(arr, key: str, entry: dict) -> list[str]:
    """Stored statistics of a low-dim key against the data (exact and streamed: see robodual_core.data.stats); a
    normalizer built from stale or edited statistics would train on wrong numbers without a word."""
    from robodual_core.data.stats import lowdim_stats

    try:
        fresh = lowdim_stats(arr, key)
    except RobodualError as exc:
        return [str(exc)]
    for field in STAT_FIELDS:
        got, want = np.asarray(entry[field], np.float64), np.asarray(fresh[field], np.float64)
        scale = np.maximum(1.0, np.abs(np.asarray(fresh["max"]) - np.asarray(fresh["min"])))
        bad = np.flatnonzero(np.abs(got - want) > 1e-4 * scale + 1e-5 * np.abs(want))
        if bad.size:
            d = int(bad[0])
            return [f"attrs stats['{key}']['{field}'] dim {d} is {got[d]:.6g} but the data give {want[d]:.6g}; expected "
                    "statistics of this store's data (run `robodual dataset stats PATH --recompute`)"]
    return []


def validate_store(path: str | Path, scan_values: bool = True, full: bool = True) -> list[str]:
    """Check a store against the schema; ``full`` decodes every chunk of every array, ``scan_values``
    also checks float arrays for NaN/Inf (both read the whole store)."""
    from robodual_core.data.store import open_dataset

    try:
        ds = open_dataset(path, require_complete=False, check=False)
    except RobodualError as exc:
        return [str(exc)]
    problems: list[str] = []
    if not ds.complete:
        problems.append("attrs 'complete' is not true: the store was not finalized (interrupted write?)")
    structure = ds.structure_problems()
    problems.extend(structure)
    chunks = ds.chunk_problems() if full else []
    problems.extend(p for p in chunks if p not in structure)
    if any(p.startswith(("attrs ", "meta attrs ")) for p in structure):
        return problems  # the checks below read those attributes
    modalities = ds.modalities
    stats = ds.stats
    damaged = {p.split(":", 1)[0].split(" ", 1)[0] for p in problems}
    for key, modality in sorted(modalities.items()):
        if key not in ds.keys:
            continue
        arr = ds.array(key)
        frame, dtype = tuple(arr.shape[1:]), np.dtype(arr.dtype)
        if modality in STAT_MODALITIES and dtype.kind == "f" and storage_dtype(modality, dtype) != dtype:
            problems.append(f"data/{key} ({modality}): expected {storage_dtype(modality, dtype)}; found dtype {dtype}")
        if modality in STAT_MODALITIES or modality == "depth":
            dims = 1 if modality == "depth" else int(np.prod(frame, dtype=np.int64))
            entry = stats.get(key)
            if not isinstance(entry, dict):
                problems.append(f"attrs 'stats' has no entry for '{key}' (run `robodual dataset stats PATH --recompute`)")
            else:
                for field in STAT_FIELDS:
                    values = entry.get(field, [])
                    n = len(values) if isinstance(values, list) else 0
                    if n != dims:
                        problems.append(f"attrs stats['{key}']['{field}'] has {n} values; expected {dims}")
                    elif not all(isinstance(v, (int, float)) and np.isfinite(v) for v in values):
                        problems.append(f"attrs stats['{key}']['{field}'] holds a value that is not a finite number")
                if not any(p.startswith(f"attrs stats['{key}']") for p in problems):
                    problems.extend(_stats_order(key, entry))
                    if (scan_values and full and modality in STAT_MODALITIES and f"data/{key}" not in damaged
                            and not any(p.startswith(f"attrs stats['{key}']") for p in problems)):
                        problems.extend(_stats_match(arr, key, entry))
        if scan_values and full and dtype.kind == "f" and f"data/{key}" not in damaged:
            try:
                _scan_finite(arr, key, problems)
            except RobodualError as exc:
                problems.append(str(exc))
    return problems


def store_notes(path: str | Path) -> list[str]:
    """What a valid verdict does not cover for this store (e.g. it predates ``all_chunks_stored``)."""
    from robodual_core.data.store import open_dataset

    try:
        ds = open_dataset(path, require_complete=False, check=False)
    except RobodualError:
        return []
    if ds.all_chunks_stored:
        return []
    return [f"'{ds.path}' was written before robodual stored every chunk (no attrs 'all_chunks_stored'): a chunk "
            "that is not on disk reads as zeros and cannot be told from lost data; copy it into a new store with "
            "`robodual dataset merge OLD --out NEW` to have every chunk stored and checked"]
