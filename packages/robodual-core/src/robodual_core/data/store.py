"""Reading a robodual Zarr store: :func:`open_dataset` -> :class:`ZarrDataset` (read-only)."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from robodual_core.config import memory_bytes
from robodual_core.data.schema import (
    ALL_CHUNKS_ATTR,
    MODALITIES,
    PARTIAL_SUFFIX,
    SCHEMA_VERSION,
    dtype_ok,
    frame_shape_ok,
)
from robodual_core.errors import RobodualError

NON_OBSERVATION_KEYS = frozenset({"action", "actions", "rel_actions", "scene_obs"})


class ZarrDataset:
    """A read-only view of a store. Arrays are zarr arrays; metadata is read once."""

    def __init__(self, path: Path, root: Any):
        self.path = path
        self.root = root

    # -- metadata --------------------------------------------------------------------------------
    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.root.attrs)

    @property
    def schema_version(self) -> int:
        return int(self.root.attrs.get("schema_version", 0))

    @property
    def complete(self) -> bool:
        return self.root.attrs.get("complete", False) is True

    @property
    def all_chunks_stored(self) -> bool:
        """Whether the writer stored every chunk (attrs ``all_chunks_stored``): then a chunk that is not on
        disk is lost data and reads refuse it; in older stores it may be an all-zero chunk zarr skipped."""
        return self.root.attrs.get(ALL_CHUNKS_ATTR, False) is True

    @property
    def fps(self) -> float:
        return float(self.root.attrs.get("fps", 0.0))

    @property
    def modalities(self) -> dict[str, str]:
        return dict(self.root.attrs.get("modalities", {}))

    @property
    def action_space(self) -> dict[str, Any]:
        return dict(self.root.attrs.get("action_space", {}))

    @property
    def stats(self) -> dict[str, Any]:
        return dict(self.root.attrs.get("stats", {}))

    @property
    def keys(self) -> list[str]:
        return sorted(self.root["data"].array_keys()) if "data" in self.root else []

    @cached_property
    def episode_ends(self) -> np.ndarray:
        return np.asarray(self.meta_array("episode_ends")[:], dtype=np.int64).reshape(-1)

    @property
    def episode_starts(self) -> np.ndarray:
        ends = self.episode_ends
        return np.concatenate([[0], ends[:-1]]).astype(np.int64)

    @property
    def num_episodes(self) -> int:
        return int(self.episode_ends.shape[0])

    @property
    def num_steps(self) -> int:
        return int(self.episode_ends[-1]) if self.num_episodes else 0

    def _strings(self, name: str) -> list[str]:
        vocab = list(self.root["meta"].attrs.get(f"{name}s", []))
        index = np.asarray(self.meta_array(f"{name}_index")[:], dtype=np.int64)
        return [vocab[i] for i in index[: self.num_episodes]]

    @cached_property
    def instructions(self) -> list[str]:
        """One instruction per episode."""
        return self._strings("instruction")

    def step_instructions(self) -> list[str] | None:
        """Each step's instruction when the store keeps them per step (``meta/step_instruction_index``: episodes
        whose frames carry several instructions), else None; a damaged array is refused naming it."""
        from robodual_core.data.schema import STEP_INSTRUCTIONS

        if STEP_INSTRUCTIONS not in self.root["meta"]:
            return None
        vocab = list(self.root["meta"].attrs.get("instructions", []))
        index = np.asarray(self.meta_array(STEP_INSTRUCTIONS)[:], dtype=np.int64).reshape(-1)
        where = f"'{self.path}': meta/{STEP_INSTRUCTIONS}"
        if index.shape[0] != self.num_steps:
            raise RobodualError(f"{where} has {index.shape[0]} entries; expected one per step ({self.num_steps}, "
                                "meta/episode_ends)")
        if index.size and (index.min() < 0 or index.max() >= len(vocab)):
            raise RobodualError(f"{where} has values {int(index.min())}..{int(index.max())}; expected indices into "
                                f"meta attrs 'instructions' (0..{len(vocab) - 1})")
        return [vocab[i] for i in index]

    def instruction_per_step(self) -> list[str]:
        """The instruction of every step: per step where the store keeps them, else each episode's."""
        per_step = self.step_instructions()
        if per_step is not None:
            return per_step
        lengths = (self.episode_ends - self.episode_starts).astype(np.int64)
        return [s for s, n in zip(self.instructions, lengths, strict=True) for _ in range(int(n))]

    @cached_property
    def tasks(self) -> list[str]:
        """One task id per episode."""
        return self._strings("task")

    # -- data ------------------------------------------------------------------------------------
    def array(self, key: str) -> Any:
        """The array ``data/<key>`` ``[T_total, ...]``: a zarr array whose reads refuse missing or damaged
        chunks (:class:`~robodual_core.data.integrity.CheckedArray`)."""
        from robodual_core.data.integrity import CheckedArray

        if key not in self.keys:
            raise RobodualError(f"dataset '{self.path}' has no key '{key}'; keys: {', '.join(self.keys) or '(none)'}")
        return CheckedArray(self.root["data"][key], f"data/{key}", strict=self.all_chunks_stored,
                            store=self.path)

    def meta_array(self, name: str) -> Any:
        """The array ``meta/<name>``, read like :meth:`array`."""
        from robodual_core.data.integrity import CheckedArray

        return CheckedArray(self.root[f"meta/{name}"], f"meta/{name}", strict=self.all_chunks_stored,
                            store=self.path)

    # -- checks ----------------------------------------------------------------------------------
    def structure_problems(self) -> list[str]:
        """Problems found without decoding data (one line each): attribute types, meta arrays (present,
        every chunk on disk, ``episode_ends`` strictly increasing, indices in range), data arrays (one per
        modality, lengths equal to ``episode_ends[-1]``, shapes and dtypes, every chunk file on disk)."""
        return structure_problems(self)

    def chunk_problems(self, limit: int = 5) -> list[str]:
        """The full scan: every chunk of every array present, whole and decodable (reads the whole store)."""
        from robodual_core.data.integrity import scan_array

        problems: list[str] = []
        for name, node in sorted(self.root.members(max_depth=None), key=lambda m: m[0]):
            if not hasattr(node, "dtype"):
                continue
            strict = self.all_chunks_stored and name.startswith(("data/", "meta/"))
            problems.extend(scan_array(node, name, strict=strict, limit=limit))
        return problems

    def episode_bounds(self, episode: int) -> tuple[int, int]:
        """``(start, end)`` global steps of one episode (end exclusive)."""
        if not 0 <= episode < self.num_episodes:
            raise RobodualError(f"episode {episode} is out of range; dataset '{self.path}' has "
                                f"{self.num_episodes} episodes (0..{self.num_episodes - 1})")
        return int(self.episode_starts[episode]), int(self.episode_ends[episode])

    def episode(self, episode: int, keys: list[str] | None = None) -> dict[str, np.ndarray]:
        """All steps of one episode as numpy arrays."""
        start, end = self.episode_bounds(episode)
        return {k: np.asarray(self.array(k)[start:end]) for k in (keys or self.keys)}

    def __repr__(self) -> str:
        return (f"ZarrDataset('{self.path}', episodes={self.num_episodes}, steps={self.num_steps}, "
                f"keys={self.keys})")


