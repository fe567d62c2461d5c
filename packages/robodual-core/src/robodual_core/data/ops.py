"""Whole-store operations by episode: copy a selection (split) and concatenate stores (merge)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from robodual_core.data.store import ZarrDataset, open_dataset
from robodual_core.data.writer import DatasetWriter
from robodual_core.errors import RobodualError
from robodual_core.outputs import check_output


def _layout(ds: ZarrDataset) -> dict[str, tuple[str, tuple[int, ...], str]]:
    return {k: (m, tuple(ds.array(k).shape[1:]), str(ds.array(k).dtype)) for k, m in ds.modalities.items()}


def copy_episodes(sources: Sequence[tuple[ZarrDataset, Sequence[int]]], dst: str | Path, overwrite: bool = False,
                  progress: Callable[[int], Any] | None = None) -> Path:
    """Write the chosen episodes of one or more compatible stores, in order, into a new store ``dst``."""
    if not sources:
        raise RobodualError("nothing to copy: no source stores")
    first = sources[0][0]
    layout = _layout(first)
    for ds, _ in sources[1:]:
        if ds.fps != first.fps:
            raise RobodualError(f"'{ds.path}' has fps {ds.fps} but '{first.path}' has {first.fps}; expected equal fps")
        other = _layout(ds)
        if other != layout:
            diff = sorted(k for k in set(layout) | set(other) if layout.get(k) != other.get(k))
            k = diff[0]
            raise RobodualError(f"'{ds.path}' does not match '{first.path}' at key '{k}': {other.get(k, 'missing')} "
                                f"vs {layout.get(k, 'missing')} (modality, per-step shape, dtype)")
    # the output is never one of the sources, inside one or holding one (merging a store into itself)
    check_output(dst, flag="--out", expect="store", inputs=[ds.path for ds, _ in sources], overwrite=overwrite)
    attrs = {"source": {"format": "robodual", "stores": [str(ds.path) for ds, _ in sources]}}
    writer = DatasetWriter(dst, fps=first.fps, modalities=first.modalities, action_space=first.action_space,
                           overwrite=overwrite, attrs=attrs)
    for ds, episodes in sources:
        instructions, tasks = ds.instructions, ds.tasks
        per_step = ds.step_instructions()
        for ep in episodes:
            steps = None
            if per_step is not None:  # an episode whose frames carry several instructions keeps them all
                start, end = ds.episode_bounds(int(ep))
                if len(set(per_step[start:end])) > 1:
                    steps = per_step[start:end]
            writer.add_episode(ds.episode(int(ep)), instruction=instructions[ep], task=tasks[ep],
                               step_instructions=steps)
            if progress is not None:
                progress(1)
    return writer.finalize()


def merge_stores(paths: Sequence[str | Path], dst: str | Path, overwrite: bool = False,
                 progress: Callable[[int], Any] | None = None) -> Path:
    """Concatenate every episode of ``paths`` (in order) into ``dst``."""
    stores = [open_dataset(p) for p in paths]
    return copy_episodes([(ds, range(ds.num_episodes)) for ds in stores], dst, overwrite, progress)
