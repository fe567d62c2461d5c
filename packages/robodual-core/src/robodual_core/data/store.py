"""Reading a robodual Zarr store: :func:`open_dataset` -> :class:`ZarrDataset` (read-only)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from robodual_core.data.schema import PARTIAL_SUFFIX, SCHEMA_VERSION
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
        return bool(self.root.attrs.get("complete", False))

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
        return np.asarray(self.root["meta/episode_ends"][:], dtype=np.int64)

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
        index = np.asarray(self.root[f"meta/{name}_index"][:], dtype=np.int64)
        return [vocab[i] for i in index[: self.num_episodes]]

    @cached_property
    def instructions(self) -> list[str]:
        """One instruction per episode."""
        return self._strings("instruction")

    @cached_property
    def tasks(self) -> list[str]:
        """One task id per episode."""
        return self._strings("task")

    # -- data ------------------------------------------------------------------------------------
    def array(self, key: str) -> Any:
        """The zarr array ``data/<key>`` ``[T_total, ...]``."""
        if key not in self.keys:
            raise RobodualError(f"dataset '{self.path}' has no key '{key}'; keys: {', '.join(self.keys) or '(none)'}")
        return self.root["data"][key]

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


def open_dataset(path: str | Path, require_complete: bool = True) -> ZarrDataset:
    """Open a store read-only; refuses stores that are not robodual stores or not complete."""
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
    if int(version) > SCHEMA_VERSION:
        raise RobodualError(f"'{path}' has schema_version {version}, newer than this robodual supports "
                            f"({SCHEMA_VERSION}); upgrade robodual")
    for name in ("meta/episode_ends", "meta/instruction_index", "meta/task_index"):
        if name not in root:
            raise RobodualError(f"'{path}' has no '{name}' array; expected a robodual dataset store")
    ds = ZarrDataset(path, root)
    if require_complete and not ds.complete:
        raise RobodualError(f"dataset '{path}' is not complete (attrs 'complete' is not true): it was not "
                            "finalized; convert it again or run `robodual dataset validate` to see why")
    return ds