def _attr_problems(attrs: dict[str, Any], meta_attrs: dict[str, Any]) -> list[str]:
    problems = []
    fps = attrs.get("fps", 0.0)
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not np.isfinite(fps) or fps < 0:
        problems.append(f"attrs 'fps' is {fps!r}; expected a number >= 0 (steps per second)")
    for name in ("complete", ALL_CHUNKS_ATTR):
        if not isinstance(attrs.get(name, False), bool):
            problems.append(f"attrs '{name}' is {attrs.get(name)!r}; expected true or false")
    modalities = attrs.get("modalities", {})
    if not isinstance(modalities, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in modalities.items()):
        problems.append(f"attrs 'modalities' is {str(modalities)[:80]!r}; expected an object {{key: modality}}")
    else:
        for key, modality in sorted(modalities.items()):
            if modality not in MODALITIES:
                problems.append(f"attrs 'modalities' gives key '{key}' the unknown modality '{modality}'; expected "
                                f"one of {', '.join(MODALITIES)}")
    for name in ("action_space", "stats"):
        if not isinstance(attrs.get(name, {}), dict):
            problems.append(f"attrs '{name}' is {str(attrs.get(name))[:80]!r}; expected an object")
    for name in ("instructions", "tasks"):
        vocab = meta_attrs.get(name, [])
        if not isinstance(vocab, list) or not all(isinstance(v, str) for v in vocab):
            problems.append(f"meta attrs '{name}' is {str(vocab)[:80]!r}; expected a list of strings")
    return problems


