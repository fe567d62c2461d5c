"""Writes instruction embeddings into a dataset store (layout in :mod:`robodual_sensors.language`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress

from robodual_core.errors import RobodualError
from robodual_sensors.language import TextEmbedder, model_id


def write_language_embeddings(path: str | Path, model: str, overwrite: bool = False, device: str = "cpu",
                              batch_size: int = 64) -> tuple[str, int, int]:
    """Embed each unique episode instruction of the store at ``path`` once with ``model``.

    Returns (group name, number of unique instructions, number of episodes). ``complete`` is written
    last, so an interrupted run is never read as whole; an existing complete group needs ``overwrite``.
    """
    from robodual_core.data.zarr_io import zarr_module

    zarr = zarr_module()

    from robodual_core.data import open_dataset

    ds = open_dataset(path)
    instructions = [str(s) for s in ds.instructions]
    if len(instructions) != ds.num_episodes:
        raise RobodualError(f"dataset '{path}' has {len(instructions)} instructions for {ds.num_episodes} episodes")
    unique = sorted(set(instructions))
    mid = model_id(model)
    name = f"language/{mid}"
    root = zarr.open_group(str(path), mode="a")
    lang = root.require_group("language")
    if mid in lang and lang[mid].attrs.get("complete", False) and not overwrite:
        raise RobodualError(f"dataset '{path}' already has '{name}'; pass --overwrite to recompute it")
    embedder = TextEmbedder(model, device=device, batch_size=batch_size)
    chunks = []
    with Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(f"embedding {len(unique)} instructions with {mid}", total=len(unique))
        for i in range(0, len(unique), batch_size):
            chunks.append(embedder.encode(unique[i:i + batch_size]))
            progress.advance(task, len(chunks[-1]))
    emb = np.concatenate(chunks) if chunks else np.zeros((0, embedder.dim()), np.float32)
    row = {s: i for i, s in enumerate(unique)}
    group = lang.create_group(mid, overwrite=True)
    group.create_array("embeddings", data=emb.astype(np.float32))
    group.create_array("episode_index", data=np.asarray([row[s] for s in instructions], dtype=np.int64))
    group.attrs.update({"model": model, "model_id": mid, "dim": int(emb.shape[-1]), "instructions": unique})
    group.attrs["complete"] = True
    return name, len(unique), len(instructions)
