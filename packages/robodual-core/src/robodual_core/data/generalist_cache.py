"""Generalist outputs cached inside a dataset store, keyed by the generalist checkpoint's hash.

Layout (a zarr group inside the store, arrays indexed by global step ``t``)::

    generalist/<checkpoint_hash>/
        actions         float32 [T_total, k_g, D]   discretized chunk in [-1, 1] (normalized space)
        task_latents    float16|float32 [T_total, Nt, H]
        action_latents  float16|float32 [T_total, Na, H]
        task_mask       bool [T_total, Nt]           True = valid token
        action_mask     bool [T_total, Na]
        attrs: checkpoint_hash, k_g, action_dim, hidden_size, dtype, pooling, done_until, complete, source

Row ``t`` holds the generalist's free-running output for the observation and instruction at step ``t``
(so the specialist reads row ``gen_index = t - tau``). Rows are written in blocks; ``done_until`` (all
rows before it are final) is advanced after each block, so an interrupted run resumes, and
``complete: true`` is written last. A cache from another checkpoint is never read:
:class:`GeneralistCache` refuses a hash that does not match.

``checkpoint_hash(path)`` is sha256 (first 16 hex digits) over the files that define the weights: a
training checkpoint's ``model_config.json`` and the weights inference loads (``ema.safetensors`` when
present, else ``model.safetensors``), or every file of a model folder (OpenVLA format or a merged generalist:
config, weights, tokenizer and processor files).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from robodual_core.errors import RobodualError

# latent poolings a cache (and an online generalist) can use: none, per action step, one token per kind
POOLINGS = ("none", "step", "mean")

GROUP = "generalist"
ARRAYS = ("actions", "task_latents", "action_latents", "task_mask", "action_mask")
IN_MEMORY_BYTES = 4 << 30
ROWS_PER_CHUNK = 16


def _weight_files(path: Path) -> list[Path]:
    weights = (path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file()
    if weights and (path / "config.json").is_file() and not (path / "model_config.json").is_file():
        # a model folder (OpenVLA format, a merged generalist; sharded or not): every file in it, the weights and
        # the config, tokenizer and processor files that shape its outputs
        return sorted(f for f in path.iterdir() if f.is_file())
    from robodual_core.checkpoint import resolve_checkpoint

    ckpt = resolve_checkpoint(path)
    weights = ckpt / "ema.safetensors" if (ckpt / "ema.safetensors").is_file() else ckpt / "model.safetensors"
    return [ckpt / "model_config.json", weights]


def checkpoint_hash(path: str | Path) -> str:
    """The hash that names a checkpoint's cache (see the module docstring)."""
    h = hashlib.sha256()
    for f in _weight_files(Path(path)):
        if not f.is_file():
            raise RobodualError(f"checkpoint file '{f}' is missing; cannot hash the checkpoint")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def _open_root(store_path: Path, mode: str) -> Any:
    from robodual_core.data.zarr_io import zarr_module

    zarr = zarr_module()

    if not (store_path / "zarr.json").is_file():
        raise RobodualError(f"dataset '{store_path}' is not a zarr store (no zarr.json)")
    return zarr.open_group(str(store_path), mode=mode)


def list_caches(store_path: str | Path) -> dict[str, dict[str, Any]]:
    """``{hash: attrs}`` of the generalist caches in a store."""
    root = _open_root(Path(store_path), "r")
    if GROUP not in root:
        return {}
    group = root[GROUP]
    return {name: dict(group[name].attrs) for name in sorted(group.group_keys())}


class GeneralistCacheWriter:
    """Creates (or resumes) ``generalist/<hash>`` and writes rows block by block."""

    def __init__(self, store_path: str | Path, checkpoint_hash: str, num_steps: int, k_g: int, action_dim: int,
                 num_task_tokens: int, num_action_tokens: int, hidden_size: int, dtype: str = "float16",
                 pooling: str = "none", overwrite: bool = False, source: str = ""):
        if dtype not in ("float16", "float32"):
            raise RobodualError(f"cache dtype is {dtype!r}; expected float16 or float32")
        self.store_path = Path(store_path)
        self.hash = checkpoint_hash
        root = _open_root(self.store_path, "r+")
        parent = root.require_group(GROUP)
        shapes = {
            "actions": ((num_steps, k_g, action_dim), "float32"),
            "task_latents": ((num_steps, num_task_tokens, hidden_size), dtype),
            "action_latents": ((num_steps, num_action_tokens, hidden_size), dtype),
            "task_mask": ((num_steps, num_task_tokens), "bool"),
            "action_mask": ((num_steps, num_action_tokens), "bool"),
        }
        if checkpoint_hash in parent and not overwrite:
            group = parent[checkpoint_hash]
            found = {k: (tuple(group[k].shape), str(group[k].dtype)) for k in ARRAYS if k in group}
            if found != {k: (s, d) for k, (s, d) in shapes.items()}:
                raise RobodualError(f"the existing cache '{self.store_path}/{GROUP}/{checkpoint_hash}' has arrays "
                                    f"{found}, expected {shapes}; pass --overwrite to rebuild it")
        else:
            if checkpoint_hash in parent:
                del parent[checkpoint_hash]
            group = parent.create_group(checkpoint_hash)
            for name, (shape, dt) in shapes.items():
                group.create_array(name, shape=shape, dtype=dt, chunks=(ROWS_PER_CHUNK, *shape[1:]),
                                   fill_value=0 if dt != "bool" else False)
            group.attrs.update({"checkpoint_hash": checkpoint_hash, "k_g": k_g, "action_dim": action_dim,
                                "hidden_size": hidden_size, "dtype": dtype, "pooling": pooling, "done_until": 0,
                                "num_steps": num_steps, "complete": False, "source": source})
        self.group = group

    @property
    def done_until(self) -> int:
        return int(self.group.attrs.get("done_until", 0))

    @property
    def complete(self) -> bool:
        return bool(self.group.attrs.get("complete", False))

    def write(self, start: int, rows: dict[str, np.ndarray]) -> None:
        """Write rows ``start .. start + n`` of every array, then advance ``done_until``."""
        n = None
        for name in ARRAYS:
            x = np.asarray(rows[name])
            n = x.shape[0] if n is None else n
            self.group[name][start:start + n] = x.astype(self.group[name].dtype, copy=False)
        self.group.attrs["done_until"] = int(start + (n or 0))

    def finalize(self) -> dict[str, Any]:
        nbytes = sum(int(np.prod(self.group[k].shape)) * self.group[k].dtype.itemsize for k in ARRAYS)
        steps = int(self.group["actions"].shape[0])
        self.group.attrs.update({"bytes_uncompressed": nbytes, "bytes_per_step": nbytes / max(steps, 1),
                                 "complete": True})
        return dict(self.group.attrs)