MAX_STEP_BYTES = 1 << 30  # one step of one key (a 4K RGB frame is 25 MB): beyond, a shape is not believed


def _declared_bytes(shape: Any, dtype: Any) -> int:
    n = np.dtype(dtype).itemsize
    for s in shape:
        n *= int(s)
    return n


def structure_problems(ds: ZarrDataset) -> list[str]:
    """See :meth:`ZarrDataset.structure_problems`."""
    from robodual_core.data.integrity import missing_files

    root = ds.root
    meta = root["meta"]
    problems = _attr_problems(dict(root.attrs), dict(meta.attrs))
    if problems:
        return problems  # the rest reads these attributes
    usable = {}
    for name in ("episode_ends", "instruction_index", "task_index"):
        arr = root[f"meta/{name}"]
        if not hasattr(arr, "dtype") or len(arr.shape) != 1 or np.dtype(arr.dtype).kind not in "iu":
            problems.append(f"meta/{name} has shape {getattr(arr, 'shape', '?')} and dtype "
                            f"{getattr(arr, 'dtype', '?')}; expected a 1-D integer array")
            usable[name] = False
            continue
        missing = missing_files(arr, f"meta/{name}", strict=ds.all_chunks_stored)
        if not missing and _declared_bytes(arr.shape, arr.dtype) > memory_bytes() // 4:  # read whole when opened
            missing = [f"meta/{name} declares {arr.shape[0]} entries, more than this machine can read; expected "
                       "one per episode (a damaged or hostile zarr.json)"]
        problems.extend(missing)
        usable[name] = not missing
    if not usable["episode_ends"]:
        return problems
    try:
        ends = ds.episode_ends
    except RobodualError as exc:  # a chunk that does not decode
        return [*problems, str(exc)]
    if ends.size == 0:
        problems.append("meta/episode_ends is empty: the store has no episodes")
    elif ends[0] <= 0 or np.any(np.diff(ends) <= 0):
        bad = int(np.argmax(np.diff(np.concatenate([[0], ends])) <= 0))
        problems.append(f"meta/episode_ends is not strictly increasing from > 0 (first bad episode {bad}: "
                        f"{ends[max(0, bad - 1):bad + 1].tolist()}); expected cumulative episode ends")
    num_steps = int(ends[-1]) if ends.size else 0
    for name in ("instruction", "task"):
        vocab = meta.attrs.get(f"{name}s", [])
        arr = root[f"meta/{name}_index"]
        if hasattr(arr, "shape") and arr.shape and arr.shape[0] != ends.size:
            problems.append(f"meta/{name}_index has {arr.shape[0]} entries but there are {ends.size} episodes "
                            "(meta/episode_ends); expected one per episode")
        if not usable[f"{name}_index"]:
            continue
        try:
            index = np.asarray(ds.meta_array(f"{name}_index")[:])
        except RobodualError as exc:
            problems.append(str(exc))
            continue
        if index.size and (index.min() < 0 or index.max() >= len(vocab)):
            problems.append(f"meta/{name}_index has values {int(index.min())}..{int(index.max())} outside meta attrs "
                            f"'{name}s' (0..{len(vocab) - 1})")
    modalities = dict(root.attrs.get("modalities", {}))
    keys = ds.keys
    for key in keys:
        if key not in modalities:
            problems.append(f"data/{key} has no entry in attrs 'modalities'")
    for key, modality in sorted(modalities.items()):
        if key not in keys:
            problems.append(f"attrs 'modalities' lists '{key}' but there is no data/{key} array")
            continue
        arr = root["data"][key]
        if not arr.shape or arr.shape[0] != num_steps:
            problems.append(f"data/{key} has {arr.shape[0] if arr.shape else 0} steps but meta/episode_ends ends at "
                            f"{num_steps}; expected equal lengths")
        frame, dtype = tuple(arr.shape[1:]), np.dtype(arr.dtype)
        problem = frame_shape_ok(modality, frame) or dtype_ok(modality, dtype)
        if problem:
            problems.append(f"data/{key} ({modality}): expected {problem}; found per-step shape {frame}, dtype {dtype}")
        elif _declared_bytes(frame, dtype) > MAX_STEP_BYTES:
            problems.append(f"data/{key} ({modality}) declares {_declared_bytes(frame, dtype)} bytes per step (shape "
                            f"{list(frame)}); expected at most {MAX_STEP_BYTES} (a damaged or hostile zarr.json)")
            continue  # its chunks are not visited either
        elif key == "action" and isinstance(ds.action_space.get("dim"), int) and not isinstance(
                ds.action_space.get("dim"), bool) and int(np.prod(frame, dtype=np.int64)) != ds.action_space["dim"]:
            problems.append(f"data/{key} has {int(np.prod(frame, dtype=np.int64))} values per step but attrs "
                            f"'action_space' says dim {ds.action_space['dim']}; expected them to agree")
        problems.extend(missing_files(arr, f"data/{key}", strict=ds.all_chunks_stored))
    return problems


