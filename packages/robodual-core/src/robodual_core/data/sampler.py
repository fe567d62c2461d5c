"""Training windows from a store: :class:`WindowDataset`, a torch ``Dataset`` safe for worker processes.

Every step ``t`` of every episode of the split is one sample:

- ``obs``: each key of ``obs_keys`` at ``t`` (with ``history`` earlier frames, oldest first, clamped to
  the episode start by repeating its first frame); images ``[C, H, W]`` float in [0, 1], depth
  ``[C, H, W]`` normalized by dataset statistics (``mean_std`` unless ``normalization`` says otherwise),
  with history ``[history + 1, C, H, W]``; resized to ``image_size`` in the loader when asked.
- ``action``: ``[horizon, D]`` normalized actions ``t .. t + horizon - 1``; past the episode end the last
  action is repeated and ``action_is_pad`` is True there.
- ``tau`` / ``gen_index``: latency-aware augmentation (paper 3.2). The generalist chunk conditioning step
  ``t`` was produced ``tau`` steps earlier, at ``gen_index = t - tau``, with ``tau`` drawn uniformly from
  ``[0, k_g)`` and clamped so that ``gen_index`` never precedes the episode start (the generalist runs
  at the first step of an episode); the reported ``tau`` is the clamped age ``t - gen_index``. No
  augmentation (``tau = 0``) for ``split="val"`` or ``augment_tau=False``. In training, ``tau`` is drawn
  from the batch's own seed (the trainer's batches are ``SeededBatch`` index lists), so the draws do not
  depend on the loader worker or on a resume; otherwise from torch's global RNG.

Train/val split is by episode (:func:`split_episodes`), reproducible from ``seed``. Zarr handles are
opened lazily in each process (never pickled into workers); low-dim arrays are read whole once per process.
Image arrays (and feature caches) small enough to hold in memory are read once into shared memory
(:meth:`WindowDataset.share_memory`, which the trainer calls before its loader starts workers): worker
processes use those pages instead of each reading the whole store again (issue 33: 1.6-2.0 s of first batch
per worker on a 30-episode Meta-World store, against 0.24-0.45 s in-process).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from robodual_core.data.normalize import Normalizer
from robodual_core.data.preprocess import IMAGE_MODALITIES, prepare_lowdim, prepare_observation
from robodual_core.data.store import open_dataset, refuse_untrainable
from robodual_core.errors import RobodualError

DEFAULT_NORMALIZATION = {"action": "q99", "proprio": "min_max"}
LOWDIM_CACHE_BYTES = 512 << 20
# image arrays (all obs keys together) up to this size are held in memory per process; override per dataset
IMAGE_CACHE_BYTES = int(os.environ.get("ROBODUAL_IMAGE_CACHE_MB", "512")) << 20
# frozen-backbone feature caches held in memory up to this size (read from zarr above it)
FEATURE_CACHE_BYTES = int(os.environ.get("ROBODUAL_FEATURE_CACHE_MB", "2048")) << 20


def split_episodes(num_episodes: int, split: str = "train", val_ratio: float = 0.1, seed: int = 0) -> np.ndarray:
    """Sorted episode ids of a split: ``val`` is a seeded random ``val_ratio`` of episodes (at least one
    when there are two or more and ``val_ratio > 0``), ``train`` the rest, ``all`` every episode."""
    if split not in ("train", "val", "all"):
        raise RobodualError(f"split is '{split}'; expected 'train', 'val' or 'all'")
    if not 0.0 <= val_ratio < 1.0:
        raise RobodualError(f"val_ratio is {val_ratio}; expected a number in [0, 1)")
    ids = np.arange(num_episodes)
    if split == "all":
        return ids
    n_val = 0 if val_ratio == 0 or num_episodes < 2 else max(1, int(round(val_ratio * num_episodes)))
    perm = np.random.default_rng(seed).permutation(num_episodes)
    val = np.sort(perm[:n_val])
    return val if split == "val" else np.setdiff1d(ids, val)


def _nbytes(arr: Any) -> int:
    return int(np.prod(arr.shape, dtype=np.int64)) * np.dtype(arr.dtype).itemsize


def in_memory_if_small(arr: Any, limit: int) -> Any:
    """``arr`` (a zarr array) read whole into a numpy array when it is at most ``limit`` bytes, else itself."""
    return np.asarray(arr[:]) if _nbytes(arr) <= limit else arr


def read_shared(arr: Any, block_bytes: int = 64 << 20) -> torch.Tensor:
    """``arr`` (a zarr array) read whole into a shared-memory tensor, block by block along the first axis (no
    second full-size copy). Dtypes torch cannot hold come back as an ordinary tensor of a numpy copy."""
    dtype = np.dtype(arr.dtype)
    try:
        tdtype = torch.from_numpy(np.empty(0, dtype)).dtype
    except TypeError:
        return torch.from_numpy(np.asarray(arr[:]))
    shape = tuple(int(s) for s in arr.shape)
    try:  # what torch's own collate allocates in workers: shared pages, never touched before the read
        out = torch.empty(0, dtype=tdtype).set_(torch.UntypedStorage._new_shared(max(1, _nbytes(arr))), 0, shape)
    except (AttributeError, RuntimeError):
        out = torch.empty(shape, dtype=tdtype).share_memory_()
    view = out.numpy()
    if view.size:
        rows = max(1, block_bytes // max(1, view[:1].nbytes))
        shard = getattr(arr, "shards", None) or getattr(arr, "chunks", None) or (rows,)
        rows = max(int(shard[0]), rows // int(shard[0]) * int(shard[0]))  # whole shards per read
        for start in range(0, shape[0], rows):
            view[start:start + rows] = arr[start:start + rows]
    return out


class WindowDataset(Dataset):
    """Windows of a robodual store for policy training (see the module docstring for the sample layout)."""

    def __init__(self, path: str | Path, obs_keys: list[str] | tuple[str, ...] = ("rgb_static",), horizon: int = 8,
                 k_g: int = 8, history: int = 0, image_size: int | None = None, split: str = "train",
                 val_ratio: float = 0.1, seed: int = 0, normalization: dict[str, str] | None = None,
                 augment_tau: bool = True, action_key: str = "action", proprio_key: str = "proprio",
                 image_cache_bytes: int = IMAGE_CACHE_BYTES, full_check: bool = False,
                 raw_images: bool = False, features: dict[str, str] | None = None):
        if horizon < 1 or k_g < 1 or history < 0:
            raise RobodualError(f"horizon ({horizon}) and k_g ({k_g}) must be >= 1 and history ({history}) >= 0")
        self.path = Path(path)
        # the store's structure is checked here (and every chunk decoded with ``full_check``); each read
        # refuses a missing or damaged chunk, naming the array and chunk
        ds = open_dataset(self.path, full_check=full_check)
        self.modalities = ds.modalities
        self.obs_keys = list(obs_keys)
        for key in [*self.obs_keys, action_key]:
            if key not in ds.keys:
                raise RobodualError(f"dataset '{self.path}' has no key '{key}'; keys: {', '.join(ds.keys)}")
        self.action_key = action_key
        self.proprio_key = proprio_key if proprio_key in ds.keys else None
        self.horizon, self.k_g, self.history, self.image_size = horizon, k_g, history, image_size
        # raw_images: serve image keys as stored (uint8 RGB, raw depth), converted by prepare_batch_images on
        # the training device: a quarter of the bytes through pinned memory, and no conversion in the workers
        self.raw_images = raw_images
        # features: {sensor name: fingerprint} of complete frozen-backbone feature caches in the store
        # (robodual_core.data.feature_cache); samples carry "features" {name: [history + 1, N, W] or [N, W]}
        self.features: dict[str, str] = {}
        if features:
            self.attach_features(features)
        self.split = split
        self.augment_tau = augment_tau and split != "val"
        self.stats = ds.stats
        modes = {k: v for k, v in DEFAULT_NORMALIZATION.items() if k in ds.keys}
        modes.update({k: "mean_std" for k in self.obs_keys if self.modalities.get(k) == "depth"})
        modes.update(normalization or {})
        self.normalizer = Normalizer.from_stats(self.stats, {k: m for k, m in modes.items() if k in ds.keys})
        refuse_untrainable(ds, {k: m for k, m in modes.items() if k in ds.keys})  # lost chunks, collapsed dims
        self.episode_ids = split_episodes(ds.num_episodes, split, val_ratio, seed)
        self.episode_ends = ds.episode_ends
        self.episode_starts = ds.episode_starts
        self.instructions = ds.instructions
        # an episode whose frames carry several instructions (a LeRobot episode with two tasks) keeps them per step
        per_step = ds.step_instructions()
        self.step_instructions = np.asarray(per_step, dtype=object) if per_step is not None else None
        self.tasks = ds.tasks
        self.action_dim = int(np.prod(ds.array(action_key).shape[1:], dtype=np.int64))
        self.proprio_dim = int(np.prod(ds.array(self.proprio_key).shape[1:], dtype=np.int64)) if self.proprio_key else 0
        lengths = self.episode_ends[self.episode_ids] - self.episode_starts[self.episode_ids]
        self._sample_episode = np.repeat(self.episode_ids, lengths).astype(np.int64)
        self._sample_step = (np.concatenate([np.arange(self.episode_starts[e], self.episode_ends[e])
                                             for e in self.episode_ids]).astype(np.int64)
                             if len(self.episode_ids) else np.zeros(0, np.int64))
        self._pid: int | None = None
        self._arrays: dict[str, Any] = {}
        # frames held in memory, as shared-memory tensors: filled once (share_memory(), or the first read), kept
        # across fork and pickling, so loader workers map the same pages instead of reading the store again
        self._shared: dict[str, torch.Tensor] = {}
        # small stores (the demo's, a few tasks at 64 px) are read into memory once per process: zarr's
        # per-read overhead (~2 ms a frame) would otherwise dominate a CPU training step
        image_bytes = sum(_nbytes(ds.array(k)) for k in self.obs_keys
                          if self.modalities.get(k) in ("rgb", "depth", "tactile"))
        self.images_in_memory = image_bytes <= image_cache_bytes

    def attach_features(self, features: dict[str, str], drop_keys: list[str] | tuple[str, ...] = ()) -> None:
        """Serve the cached backbone features ``{sensor name: fingerprint}`` (complete caches in the store) and
        stop reading the image keys in ``drop_keys`` (those only cached sensors read)."""
        from robodual_core.data.feature_cache import open_feature_cache

        for name, fingerprint in features.items():
            if open_feature_cache(self.path, fingerprint) is None:
                raise RobodualError(f"dataset '{self.path}' has no complete feature cache '{fingerprint}' for "
                                    f"sensor '{name}' (robodual_core.data.feature_cache)")
        self.features = {**self.features, **features}
        self.obs_keys = [k for k in self.obs_keys if k not in set(drop_keys)]
        self._pid, self._arrays = None, {}  # reopened with the feature arrays
        self._shared = {k: v for k, v in getattr(self, "_shared", {}).items()
                        if k in self.obs_keys or k.startswith("features/")}

    # -- per-process state -----------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        # the shared-memory frames travel as handles (torch's pickling for worker processes), never as bytes
        state = self.__dict__.copy()
        state["_pid"], state["_arrays"] = None, {}
        return state

    def share_memory(self) -> WindowDataset:
        """Read the frames this dataset holds in memory (image keys up to ``image_cache_bytes``, feature caches
        up to ``ROBODUAL_FEATURE_CACHE_MB``) into shared memory now, once. Call it before a ``DataLoader`` starts
        worker processes: they then share these pages (inherited on fork, passed as handles on spawn) instead
        of each reading the whole store. Idempotent; returns the dataset."""
        self._array(self.action_key)
        return self

    def _array(self, key: str) -> Any:
        if self._pid != os.getpid():
            ds = open_dataset(self.path, check=False)  # checked in __init__
            self._arrays = {}
            for k in {*self.obs_keys, self.action_key, *([self.proprio_key] if self.proprio_key else [])}:
                arr = ds.array(k)
                if self.modalities.get(k) in ("rgb", "depth", "tactile"):
                    self._arrays[k] = self._in_shared_memory(k, arr) if self.images_in_memory else arr
                else:
                    self._arrays[k] = in_memory_if_small(arr, LOWDIM_CACHE_BYTES)
            if self.features:
                from robodual_core.data.feature_cache import open_feature_cache

                for name, fingerprint in self.features.items():
                    tokens = open_feature_cache(self.path, fingerprint)
                    self._arrays[f"features/{name}"] = (self._in_shared_memory(f"features/{name}", tokens)
                                                        if _nbytes(tokens) <= FEATURE_CACHE_BYTES else tokens)
            self._pid = os.getpid()
        return self._arrays[key]

    def _in_shared_memory(self, key: str, arr: Any) -> np.ndarray:
        """``arr`` whole, as a numpy view of a shared-memory tensor read once (kept in ``_shared``)."""
        if key not in self._shared:
            self._shared[key] = read_shared(arr)
        return self._shared[key].numpy()

    # -- samples ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._sample_step.shape[0])

    def _frames(self, key: str, starts: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Raw frames ``[B, history + 1, H, W(, C)]`` at steps ``ts`` with history clamped to ``starts``."""
        arr = self._array(key)
        offsets = np.arange(-self.history, 1)
        steps = np.maximum(ts[:, None] + offsets, starts[:, None])  # [B, h+1]
        if isinstance(arr, np.ndarray):  # in memory: one gather for the whole batch
            return arr[steps]
        out = []
        for row in steps:  # a zarr array: one contiguous read per sample
            first = int(row[0])
            out.append(np.asarray(arr[first:int(row[-1]) + 1])[row - first])
        return np.stack(out)

    def _images(self, key: str, starts: np.ndarray, ts: np.ndarray) -> torch.Tensor:
        """Images ``[B, C, H, W]`` (``[B, history + 1, C, H, W]`` with history) of steps ``ts``, through the one
        preprocessing path the runtime applies at control time (``prepare_observation``)."""
        x = self._frames(key, starts, ts)
        if self.raw_images:
            raw = torch.from_numpy(np.ascontiguousarray(x))
            return raw if self.history else raw[:, 0]
        out = prepare_observation(x, key, self.modalities[key], self.normalizer, self.image_size, lead=2)
        return out if self.history else out[:, 0]

    def prepare_batch_images(self, batch: dict[str, Any]) -> dict[str, Any]:
        """A collated batch of a ``raw_images`` dataset with its image keys converted where they are (the
        trainer calls this on the device after the transfer): the same tensors the default path serves."""
        if not self.raw_images:
            return batch
        obs = dict(batch["obs"])
        for key in self.obs_keys:
            if self.modalities.get(key) not in IMAGE_MODALITIES:
                continue
            obs[key] = prepare_observation(obs[key], key, self.modalities[key], self.normalizer, self.image_size,
                                           lead=2 if self.history else 1)
        return {**batch, "obs": obs}

    def _lowdim(self, key: str, steps: np.ndarray) -> torch.Tensor:
        """Normalized float32 values at ``steps`` (any shape), ``[*steps.shape, D...]``."""
        x = prepare_lowdim(self._array(key)[steps.reshape(-1)], key, self.normalizer)
        return torch.from_numpy(x.reshape(*steps.shape, *x.shape[1:]))

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        """The samples at ``indices``, read and normalized as one batch (the DataLoader calls this with a
        batch's indices): per-sample reads and numpy calls cost ~0.1 ms each on the CPU. Each sample is a
        view into the batch tensors; tau draws come in sample order, as one draw per sample would."""
        idx = np.asarray(indices, dtype=np.int64)
        bad = idx[(idx < 0) | (idx >= len(self))]
        if bad.size:
            raise IndexError(f"sample {int(bad[0])} out of range for {len(self)} samples")
        ts, eps = self._sample_step[idx], self._sample_episode[idx]
        starts, ends = self.episode_starts[eps].astype(np.int64), self.episode_ends[eps].astype(np.int64)
        steps = ts[:, None] + np.arange(self.horizon)  # [B, horizon]
        is_pad = torch.from_numpy(steps >= ends[:, None])
        action = self._lowdim(self.action_key, np.minimum(steps, ends[:, None] - 1)).reshape(len(idx), self.horizon, -1)
        obs = {key: self._images(key, starts, ts) if self.modalities.get(key) in ("rgb", "depth", "tactile")
               else self._lowdim(key, ts) for key in self.obs_keys}
        if self.augment_tau:
            # a training batch carries its own seed (robodual_core.training.SeededBatch): resume- and worker-exact
            seed = getattr(indices, "seed", None)
            gen = torch.Generator().manual_seed(seed) if seed is not None else None
            gen_index = np.maximum(starts, ts - torch.randint(0, self.k_g, (len(idx),), generator=gen).numpy())
        else:
            gen_index = ts
        feats = {}
        for name in self.features:
            rows = torch.from_numpy(np.ascontiguousarray(self._frames(f"features/{name}", starts, ts))).float()
            feats[name] = rows if self.history else rows[:, 0]
        # a store without proprio gives an empty vector, so batches always have the key
        proprio = (self._lowdim(self.proprio_key, ts).reshape(len(idx), -1) if self.proprio_key
                   else torch.zeros(len(idx), 0))
        return [{
            "obs": {key: v[b] for key, v in obs.items()},
            "action": action[b],
            "action_is_pad": is_pad[b],
            "index": int(ts[b]),
            "tau": int(ts[b] - gen_index[b]),
            "gen_index": int(gen_index[b]),
            "episode": int(eps[b]),
            "instruction": (self.instructions[int(eps[b])] if self.step_instructions is None
                            else str(self.step_instructions[int(ts[b])])),
            "task": self.tasks[int(eps[b])],
            "proprio": proprio[b],
            **({"features": {name: v[b] for name, v in feats.items()}} if feats else {}),
        } for b in range(len(idx))]
