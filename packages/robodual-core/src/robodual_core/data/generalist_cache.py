"""Generalist outputs cached inside a dataset store, keyed by the generalist checkpoint's hash.

Layout (a zarr group inside the store, arrays indexed by global step ``t``)::

    generalist/<checkpoint_hash>/
        actions         float32 [T_total, k_g, D]   discretized chunk in [-1, 1] (normalized space)
        task_latents    float16|float32 [T_total, Nt, H]
        action_latents  float16|float32 [T_total, Na, H]
        task_mask       bool [T_total, Nt]           True = valid token
        action_mask     bool [T_total, Na]
        attrs: checkpoint_hash, k_g, action_dim, hidden_size, dtype, pooling, done_until, complete, source,
               checkpoint_date, created

Row ``t`` holds the generalist's free-running output for the observation and instruction at step ``t``
(so the specialist reads row ``gen_index = t - tau``). Rows are written in blocks; ``done_until`` (all
rows before it are final) is advanced after each block, so an interrupted run resumes, and
``complete: true`` is written last. A cache from another checkpoint is never read:
:class:`GeneralistCache` refuses a hash that does not match.

``source`` is the generalist checkpoint folder the cache was built from (a run folder's latest checkpoint at the
time), ``checkpoint_date`` when that checkpoint was written and ``created`` when the cache was started (ISO 8601,
UTC). :func:`cache_entries` lists a store's caches with them (``robodual dataset info``) and :func:`resolve_cache`
turns ``--generalist-cache auto|HASH|FOLDER`` into one cache's hash.

``checkpoint_hash(path)`` is sha256 (first 16 hex digits) over the files that define the weights: a
training checkpoint's ``model_config.json`` and the weights inference loads (``ema.safetensors`` when
present, else ``model.safetensors``), or every file of a model folder (OpenVLA format or a merged generalist:
config, weights, tokenizer and processor files).

:func:`build_cache` is ``robodual generalist cache`` for any registered generalist family: it loads the
model through its :class:`~robodual_core.interfaces.GeneralistFamily` and only calls the
:class:`~robodual_core.interfaces.Generalist` contract (``generate``, ``task_token_count``, ``k_g``,
``action_dim``, ``hidden_size``, ``image_key``).
"""

from __future__ import annotations

import hashlib
import time
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


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(timestamp))


def checkpoint_date(path: str | Path) -> str | None:
    """When the files that define a checkpoint's weights were last written (ISO 8601, UTC), or None when they
    cannot be read."""
    try:
        return _iso(max(f.stat().st_mtime for f in _weight_files(Path(path))))
    except (OSError, ValueError, RobodualError):
        return None


def cache_entries(store_path: str | Path) -> list[dict[str, Any]]:
    """The generalist caches of a store, one dict each: ``hash``, ``checkpoint`` (the generalist checkpoint folder
    it was built from, or None), ``date`` (when that checkpoint was written: recorded in the cache, else read
    from the folder if it still exists), ``cached`` (when the cache was started), ``complete``, ``done_until``,
    ``num_steps``, ``k_g``, ``hidden_size``, ``dtype`` and ``pooling``."""
    store_path = Path(store_path)
    out = []
    for h, attrs in list_caches(store_path).items():
        source = attrs.get("source") or None
        date = attrs.get("checkpoint_date") or (checkpoint_date(source) if source and Path(source).is_dir() else None)
        cached = attrs.get("created")
        if not cached:  # caches written before ``created`` was recorded: when the group was made
            meta = store_path / GROUP / h / "zarr.json"
            cached = _iso(meta.stat().st_mtime) if meta.is_file() else None
        out.append({"hash": h, "checkpoint": source, "date": date, "cached": cached,
                    "complete": bool(attrs.get("complete")), "done_until": attrs.get("done_until"),
                    "num_steps": attrs.get("num_steps"), "k_g": attrs.get("k_g"),
                    "hidden_size": attrs.get("hidden_size"), "dtype": attrs.get("dtype"),
                    "pooling": attrs.get("pooling")})
    return out


def describe_cache(entry: dict[str, Any]) -> str:
    """One cache of :func:`cache_entries` in a few words: hash, checkpoint folder and its date."""
    date = (entry.get("date") or "date unknown").replace("T", " ").replace("+00:00", " UTC")
    state = "" if entry.get("complete") else f", incomplete {entry.get('done_until', 0)}/{entry.get('num_steps', '?')}"
    return f"{entry['hash']} (from {entry.get('checkpoint') or 'an unrecorded folder'}, checkpoint of {date}{state})"