def refuse_untrainable(ds: ZarrDataset, modes: dict[str, str]) -> None:
    """Refuse (one line) to train on a store whose numbers would be wrong without a word:

    - a store written before ``all_chunks_stored`` with a chunk that is not on disk: zarr would serve it as zeros,
      and such a store cannot tell lost data from an all-zero chunk it skipped;
    - a key normalized by ``q99`` with a dimension whose q01 equals its q99 while its values vary (min < max):
      every value of that dimension would map to one end of [-1, 1] and every output back to q01.
    """
    from robodual_core.data.integrity import missing_files

    if not ds.all_chunks_stored:
        for name in sorted(f"data/{k}" for k in ds.keys):
            lost = missing_files(ds.root[name], name, limit=1, strict=True)
            if lost:
                raise RobodualError(f"dataset '{ds.path}' was written before robodual stored every chunk (no attrs "
                                    f"'{ALL_CHUNKS_ATTR}') and {lost[0]}: lost data cannot be told from an all-zero "
                                    "chunk; if it is meant to be zeros, copy the store with `robodual dataset merge "
                                    "OLD --out NEW` (the copy stores every chunk) and train on the copy")
    from robodual_core.data.schema import stats_order as _stats_order

    for key, mode in sorted(modes.items()):
        entry = ds.stats.get(key)
        if mode == "none" or not isinstance(entry, dict):
            continue
        try:
            lo, hi, q01, q99, std = (np.asarray(entry[f], dtype=np.float64).reshape(-1)
                                     for f in ("min", "max", "q01", "q99", "std"))
            order = _stats_order(key, entry)
        except (KeyError, TypeError, ValueError, IndexError):
            continue  # the normalizer names missing fields
        if order:  # statistics no data can have (min = max while q01 < q99 maps every value to 0 in min_max)
            raise RobodualError(f"dataset '{ds.path}': {order[0]}")
        # no data has a std above half its range (min = max with std > 0: min_max would map every value to 0), nor a
        # zero std over a range
        tol = 1e-6 * np.maximum(1.0, np.maximum(np.abs(lo), np.abs(hi)))
        torn = np.flatnonzero((std > (hi - lo) / 2 + tol) | ((std == 0) & (hi > lo)))
        if torn.size:
            d = int(torn[0])
            raise RobodualError(f"dataset '{ds.path}': statistics of '{key}' dim {d} say its values both vary and do "
                                f"not (min {lo[d]:.6g}, max {hi[d]:.6g}, std {std[d]:.6g}); expected statistics of "
                                "the data (`robodual dataset stats PATH --recompute`)")
        if mode != "q99":
            continue
        collapsed = np.flatnonzero((q99 - q01 <= 1e-8) & (hi - lo > 1e-8))
        if collapsed.size:
            d = int(collapsed[0])
            raise RobodualError(f"dataset '{ds.path}': statistics of '{key}' dim {d} have q01 = q99 = {q01[d]:.6g} "
                                f"while its values span [{lo[d]:.6g}, {hi[d]:.6g}]: q99 normalization would map that "
                                f"dimension to one end of [-1, 1] and every output back to {q01[d]:.6g}; set "
                                f"data.normalization.{key}=min_max, or recompute the statistics (`robodual dataset "
                                "stats PATH --recompute`) if they are wrong")