class GeneralistCache:
    """Read-only access to the cache of one checkpoint; refuses any other checkpoint's cache.

    ``get(indices [B]) -> GeneralistOutput`` with torch tensors (latents as float32).
    """

    def __init__(self, store_path: str | Path, checkpoint_hash: str, in_memory: bool | None = None):
        self.store_path = Path(store_path)
        self.hash = checkpoint_hash
        root = _open_root(self.store_path, "r")
        available = sorted(root[GROUP].group_keys()) if GROUP in root else []
        if checkpoint_hash not in available:
            raise RobodualError(
                f"dataset '{self.store_path}' has no generalist cache for checkpoint {checkpoint_hash}; caches "
                f"present: {', '.join(available) or 'none'}. Run `robodual generalist cache --policy CKPT "
                f"--dataset {self.store_path}` with the generalist checkpoint the specialist uses")
        group = root[GROUP][checkpoint_hash]
        attrs = dict(group.attrs)
        if attrs.get("checkpoint_hash") != checkpoint_hash:
            raise RobodualError(f"cache '{self.store_path}/{GROUP}/{checkpoint_hash}' was written for checkpoint "
                                f"{attrs.get('checkpoint_hash')}, not {checkpoint_hash}; refusing to use it")
        if not attrs.get("complete"):
            raise RobodualError(f"cache '{self.store_path}/{GROUP}/{checkpoint_hash}' is incomplete "
                                f"({attrs.get('done_until', 0)}/{attrs.get('num_steps', '?')} steps); run "
                                "`robodual generalist cache` again to resume it")
        self.attrs = attrs
        self.k_g = int(attrs["k_g"])
        arrays = {k: group[k] for k in ARRAYS}
        nbytes = sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in arrays.values())
        if in_memory if in_memory is not None else nbytes <= IN_MEMORY_BYTES:
            arrays = {k: np.asarray(a[:]) for k, a in arrays.items()}
        self.arrays = arrays
        self.num_steps = int(arrays["actions"].shape[0])

    def __len__(self) -> int:
        return self.num_steps

    def _rows(self, name: str, idx: np.ndarray) -> np.ndarray:
        arr = self.arrays[name]
        if isinstance(arr, np.ndarray):
            return arr[idx]
        order = np.argsort(idx)
        rows = arr.get_orthogonal_selection((idx[order],))
        out = np.empty_like(rows)
        out[order] = rows
        return out

    def get(self, indices: Any) -> Any:
        """Rows at global steps ``indices`` (LongTensor or array ``[B]``) as a GeneralistOutput."""
        import torch

        from robodual_core.interfaces import GeneralistOutput

        idx = np.asarray(indices.cpu() if hasattr(indices, "cpu") else indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_steps):
            raise RobodualError(f"cache index out of range: {int(idx.min())}..{int(idx.max())} for a cache of "
                                f"{self.num_steps} steps (is it from another version of the dataset?)")
        t = {k: torch.from_numpy(np.ascontiguousarray(self._rows(k, idx))) for k in ARRAYS}
        return GeneralistOutput(actions=t["actions"].float(), task_latents=t["task_latents"].float(),
                                action_latents=t["action_latents"].float(), task_mask=t["task_mask"].bool(),
                                action_mask=t["action_mask"].bool())


def open_cache_for(store_path: str | Path, checkpoint_path: str | Path, in_memory: bool | None = None) -> GeneralistCache:
    """The cache of ``checkpoint_path`` inside ``store_path`` (hashing the checkpoint's files)."""
    return GeneralistCache(store_path, checkpoint_hash(checkpoint_path), in_memory=in_memory)