def resolve_cache(store_path: str | Path, spec: str, flag: str = "--generalist-cache") -> str:
    """The hash of the cache in ``store_path`` that ``spec`` names: ``auto`` (the only complete cache), a cache's
    hash, or a generalist run folder or checkpoint/model folder (the cache recorded as built from it, or from the
    run's checkpoint, checked against the folder's hash; else the cache with the folder's hash)."""
    store_path = Path(store_path)
    entries = cache_entries(store_path)
    listing = "; ".join(describe_cache(e) for e in entries) or "none"
    if spec == "auto":
        complete = [e for e in entries if e["complete"]]
        if len(complete) == 1:
            return complete[0]["hash"]
        if not complete:
            raise RobodualError(f"{flag} auto: dataset '{store_path}' has no complete generalist cache (caches: "
                                f"{listing}); create one with `robodual generalist cache --policy RUN --dataset "
                                f"{store_path}`")
        raise RobodualError(f"{flag} auto: dataset '{store_path}' holds {len(complete)} complete generalist caches: "
                            f"{'; '.join(describe_cache(e) for e in complete)}; pass {flag} with one's hash or its "
                            "generalist run or checkpoint folder")
    by_hash = {e["hash"]: e for e in entries}
    if spec in by_hash:
        return spec
    path = Path(spec)
    if not spec or not path.is_dir():
        raise RobodualError(f"dataset '{store_path}' has no generalist cache for checkpoint {spec} ({flag} takes "
                            f"auto, a cache's hash or a generalist run or checkpoint folder); caches: {listing}")
    return _cache_of_folder(store_path, path, entries, flag, listing)


def _cache_of_folder(store_path: Path, path: Path, entries: list[dict[str, Any]], flag: str, listing: str) -> str:
    from robodual_core.checkpoint import pin_checkpoint

    def source(entry: dict[str, Any]) -> Path | None:
        return Path(entry["checkpoint"]).resolve() if entry.get("checkpoint") else None

    pinned = pin_checkpoint(path)
    runs = (path / "checkpoints").resolve() if (path / "checkpoints").is_dir() else None
    if runs is not None:  # a run folder: the caches of any of its checkpoints
        mine = [e for e in entries if source(e) is not None and source(e).parent == runs]
        if len(mine) > 1:
            latest = [e for e in mine if source(e) == pinned]
            if len(latest) != 1:
                raise RobodualError(f"{flag} '{path}': dataset '{store_path}' holds {len(mine)} caches of that run's "
                                    f"checkpoints: {'; '.join(describe_cache(e) for e in mine)}; pass one's "
                                    "checkpoint folder or hash")
            mine = latest
    else:
        mine = [e for e in entries if source(e) == pinned]
    if mine:
        entry = mine[0]
        folder = source(entry)
        if folder is not None and folder.is_dir():
            now = checkpoint_hash(folder)
            if now != entry["hash"]:
                raise RobodualError(f"{flag} '{path}': cache {entry['hash']} in '{store_path}' was built from "
                                    f"'{folder}', whose files now hash to {now} (the checkpoint changed since); run "
                                    f"`robodual generalist cache --policy {folder} --dataset {store_path}` again")
        return str(entry["hash"])
    # no cache records this folder (a copied or moved checkpoint): its files' hash decides
    h = checkpoint_hash(pinned)
    if h in {e["hash"] for e in entries}:
        return h
    raise RobodualError(f"{flag} '{path}': dataset '{store_path}' has no cache of that generalist (checkpoint "
                        f"'{pinned}', hash {h}); caches: {listing}. Run `robodual generalist cache --policy {path} "
                        f"--dataset {store_path}` first")