def open_dataset(path: str | Path, require_complete: bool = True, check: bool = True,
                 full_check: bool = False) -> ZarrDataset:
    """Open a store read-only; refuses stores that are not robodual stores or not complete.

    ``check`` (default) refuses a damaged store, naming the first problem of
    :meth:`ZarrDataset.structure_problems` (cheap: metadata, lengths, every chunk file on disk);
    ``full_check`` also decodes every chunk (:meth:`ZarrDataset.chunk_problems`, reads the whole store).
    Reads through :meth:`ZarrDataset.array` refuse missing or damaged chunks in any case. The environment
    variable ``ROBODUAL_DATA_FULL_CHECK=1`` turns ``full_check`` on wherever ``check`` is (training, say).
    """
    from robodual_core.data.zarr_io import zarr_module

    zarr = zarr_module()

    path = Path(path)
    if not path.exists():
        partial = path.with_name(path.name + PARTIAL_SUFFIX)
        hint = (f" (an interrupted write left '{partial}': resume it with --resume)" if partial.exists() else "")
        raise RobodualError(f"dataset '{path}' does not exist{hint}")
    if not (path / "zarr.json").is_file():
        raise RobodualError(f"'{path}' is not a zarr v3 store (no zarr.json); expected a folder written by "
                            "robodual (`robodual dataset convert ...`)")
    try:
        root = zarr.open_group(str(path), mode="r")
    except Exception as exc:
        raise RobodualError(f"cannot open '{path}' as a zarr group: {exc}") from exc
    version = root.attrs.get("schema_version")
    if version is None:
        raise RobodualError(f"'{path}' has no 'schema_version' attribute; expected a robodual dataset store")
    if isinstance(version, bool) or not isinstance(version, int):
        raise RobodualError(f"'{path}' attrs 'schema_version' is {version!r}; expected an integer (1)")
    if version > SCHEMA_VERSION:
        raise RobodualError(f"'{path}' has schema_version {version}, newer than this robodual supports "
                            f"({SCHEMA_VERSION}); upgrade robodual")
    try:
        for name in ("data", "meta"):
            if name not in root or hasattr(root[name], "dtype"):
                raise RobodualError(f"'{path}' has no '{name}' group; expected a robodual dataset store")
        for name in ("meta/episode_ends", "meta/instruction_index", "meta/task_index"):
            if name not in root:
                raise RobodualError(f"'{path}' has no '{name}' array; expected a robodual dataset store")
        ds = ZarrDataset(path, root)
        ds.keys  # noqa: B018  (reads every data/ array's metadata)
    except RobodualError:
        raise
    except Exception as exc:
        raise RobodualError(f"'{path}': the metadata of an array or group cannot be read "
                            f"({type(exc).__name__}: {exc}); the store is damaged") from exc
    if require_complete and ds.complete is not True:
        raise RobodualError(f"dataset '{path}' is not complete (attrs 'complete' is not true): it was not "
                            "finalized; convert it again or run `robodual dataset validate` to see why")
    full_check = full_check or (check and os.environ.get("ROBODUAL_DATA_FULL_CHECK", "") not in ("", "0"))
    if check or full_check:
        problems = ds.structure_problems()
        if full_check and not problems:
            problems = ds.chunk_problems(limit=1)
        if problems:
            more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
            raise RobodualError(f"dataset '{path}' is damaged: {problems[0]}{more}; run `robodual dataset validate "
                                f"{path}` to list every problem")
    return ds
