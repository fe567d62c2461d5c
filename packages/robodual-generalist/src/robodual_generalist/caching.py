"""``robodual generalist cache``: free-running generalist outputs for every step of a store.

Row ``t`` is the output for the image and instruction at step ``t``; the specialist reads row
``gen_index = t - tau``. Written through :class:`robodual_core.data.generalist_cache.GeneralistCacheWriter`
(resumable, ``complete`` last, keyed by the checkpoint hash).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from robodual_core.data.generalist_cache import (
    POOLINGS,
    ROWS_PER_CHUNK,
    GeneralistCacheWriter,
    checkpoint_hash,
)
from robodual_core.errors import RobodualError
from robodual_generalist.pooling import pool_output


def _pad_tokens(x: torch.Tensor, n: int, where: str = "") -> torch.Tensor:
    """``x [B, N, ...]`` padded with zeros to ``n`` tokens; more than ``n`` is an error (never cut silently)."""
    if x.shape[1] > n:
        raise RobodualError(f"the generalist gave {x.shape[1]} task tokens{where}, more than the {n} counted for the "
                            "cache's width (task_token_count); its processor adds tokens that depend on the image")
    if x.shape[1] == n:
        return x
    pad = x.new_zeros((x.shape[0], n - x.shape[1], *x.shape[2:]))
    return torch.cat([x, pad], dim=1)


def load_images(arr: Any, start: int, end: int) -> torch.Tensor:
    """``data/<key>[start:end]`` uint8 HWC -> float ``[n, 3, H, W]`` in [0, 1] (as WindowDataset gives)."""
    x = torch.from_numpy(np.ascontiguousarray(arr[start:end]))
    return x.permute(0, 3, 1, 2).float().div_(255.0)


def build_cache(policy: str | Path, dataset: str | Path, batch_size: int = 16, dtype: str = "float16",
                pooling: str = "none", device: str = "auto", overwrite: bool = False,
                show_progress: bool = True) -> dict[str, Any]:
    from robodual_core.checkpoint import pin_checkpoint
    from robodual_core.data import open_dataset
    from robodual_core.progress import progress_bar
    from robodual_core.training import resolve_device
    from robodual_generalist.families import load_generalist

    if pooling not in POOLINGS:
        raise RobodualError(f"--pooling is {pooling!r}; expected one of {', '.join(POOLINGS)}")
    if batch_size < 1:
        raise RobodualError(f"--batch-size must be >= 1, found {batch_size}")
    dataset = Path(dataset)
    ds = open_dataset(dataset)
    # one fixed folder is loaded, hashed and recorded (a run folder's latest checkpoint could change in between)
    policy = pin_checkpoint(policy)
    model = load_generalist(policy, device=resolve_device(device))
    key = model.cfg.image_key
    arr = ds.array(key)
    dim = int(np.prod(ds.array("action").shape[1:]))
    if dim != model.action_dim:
        raise RobodualError(f"generalist '{policy}' predicts {model.action_dim}-dim actions but dataset "
                            f"'{dataset}' has action dim {dim}")
    h = checkpoint_hash(policy)
    k_g, d = model.k_g, model.action_dim
    n_task = max(model.task_token_count(s) for s in set(ds.instructions))
    n_act = {"none": k_g * d, "step": k_g, "mean": 1}[pooling]
    writer = GeneralistCacheWriter(dataset, h, ds.num_steps, k_g, d, 1 if pooling == "mean" else n_task, n_act,
                                   model.hidden_size, dtype=dtype, pooling=pooling, overwrite=overwrite,
                                   source=str(policy))
    if not writer.complete:
        ep_of_step = np.searchsorted(ds.episode_ends, np.arange(ds.num_steps), side="right")
        instructions = ds.instructions
        block = -(-batch_size // ROWS_PER_CHUNK) * ROWS_PER_CHUNK  # whole zarr chunks per write
        with progress_bar(show_progress) as progress:
            task = progress.add_task(f"caching generalist {h}", total=ds.num_steps, completed=writer.done_until)
            for start in range(writer.done_until, ds.num_steps, block):
                end = min(ds.num_steps, start + block)
                images = load_images(arr, start, end)
                rows: dict[str, list[np.ndarray]] = {}
                for s in range(0, end - start, batch_size):
                    sl = slice(s, min(end - start, s + batch_size))
                    batch = {"obs": {key: images[sl]},
                             "instruction": [instructions[e] for e in ep_of_step[start + sl.start:start + sl.stop]]}
                    out = pool_output(model.generate(batch), pooling, k_g)
                    where = f" at steps {start + sl.start}-{start + sl.stop - 1} of '{dataset}'"
                    parts = {"actions": out.actions, "task_latents": _pad_tokens(out.task_latents, n_task, where),
                             "action_latents": out.action_latents,
                             "task_mask": _pad_tokens(out.task_mask, n_task, where),
                             "action_mask": out.action_mask}
                    if pooling == "mean":
                        parts["task_latents"], parts["task_mask"] = out.task_latents, out.task_mask
                    for name, value in parts.items():
                        rows.setdefault(name, []).append(value.cpu().numpy())
                writer.write(start, {k: np.concatenate(v) for k, v in rows.items()})
                progress.update(task, completed=end)
        writer.finalize()
    attrs = dict(writer.group.attrs)
    group_dir = dataset / "generalist" / h
    on_disk = sum(f.stat().st_size for f in group_dir.rglob("*") if f.is_file()) if group_dir.is_dir() else 0
    return {"checkpoint_hash": h, "num_steps": ds.num_steps, "bytes_per_step": attrs.get("bytes_per_step", 0),
            "bytes_uncompressed": attrs.get("bytes_uncompressed", 0), "bytes_on_disk": on_disk,
            "dtype": attrs.get("dtype"), "pooling": attrs.get("pooling")}