class GeneralistCacheWriter:
    """Creates (or resumes) ``generalist/<hash>`` and writes rows block by block."""

    def __init__(self, store_path: str | Path, checkpoint_hash: str, num_steps: int, k_g: int, action_dim: int,
                 num_task_tokens: int, num_action_tokens: int, hidden_size: int, dtype: str = "float16",
                 pooling: str = "none", overwrite: bool = False, source: str = "", source_date: str | None = None):
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
                                "num_steps": num_steps, "complete": False, "source": source,
                                "checkpoint_date": source_date, "created": _iso(time.time())})
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
            present = "; ".join(describe_cache(e) for e in cache_entries(self.store_path)) or "none"
            raise RobodualError(
                f"dataset '{self.store_path}' has no generalist cache for checkpoint {checkpoint_hash}; caches "
                f"present: {present}. Run `robodual generalist cache --policy CKPT "
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


def pool_output(out: Any, pooling: str, k_g: int) -> Any:
    """Shrink a :class:`~robodual_core.interfaces.GeneralistOutput`'s latents (the cache's and the runtime's
    pooling: what the specialist trained on): ``step`` averages each time step's action tokens, ``mean``
    averages the valid task tokens and the action tokens into one token each."""
    import torch

    from robodual_core.interfaces import GeneralistOutput

    if pooling == "none":
        return out
    b, na, h = out.action_latents.shape
    if pooling == "step":
        if na % k_g:
            raise RobodualError(f"pooling 'step' needs a multiple of k_g={k_g} action latent tokens, found {na}")
        act = out.action_latents.reshape(b, k_g, na // k_g, h).mean(2)
        return GeneralistOutput(out.actions, out.task_latents, act, out.task_mask,
                                torch.ones((b, k_g), dtype=torch.bool, device=act.device))
    if pooling == "mean":
        m = out.task_mask.unsqueeze(-1).float()
        task = (out.task_latents * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp(min=1)
        act = out.action_latents.mean(1, keepdim=True)
        ones = torch.ones((b, 1), dtype=torch.bool, device=act.device)
        return GeneralistOutput(out.actions, task, act, ones, ones.clone())
    raise RobodualError(f"--pooling is {pooling!r}; expected one of {', '.join(POOLINGS)}")


def pad_tokens(x: Any, n: int, where: str = "") -> Any:
    """``x [B, N, ...]`` padded with zeros to ``n`` tokens; more than ``n`` is an error (never cut silently)."""
    import torch

    if x.shape[1] > n:
        raise RobodualError(f"the generalist gave {x.shape[1]} task tokens{where}, more than the {n} its "
                            "task_token_count() announced for the cache's width; its tokens depend on more than the "
                            "instruction (an image-dependent processor?)")
    if x.shape[1] == n:
        return x
    pad = x.new_zeros((x.shape[0], n - x.shape[1], *x.shape[2:]))
    return torch.cat([x, pad], dim=1)


def load_images(arr: Any, start: int, end: int) -> Any:
    """``data/<key>[start:end]`` uint8 HWC -> float ``[n, 3, H, W]`` in [0, 1]: the kernel's preprocessing, so the
    tensor WindowDataset serves (and the runtime gives the generalist), bit for bit."""
    from robodual_core.data.preprocess import prepare_images

    return prepare_images(np.asarray(arr[start:end]), "", "rgb")


def _check_output(out: Any, n: int, k_g: int, d: int, hidden: int, where: str) -> None:
    """A generalist's ``generate`` output against the contract (one line naming what differs)."""
    def shape(name: str) -> tuple[int, ...]:
        return tuple(getattr(out, name).shape)

    problems = []
    if shape("actions") != (n, k_g, d):
        problems.append(f"actions {list(shape('actions'))}, expected {[n, k_g, d]}")
    for kind in ("task", "action"):
        lat, mask = shape(f"{kind}_latents"), shape(f"{kind}_mask")
        if len(lat) != 3 or lat[0] != n or lat[2] != hidden:
            problems.append(f"{kind}_latents {list(lat)}, expected [{n}, N, {hidden}] (hidden_size {hidden})")
        elif mask != lat[:2]:
            problems.append(f"{kind}_mask {list(mask)}, expected {list(lat[:2])}")
    if problems:
        raise RobodualError(f"generalist '{where}' breaks the GeneralistOutput contract: {'; '.join(problems)}")


def build_cache(policy: str | Path, dataset: str | Path, batch_size: int = 16, dtype: str = "float16",
                pooling: str = "none", device: str = "auto", overwrite: bool = False,
                show_progress: bool = True) -> dict[str, Any]:
    """Run the generalist at ``policy`` (any registered family) free-running on every step of ``dataset`` and
    write its outputs to ``generalist/<hash>`` (resumable; the number of action tokens is the model's first
    output's); returns a summary."""
    import torch

    from robodual_core.checkpoint import pin_checkpoint
    from robodual_core.data import open_dataset
    from robodual_core.families import generalist_family_of
    from robodual_core.progress import progress_bar
    from robodual_core.training import resolve_device

    if pooling not in POOLINGS:
        raise RobodualError(f"--pooling is {pooling!r}; expected one of {', '.join(POOLINGS)}")
    if batch_size < 1:
        raise RobodualError(f"--batch-size must be >= 1, found {batch_size}")
    dataset = Path(dataset)
    ds = open_dataset(dataset)
    if ds.num_steps < 1:
        raise RobodualError(f"dataset '{dataset}' has no steps to cache")
    # one fixed folder is loaded, hashed and recorded (a run folder's latest checkpoint could change in between)
    policy = pin_checkpoint(policy)
    _, family = generalist_family_of(policy)
    model = family.from_checkpoint(policy, device=resolve_device(device))
    key = model.image_key
    if key not in ds.keys:
        raise RobodualError(f"generalist '{policy}' reads key '{key}', which dataset '{dataset}' lacks; keys: "
                            f"{', '.join(ds.keys)}")
    arr = ds.array(key)
    dim = int(np.prod(ds.array("action").shape[1:]))
    if dim != model.action_dim:
        raise RobodualError(f"generalist '{policy}' predicts {model.action_dim}-dim actions but dataset "
                            f"'{dataset}' has action dim {dim}")
    model_device = next(iter(model.parameters()), torch.empty(0)).device
    h = checkpoint_hash(policy)
    k_g, d, hidden = model.k_g, model.action_dim, int(model.hidden_size)
    step_instructions = ds.instruction_per_step()  # per frame where an episode carries several
    n_task = max(model.task_token_count(s) for s in set(step_instructions))

    def writer_for(num_action_tokens: int) -> GeneralistCacheWriter:
        return GeneralistCacheWriter(dataset, h, ds.num_steps, k_g, d, 1 if pooling == "mean" else n_task,
                                     num_action_tokens, hidden, dtype=dtype, pooling=pooling, overwrite=overwrite,
                                     source=str(policy), source_date=checkpoint_date(policy))

    writer = None
    if not overwrite and h in list_caches(dataset):  # resume (or reuse) it with the shapes it was made with
        group = _open_root(dataset, "r")[GROUP][h]
        writer = writer_for(int(group["action_latents"].shape[1]) if "action_latents" in group else 0)
    if writer is None or not writer.complete:
        done = writer.done_until if writer is not None else 0
        block = -(-batch_size // ROWS_PER_CHUNK) * ROWS_PER_CHUNK  # whole zarr chunks per write
        with progress_bar(show_progress) as progress:
            task = progress.add_task(f"caching generalist {h}", total=ds.num_steps, completed=done)
            for start in range(done, ds.num_steps, block):
                end = min(ds.num_steps, start + block)
                images = load_images(arr, start, end).to(model_device)
                rows: dict[str, list[np.ndarray]] = {}
                for s in range(0, end - start, batch_size):
                    sl = slice(s, min(end - start, s + batch_size))
                    batch = {"obs": {key: images[sl]},
                             "instruction": step_instructions[start + sl.start:start + sl.stop]}
                    with torch.no_grad():
                        out = pool_output(model.generate(batch), pooling, k_g)
                    _check_output(out, sl.stop - sl.start, k_g, d, hidden, str(policy))
                    where = f" at steps {start + sl.start}-{start + sl.stop - 1} of '{dataset}'"
                    parts = {"actions": out.actions, "task_latents": out.task_latents,
                             "action_latents": out.action_latents, "task_mask": out.task_mask,
                             "action_mask": out.action_mask}
                    if pooling != "mean":
                        parts["task_latents"] = pad_tokens(out.task_latents, n_task, where)
                        parts["task_mask"] = pad_tokens(out.task_mask, n_task, where)
                    for name, value in parts.items():
                        rows.setdefault(name, []).append(value.detach().cpu().numpy())
                if writer is None:
                    writer = writer_for(int(rows["action_latents"][0].shape[1]))
                writer.write(start, {k: np.concatenate(v) for k, v in rows.items()})
                progress.update(task, completed=end)
        writer.finalize()
    attrs = dict(writer.group.attrs)
    group_dir = dataset / GROUP / h
    on_disk = sum(f.stat().st_size for f in group_dir.rglob("*") if f.is_file()) if group_dir.is_dir() else 0
    return {"checkpoint_hash": h, "num_steps": ds.num_steps, "bytes_per_step": attrs.get("bytes_per_step", 0),
            "bytes_uncompressed": attrs.get("bytes_uncompressed", 0), "bytes_on_disk": on_disk,
            "dtype": attrs.get("dtype"), "pooling": attrs.get("pooling")}
