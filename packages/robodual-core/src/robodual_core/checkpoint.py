"""Checkpoints: safetensors for tensors, JSON for everything else, written atomically.

Layout of ``run_dir/checkpoints/<step>/``::

    model.safetensors          model weights
    ema.safetensors            EMA weights (when EMA is on)
    optimizer.safetensors      optimizer tensors; its non-tensor structure is in training_state.json
    rng.safetensors            torch CPU (and CUDA) RNG states: rank 0's, and each other rank's as rank<r>.*
    training_state.json        step, epoch position, scheduler, optimizer groups, numpy/python RNG (rank 0's;
                               every other rank's in ranks_rng), EMA scalars
    model_config.json          what the model needs to rebuild itself (``model.robodual_config()``)
    <name>.json                extra JSON files (normalizer.json, generalist.json, ...)

A crash while writing never leaves a folder that looks whole: it is built in a temporary sibling and
renamed. Nothing is ever unpickled.

Reading refuses damage in one line naming the file (:class:`DamagedCheckpointError`: a truncated or garbled
safetensors or JSON file), and weights that do not fit the model they are loaded into in one line saying
which ``model_config.json`` keys differ (:func:`check_state_fits` / :func:`load_state_checked`), instead of
torch's line per mismatching tensor.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from robodual_core.errors import RobodualError
from robodual_core.io import atomic_dir, atomic_write_text


class DamagedCheckpointError(RobodualError):
    """A checkpoint file that cannot be read back as written (truncated, garbled, wrong dtypes); ``path``
    names it. Resuming falls back to an earlier checkpoint on this error (never on a model mismatch)."""

    def __init__(self, message: str, path: str | Path):
        super().__init__(message)
        self.path = Path(path)


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
    """Accept a checkpoint folder, a run folder (takes its latest checkpoint) or a policy folder (``robodual policy
    export``: its specialist, or its only generalist)."""
    path = Path(path)
    if (path / "policy.json").is_file() and not (path / "model.safetensors").is_file():
        from robodual_core.policy_manifest import policy_checkpoint

        return policy_checkpoint(path)
    if (path / "model.safetensors").is_file():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise RobodualError(_not_a_checkpoint(path))
    return latest


def _not_a_checkpoint(path: Path) -> str:
    expected = "expected a checkpoint folder (model.safetensors, model_config.json) or a run folder (checkpoints/<step>/)"
    if not path.exists():
        return f"'{path}' does not exist; {expected}"
    if not path.is_dir():
        return f"'{path}' is a file; {expected}"
    if not any(path.iterdir()):
        return f"'{path}' is an empty folder; {expected}"
    if (path / "model_config.json").is_file() or (path / "training_state.json").is_file():
        return f"checkpoint folder '{path}' has no model.safetensors (an incomplete or damaged checkpoint)"
    root = path / "checkpoints"
    if root.is_dir():
        partial = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.isdigit())
        if partial:
            return (f"run folder '{path}' has no complete checkpoint: checkpoints/{partial[-1]} lacks "
                    "training_state.json; train (or --resume) it first")
        return f"run folder '{path}' has no checkpoints yet; train it first"
    return (f"'{path}' is neither a checkpoint folder (with model.safetensors) nor a run folder "
            "with checkpoints/<step>/; train one first or pass the right path")


def pin_checkpoint(path: str | Path) -> Path:
    """The one folder a policy path stands for now, absolute: a run folder's latest checkpoint, else the folder
    itself (a checkpoint, an OpenVLA-format or merged model folder). What is loaded, hashed and recorded for
    later (a generalist cache, a specialist's generalist.json) is then the same fixed folder, not whatever
    checkpoint a run folder holds last when it is read again."""
    p = Path(path)
    if (p / "policy.json").is_file() and not (p / "model.safetensors").is_file():
        return resolve_checkpoint(p).resolve()  # a policy folder: the checkpoint in it
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


def load_tensors(path: str | Path, dtypes: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every tensor of a safetensors file; a missing, truncated or garbled file is a one-line error naming it
    (:class:`DamagedCheckpointError`), as is a tensor whose dtype is not ``dtypes[name]`` where given."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise DamagedCheckpointError(f"checkpoint file '{path}' does not exist", path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise DamagedCheckpointError(f"checkpoint file '{path}' is damaged or not a safetensors file "
                                     f"({' '.join(str(exc).split())}); restore it or use another checkpoint",
                                     path) from None
    for name, dtype in (dtypes or {}).items():
        if name in tensors and tensors[name].dtype != dtype:
            raise DamagedCheckpointError(f"checkpoint file '{path}': tensor '{name}' is "
                                         f"{_dtype_name(tensors[name].dtype)}, expected {_dtype_name(dtype)}", path)
    return tensors


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def config_differences(saved: Any, current: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, saved value, current value)`` for each leaf where two model configs differ."""
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        for k in list(saved) + [k for k in current if k not in saved]:
            key = f"{prefix}.{k}" if prefix else str(k)
            if k not in saved or k not in current:
                out.append((key, saved.get(k, "(absent)"), current.get(k, "(absent)")))
            else:
                out += config_differences(saved[k], current[k], key)
        return out
    if isinstance(saved, list) and isinstance(current, list) and len(saved) == len(current):
        return [d for i, (a, b) in enumerate(zip(saved, current, strict=True))
                for d in config_differences(a, b, f"{prefix}[{i}]")]
    return [] if saved == current else [(prefix, saved, current)]


def check_state_fits(model_state: dict[str, Any], state: dict[str, Any], path: str | Path,
                     saved_config: dict[str, Any] | None = None, current_config: dict[str, Any] | None = None,
                     strict: bool = True) -> None:
    """Refuse, in one line, tensors ``state`` (read from ``path``) that do not fit ``model_state`` (the
    model's ``state_dict()``): other shapes, other dtypes, or (``strict``) missing/extra names.

    The line names what differs between the checkpoint's ``model_config.json`` (``saved_config``) and the
    model's (``current_config``) when those are given and differ, else the first mismatching tensor. A
    tensor of the right shape but another dtype is damage (:class:`DamagedCheckpointError`); shapes are a
    model mismatch (:class:`RobodualError`)."""
    shapes = [k for k, v in state.items() if k in model_state and tuple(v.shape) != tuple(model_state[k].shape)]
    missing = [k for k in model_state if k not in state] if strict else []
    extra = [k for k in state if k not in model_state]
    if shapes or missing or extra:
        n = len(shapes) + len(missing) + len(extra)
        diffs = config_differences(saved_config, current_config) if saved_config is not None and \
            current_config is not None else []
        if diffs:
            listed = ", ".join(f"{k} (checkpoint {_short(a)}, here {_short(b)})" for k, a, b in diffs[:4])
            more = f" and {len(diffs) - 4} more" if len(diffs) > 4 else ""
            raise RobodualError(f"checkpoint '{path}' holds another model ({n} tensors do not fit): its "
                                f"model_config.json differs in {listed}{more}; load it with its own config or "
                                "start a new run")
        if shapes:
            k = shapes[0]
            first = (f"tensor '{k}' is {list(state[k].shape)}, the model's is {list(model_state[k].shape)}")
        elif missing:
            first = f"it lacks tensor '{missing[0]}' of the model"
        else:
            first = f"it has tensor '{extra[0]}', which the model lacks"
        raise RobodualError(f"checkpoint file '{path}' does not fit this model: {first}"
                            f"{f' ({n - 1} more mismatches)' if n > 1 else ''}")
    for k, v in state.items():
        if k in model_state and v.dtype != model_state[k].dtype:
            raise DamagedCheckpointError(f"checkpoint file '{path}': tensor '{k}' is {_dtype_name(v.dtype)}, the "
                                         f"model's is {_dtype_name(model_state[k].dtype)}", path)


def _short(v: Any) -> str:
    text = json.dumps(v) if not isinstance(v, str) else v
    return text if len(text) <= 40 else text[:37] + "..."


def load_state_checked(model: Any, state: dict[str, Any], path: str | Path, saved_config: dict[str, Any] | None = None,
                       strict: bool = True) -> Any:
    """``model.load_state_dict(state, strict)`` after :func:`check_state_fits` (one-line errors; ``saved_config``:
    the checkpoint's ``model_config.json``, compared with ``model.robodual_config()``)."""
    current = model.robodual_config() if saved_config is not None and hasattr(model, "robodual_config") else None
    check_state_fits(model.state_dict(), state, path, saved_config, current, strict=strict)
    return model.load_state_dict(state, strict=strict)


def check_kind(ckpt: str | Path, meta: dict[str, Any], kind: str) -> None:
    """Refuse a checkpoint of the other kind (a generalist folder where a specialist is expected, or the
    reverse) in one line naming the folder, what it holds and what was expected. ``meta``: its model_config."""
    held = checkpoint_kind(meta)
    if held is not None and held != kind:
        raise RobodualError(f"'{ckpt}' holds a {held} (family '{meta.get('family')}'), but a {kind} checkpoint is "
                            f"expected here; pass a {kind} run or checkpoint folder")


def checkpoint_kind(meta: dict[str, Any]) -> str | None:
    """``specialist`` or ``generalist`` for a checkpoint's model_config (None when it does not say)."""
    if meta.get("kind") in ("specialist", "generalist"):
        return meta["kind"]
    if "specialist" in meta:
        return "specialist"
    if "model" in meta and "action_dim" in meta:  # the generalist families' robodual_config()
        return "generalist"
    return None


def weights_file(ckpt_dir: str | Path, ema: bool = True) -> Path:
    """The weights file :func:`load_model_state` reads: ``ema.safetensors`` when present and ``ema``."""
    ckpt_dir = resolve_checkpoint(ckpt_dir)
    if ema and (ckpt_dir / "ema.safetensors").is_file():
        return ckpt_dir / "ema.safetensors"
    return ckpt_dir / "model.safetensors"


def load_model_state(ckpt_dir: str | Path, ema: bool = True) -> dict[str, Any]:
    """Model weights of a checkpoint: the EMA weights when present and ``ema`` is true."""
    return load_tensors(weights_file(ckpt_dir, ema))


def read_json(ckpt_dir: str | Path, name: str, expect: type | None = None) -> Any:
    """A JSON file of a checkpoint; missing, unreadable or not JSON (or not ``expect``) is one line naming it."""
    path = Path(ckpt_dir) / (name if name.endswith(".json") else f"{name}.json")
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DamagedCheckpointError(f"checkpoint file '{path}' is missing", path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DamagedCheckpointError(f"cannot read checkpoint file '{path}': {exc}", path) from None
    except json.JSONDecodeError as exc:
        raise DamagedCheckpointError(f"checkpoint file '{path}' is not valid JSON: {exc}", path) from None
    if expect is not None and not isinstance(data, expect):
        raise DamagedCheckpointError(f"checkpoint file '{path}' must hold a JSON {_json_kind(expect)}, found "
                                     f"{_json_kind(type(data))}", path)
    return data


def _json_kind(tp: type) -> str:
    return {dict: "object", list: "array", str: "string", int: "number", float: "number"}.get(tp, tp.__name__)


def read_checkpoint_meta(ckpt_dir: str | Path, kind: str | None = None) -> dict[str, Any]:
    """``model_config.json`` of a checkpoint (or of a run folder's latest checkpoint); with ``kind``
    (``specialist``/``generalist``) a checkpoint of the other kind is refused (:func:`check_kind`)."""
    ckpt = resolve_checkpoint(ckpt_dir)
    meta = read_json(ckpt, "model_config", expect=dict)
    if kind is not None:
        check_kind(ckpt, meta, kind)
    return meta


def run_dataset_spec(ckpt_dir: str | Path, keys: list[str]) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{key: (shape of one frame, dtype)}`` of the dataset a run was trained on (from the run's config.json).

    Empty when the run folder or its dataset cannot be found: a policy still runs, it just cannot tell a
    client what to send.
    """
    ckpt = Path(ckpt_dir)
    recorded = ckpt / "observation_spec.json"  # a policy folder's checkpoint carries the spec of its dataset
    if recorded.is_file():
        try:
            spec = json.loads(recorded.read_text())
            return {k: (tuple(int(n) for n in spec[k][0]), str(spec[k][1])) for k in keys if k in spec}
        except (OSError, ValueError, TypeError, KeyError, IndexError):
            raise RobodualError(f"'{recorded}' is damaged: expected {{key: [shape, dtype]}}") from None
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
