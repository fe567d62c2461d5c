"""Backbone features of frozen sensor encoders, cached inside a dataset store (issue 20).

A frozen backbone (the paper's DINO ViT-S/16) computes the same features for a stored frame in every epoch, and at
paper settings it is most of a specialist training step. Computing them once per stored frame, like the generalist
cache, leaves the trainable resampler and the DiT to train.

Layout (a zarr group inside the store, rows indexed by global step ``t``)::

    features/<fingerprint>/
        tokens    float16|float32 [T_total, N, W]    backbone patch tokens of the frame of ``key`` at ``t``
        attrs: fingerprint, key, modality, dtype, done_until, complete, num_steps, sensor

``fingerprint`` names everything that shapes the features: the backbone's weights and the sensor's
preprocessing settings (``ImageSensorEncoder.feature_fingerprint``) and the loader's frame size. Rows are written
in blocks; ``done_until`` advances after each block (an interrupted build resumes) and ``complete: true`` is
written last; an incomplete cache is never read.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from robodual_core.errors import RobodualError

GROUP = "features"
ROWS_PER_CHUNK = 64


def _root(store_path: Path, mode: str) -> Any:
    from robodual_core.data.zarr_io import zarr_module

    if not (store_path / "zarr.json").is_file():
        raise RobodualError(f"dataset '{store_path}' is not a zarr store (no zarr.json)")
    return zarr_module().open_group(str(store_path), mode=mode)


def list_feature_caches(store_path: str | Path) -> dict[str, dict[str, Any]]:
    """``{fingerprint: attrs}`` of the feature caches in a store."""
    root = _root(Path(store_path), "r")
    if GROUP not in root:
        return {}
    group = root[GROUP]
    return {name: dict(group[name].attrs) for name in sorted(group.group_keys())}


def _damaged(store_path: Path, fingerprint: str, what: str) -> RobodualError:
    return RobodualError(f"feature cache '{store_path / GROUP / fingerprint}' is damaged: {what}; delete that folder "
                         "and training builds it again")


def open_feature_cache(store_path: str | Path, fingerprint: str) -> Any | None:
    """The ``tokens`` array of a complete cache (reads refuse an undecodable chunk in one line), or None."""
    from robodual_core.data.integrity import CheckedArray

    store_path = Path(store_path)
    root = _root(store_path, "r")
    try:
        if GROUP not in root or fingerprint not in root[GROUP]:
            return None
        group = root[GROUP][fingerprint]
        if group.attrs.get("complete") is not True:
            return None
        tokens = group["tokens"]
        shape, num_steps = tuple(tokens.shape), group.attrs.get("num_steps")
    except RobodualError:
        raise
    except Exception as exc:  # zarr raises many types for unreadable metadata
        raise _damaged(store_path, fingerprint, f"its metadata cannot be read ({type(exc).__name__}: "
                       f"{' '.join(str(exc).split())[:160]})") from None
    steps = int(root["meta/episode_ends"][-1]) if root["meta/episode_ends"].shape[0] else 0
    if len(shape) != 3 or shape[0] != steps or num_steps != steps:
        raise _damaged(store_path, fingerprint, f"tokens have shape {list(shape)} (attrs num_steps {num_steps!r}); "
                       f"expected [{steps}, N, W], one row per stored step")
    # chunks the writer skipped as all zeros are legitimately absent (strict=False); a damaged one is named
    return CheckedArray(tokens, f"{GROUP}/{fingerprint}/tokens", strict=False, store=store_path)


def build_feature_cache(store_path: str | Path, key: str, modality: str, fingerprint: str,
                        encode: Callable[[Any], Any], normalizer: Any, size: tuple[int, int] | None,
                        dtype: str = "float16", batch_size: int = 64, sensor: str = "",
                        progress: Callable[[int, int], None] | None = None,
                        chunk_rows: int = ROWS_PER_CHUNK) -> Any:
    """Features of every stored frame of ``key``: ``encode(frames [M, C, H, W] float32) -> [M, N, W]`` runs the
    frozen backbone on frames prepared as the loader prepares them (:func:`prepare_images`). Resumes an
    interrupted build; returns the complete ``tokens`` array."""
    import torch

    from robodual_core.data.preprocess import prepare_images
    from robodual_core.data.store import open_dataset

    if dtype not in ("float16", "float32"):
        raise RobodualError(f"feature cache dtype is {dtype!r}; expected float16 or float32")
    store_path = Path(store_path)
    frames = open_dataset(store_path).array(key)
    total = int(frames.shape[0])
    root = _root(store_path, "r+")
    parent = root.require_group(GROUP)
    if fingerprint in parent and parent[fingerprint].attrs.get("complete"):
        return open_feature_cache(store_path, fingerprint)
    group = parent[fingerprint] if fingerprint in parent else None
    done = group.attrs.get("done_until", 0) if group is not None else 0
    if isinstance(done, bool) or not isinstance(done, int) or not 0 <= done <= total:
        raise _damaged(store_path, fingerprint, f"attrs done_until is {done!r}; expected a step in 0..{total}")
    first = prepare_images(np.asarray(frames[0:1]), key, modality, normalizer, size)
    with torch.no_grad():
        probe = encode(first)
    shape = (total, *probe.shape[1:])
    if group is not None and tuple(group["tokens"].shape) != shape:
        del parent[fingerprint]
        group, done = None, 0
    if group is None:
        group = parent.create_group(fingerprint)
        group.create_array("tokens", shape=shape, dtype=dtype, chunks=(chunk_rows, *shape[1:]), fill_value=0)
        group.attrs.update({"fingerprint": fingerprint, "key": key, "modality": modality, "dtype": dtype,
                            "done_until": 0, "num_steps": total, "complete": False, "sensor": sensor})
    tokens = group["tokens"]
    # blocks aligned to the chunks, so that a block never rewrites a chunk another block finished
    rows = int(tokens.chunks[0])
    step = max(rows, (batch_size // rows) * rows)
    start = (done // rows) * rows
    while start < total:
        end = min(start + step, total)
        x = prepare_images(np.asarray(frames[start:end]), key, modality, normalizer, size)
        with torch.no_grad():
            out = encode(x)
        tokens[start:end] = out.float().cpu().numpy().astype(dtype, copy=False)
        group.attrs["done_until"] = end
        if progress is not None:
            progress(end, total)
        start = end
    group.attrs["complete"] = True
    return tokens
