"""Checkpoints: safetensors for tensors, JSON for everything else, written atomically.

Layout of ``run_dir/checkpoints/<step>/``::

    model.safetensors          model weights
    ema.safetensors            EMA weights (when EMA is on)
    optimizer.safetensors      optimizer tensors; its non-tensor structure is in training_state.json
    rng.safetensors            torch CPU (and CUDA) RNG states
    training_state.json        step, epoch position, scheduler, optimizer groups, numpy/python RNG, EMA scalars
    model_config.json          what the model needs to rebuild itself (``model.robodual_config()``)
    <name>.json                extra JSON files (normalizer.json, generalist.json, ...)

A crash while writing never leaves a folder that looks whole: it is built in a temporary sibling and
renamed. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from robodual_core.errors import RobodualError
from robodual_core.io import atomic_dir, atomic_write_text


def checkpoint_steps(run_dir: str | Path) -> list[int]:
    """Steps of the complete checkpoints in ``run_dir/checkpoints``, ascending."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir()
                  if p.is_dir() and p.name.isdigit() and (p / "training_state.json").is_file())


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    steps = checkpoint_steps(run_dir)
    return Path(run_dir) / "checkpoints" / str(steps[-1]) if steps else None


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint folder or a run folder (takes its latest checkpoint)."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise RobodualError(f"'{path}' is neither a checkpoint folder (with model.safetensors) nor a run folder "
                            "with checkpoints/<step>/; train one first or pass the right path")
    return latest


def pin_checkpoint(path: str | Path) -> Path:
    """The one folder a policy path stands for now, absolute: a run folder's latest checkpoint, else the folder
    itself (a checkpoint, an OpenVLA-format or merged model folder). What is loaded, hashed and recorded for
    later (a generalist cache, a specialist's generalist.json) is then the same fixed folder, not whatever
    checkpoint a run folder holds last when it is read again."""
    p = Path(path)
    latest = None if (p / "model.safetensors").is_file() else latest_checkpoint(p)
    return (latest or p).resolve()


def flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (for safetensors) and JSON structure."""
    import torch

    tensors: dict[str, Any] = {}
    scalars: dict[str, Any] = {}
    for idx, pstate in state["state"].items():
        for name, value in pstate.items():
            key = f"{idx}.{name}"
            if isinstance(value, torch.Tensor):
                tensors[key] = value.detach().contiguous().cpu()
            else:
                scalars[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        idx, _, name = key.partition(".")
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    ckpt_dir: str | Path,
    model_state: dict[str, Any],
    training_state: dict[str, Any],
    model_config: dict[str, Any],
    ema_state: dict[str, Any] | None = None,
    optimizer_tensors: dict[str, Any] | None = None,
    rng_tensors: dict[str, Any] | None = None,
    extra_json: dict[str, Any] | None = None,
) -> Path:
    """Write one checkpoint folder atomically (replacing an older one with the same name)."""
    from safetensors.torch import save_file

    ckpt_dir = Path(ckpt_dir)
    with atomic_dir(ckpt_dir, overwrite=True) as tmp:
        save_file(_contiguous(model_state), str(tmp / "model.safetensors"))
        if ema_state is not None:
            save_file(_contiguous(ema_state), str(tmp / "ema.safetensors"))
        if optimizer_tensors:
            save_file(_contiguous(optimizer_tensors), str(tmp / "optimizer.safetensors"))
        if rng_tensors:
            save_file(_contiguous(rng_tensors), str(tmp / "rng.safetensors"))
        for name, obj in (extra_json or {}).items():
            (tmp / f"{name}.json").write_text(json.dumps(obj, indent=2))
        (tmp / "model_config.json").write_text(json.dumps(model_config, indent=2))
        # training_state.json last: its presence marks the folder complete (see checkpoint_steps)
        (tmp / "training_state.json").write_text(json.dumps(training_state, indent=2))
    atomic_write_text(ckpt_dir.parent / "latest", ckpt_dir.name + "\n")
    return ckpt_dir


def _contiguous(state: dict[str, Any]) -> dict[str, Any]:
    # safetensors refuses shared or non-contiguous storage: store independent contiguous copies
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def load_tensors(path: str | Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise RobodualError(f"checkpoint file '{path}' does not exist")
    return load_file(str(path))


def load_model_state(ckpt_dir: str | Path, ema: bool = True) -> dict[str, Any]:
    """Model weights of a checkpoint: the EMA weights when present and ``ema`` is true."""
    ckpt_dir = resolve_checkpoint(ckpt_dir)
    if ema and (ckpt_dir / "ema.safetensors").is_file():
        return load_tensors(ckpt_dir / "ema.safetensors")
    return load_tensors(ckpt_dir / "model.safetensors")


def read_json(ckpt_dir: str | Path, name: str) -> Any:
    path = Path(ckpt_dir) / (name if name.endswith(".json") else f"{name}.json")
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RobodualError(f"checkpoint file '{path}' is missing") from None
    except json.JSONDecodeError as exc:
        raise RobodualError(f"checkpoint file '{path}' is not valid JSON: {exc}") from None


def read_checkpoint_meta(ckpt_dir: str | Path) -> dict[str, Any]:
    """``model_config.json`` of a checkpoint (or of a run folder's latest checkpoint)."""
    return read_json(resolve_checkpoint(ckpt_dir), "model_config")


def run_dataset_spec(ckpt_dir: str | Path, keys: list[str]) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{key: (shape of one frame, dtype)}`` of the dataset a run was trained on (from the run's config.json).

    Empty when the run folder or its dataset cannot be found: a policy still runs, it just cannot tell a
    client what to send.
    """
    ckpt = Path(ckpt_dir)
    for run in (ckpt, ckpt.parent.parent):
        cfg_path = run / "config.json"
        if cfg_path.is_file():
            break
    else:
        return {}
    try:
        dataset = json.loads(cfg_path.read_text()).get("dataset")
        if not dataset:
            return {}
        from robodual_core.data import open_dataset

        ds = open_dataset(dataset)
        return {k: (tuple(ds.array(k).shape[1:]), str(ds.array(k).dtype)) for k in keys if k in ds.keys}
    except Exception as exc:  # moved or deleted dataset, unreadable config: the policy still runs, said once
        import warnings

        warnings.warn(f"'{cfg_path}': the observation spec of the run's dataset is unavailable ({exc}); the policy "
                      "runs, but cannot tell clients what to send", stacklevel=2)
        return {}
