"""Policy folders: what ``robodual policy export RUN OUT`` writes, and what ``--policy`` / ``serve`` load.

A self-contained copy of one policy, loadable without its training runs or dataset::

    OUT/
      README.md           model card: YAML metadata (generalist, sensors, action space, training data, evaluation)
      policy.json         manifest: kind (dual | specialist | generalist), the folders below, the sources, and the
                          sha256 and size of every file (checked when the policy is loaded)
      config.json         the resolved training config of the run (generalist_config.json: its generalist's run)
      specialist/         the specialist checkpoint (weights, model config, normalizer.json, preprocessing.json,
                          generalist.json naming ../generalist and the hash it was trained with, observation_spec.json)
      generalist/         the generalist checkpoint the specialist was trained with (a generalist-only policy: only it)
      eval/<name>/results.json   the run's evaluation results

Checkpoints are copied byte for byte (training-only state, the optimizer and RNG, is left out), so the generalist
hash a specialist recorded in training is still the one verified when the policy is loaded. A LoRA generalist
trained on a base folder needs that base (named in the card and manifest); everything else is in the folder.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from robodual_core.errors import RobodualError
from robodual_core.policy_manifest import (  # noqa: F401 (policy_checkpoint, verify_policy_folder: API)
    FORMAT,
    MANIFEST,
    _sha256,
    is_policy_folder,
    policy_checkpoint,
    read_manifest,
    verify_policy_folder,
)

TRAINING_ONLY = ("optimizer.safetensors", "rng.safetensors")
OBSERVATION_SPEC = "observation_spec.json"


# -- reading -----------------------------------------------------------------------------------------------
# -- export ------------------------------------------------------------------------------------------------
def export_policy(run: str | Path, out: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Write the policy of ``run`` (a run or checkpoint folder: a specialist, with the generalist it records, or a
    generalist) to the policy folder ``out``, atomically. Returns the manifest."""
    from robodual_core.checkpoint import read_json, resolve_checkpoint
    from robodual_core.io import atomic_dir
    from robodual_core.outputs import check_output
    from robodual_core.runtime.loading import checkpoint_kind, recorded_generalist

    run, out = Path(run), Path(out)
    if is_policy_folder(run):
        raise RobodualError(f"RUN '{run}' is already a policy folder (it has {MANIFEST}); expected a training run "
                            "or checkpoint folder")
    ckpt = resolve_checkpoint(run).resolve()
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else None
    kind = checkpoint_kind(ckpt)
    gen_src: Path | None = None
    record: dict[str, Any] = {}
    if kind == "specialist" and (ckpt / "generalist.json").is_file():
        record = read_json(ckpt, "generalist", expect=dict)
        gen_src = Path(recorded_generalist(ckpt, record)).resolve()  # the hash recorded in training, checked
    policy_kind = "generalist" if kind == "generalist" else ("dual" if gen_src is not None else "specialist")
    inputs = [run, ckpt] + ([gen_src] if gen_src else [])
    check_output(out, flag="OUT", expect="folder", inputs=inputs, overwrite=overwrite, legacy=is_policy_folder,
                 what="a policy folder")
    if out.exists() and not overwrite:
        raise RobodualError(f"OUT '{out}' exists; pass --overwrite to replace it")
    with atomic_dir(out, overwrite=True) as tmp:
        from robodual_core.outputs import mark_output

        mark_output(tmp, "policy")  # a later --overwrite recognises the folder as one robodual wrote
        main = tmp / kind
        _copy_checkpoint(ckpt, main)
        _write_observation_spec(ckpt, main)
        gen_dir = None
        if gen_src is not None:
            gen_dir = tmp / "generalist"
            _copy_checkpoint(gen_src, gen_dir)
            _write_observation_spec(gen_src, gen_dir)
            from robodual_core.data.generalist_cache import checkpoint_hash

            if record.get("hash") and checkpoint_hash(gen_dir) != record["hash"]:  # a copy must hash the same
                raise RobodualError(f"the copy of generalist '{gen_src}' in '{out}' hashes differently from the "
                                    "original; check the disk and export again")
            from robodual_core.io import atomic_write_json

            atomic_write_json(main / "generalist.json", {**record, "checkpoint": "../generalist",
                                                         "exported_from": str(gen_src)})
        config = _run_config(run_dir)
        if config is not None:
            (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        gen_config = _run_config(gen_src.parent.parent if gen_src and gen_src.parent.name == "checkpoints" else None)
        if gen_config is not None:
            (tmp / "generalist_config.json").write_text(json.dumps(gen_config, indent=2) + "\n")
        evaluations = _copy_evaluations(run_dir, tmp / "eval")
        card = model_card(tmp, policy_kind, ckpt, gen_src, config, gen_config, evaluations, out.name)
        (tmp / "README.md").write_text(card)
        manifest = {
            "format": FORMAT, "kind": policy_kind, "checkpoint": kind,
            "generalist": "generalist" if gen_dir is not None else None,
            "requires_base": _required_base(tmp / ("generalist" if gen_dir is not None else kind)),
            "source": {"run": str(run_dir or run), "checkpoint": str(ckpt),
                       "generalist": str(gen_src) if gen_src else None},
            # what an evaluator rebuilds the training setting from (e.g. Meta-World's image size and cameras)
            "dataset": {k: v for k, v in (_dataset_info(ckpt) or {}).items()
                        if k in ("path", "source", "generator", "fps", "modalities")},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
            "robodual_version": _version(),
            "files": {str(f.relative_to(tmp)): {"sha256": _sha256(f), "bytes": f.stat().st_size}
                      for f in sorted(tmp.rglob("*")) if f.is_file()},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _copy_checkpoint(src: Path, dst: Path) -> None:
    """A checkpoint (or model) folder without its training-only state; the files are copied byte for byte."""
    shutil.copytree(src, dst, symlinks=False, ignore=shutil.ignore_patterns(*TRAINING_ONLY, "__pycache__"))


def _write_observation_spec(ckpt: Path, dst: Path) -> None:
    """What the run's dataset holds per observation key (shape of one frame, dtype), read now: the exported
    policy can tell clients what to send without the dataset (robodual_core.checkpoint.run_dataset_spec)."""
    from robodual_core.checkpoint import run_dataset_spec

    keys = _dataset_keys(ckpt)
    spec = run_dataset_spec(ckpt, keys) if keys else {}
    if spec:
        (dst / OBSERVATION_SPEC).write_text(json.dumps({k: [list(s), d] for k, (s, d) in spec.items()}, indent=2))


def _dataset_keys(ckpt: Path) -> list[str]:
    info = _dataset_info(ckpt)
    return [k for k in info.get("keys", []) if k != "action"] if info else []


def _dataset_info(ckpt: Path | None) -> dict[str, Any] | None:
    """The training dataset of the run holding ``ckpt``: path, episodes, steps, fps, keys, modalities, tasks,
    instructions, action space (None when the run or its dataset is gone)."""
    if ckpt is None:
        return None
    config = _run_config(ckpt.parent.parent if ckpt.parent.name == "checkpoints" else None)
    dataset = config.get("dataset") if config else None
    if not dataset:
        return None
    path = Path(dataset)
    if not path.is_absolute() and not path.exists():
        path = ckpt.parent.parent / path
    try:
        from robodual_core.data import open_dataset

        ds = open_dataset(path)
        tasks = sorted(set(ds.tasks)) if ds.tasks else []
        return {"path": str(dataset), "episodes": int(ds.num_episodes), "steps": int(ds.num_steps),
                "fps": float(ds.fps), "keys": list(ds.keys), "modalities": dict(ds.modalities),
                "tasks": tasks, "instructions": sorted(set(ds.instructions)), "action_space": dict(ds.action_space),
                "source": ds.attrs.get("source"), "generator": ds.attrs.get("generator")}
    except Exception:  # a moved or unreadable dataset: the card says what the config names, no more
        return {"path": str(dataset)}


def _run_config(run_dir: Path | None) -> dict[str, Any] | None:
    if run_dir is None or not (run_dir / "config.json").is_file():
        return None
    try:
        config = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def _copy_evaluations(run_dir: Path | None, dst: Path) -> list[dict[str, Any]]:
    """``run_dir/eval/<name>/results.json`` copied, with the numbers a card shows."""
    found: list[dict[str, Any]] = []
    if run_dir is None or not (run_dir / "eval").is_dir():
        return found
    for results in sorted((run_dir / "eval").glob("*/results.json")):
        try:
            data = json.loads(results.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        name = results.parent.name
        (dst / name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(results, dst / name / "results.json")
        metrics = {k: data[k] for k in ("success_rate", "avg_len", "mean_episode_length", "mse", "l1",
                                         "gripper_accuracy") if isinstance(data.get(k), int | float)}
        chain = data.get("success_rates") or data.get("chain_success")
        if isinstance(chain, list) and all(isinstance(v, int | float) for v in chain):
            metrics.update({f"success_{i + 1}_in_a_row": float(v) for i, v in enumerate(chain)})
        tasks = data.get("tasks") if isinstance(data.get("tasks"), dict) else {}
        found.append({"name": name, "metrics": metrics, "episodes": len(data["episodes"])
                      if isinstance(data.get("episodes"), list) else None,
                      "tasks": {t: v["success_rate"] for t, v in tasks.items()
                                if isinstance(v, dict) and isinstance(v.get("success_rate"), int | float)},
                      "policy_kind": data.get("kind")})
    return found


def _required_base(gen_ckpt: Path) -> dict[str, Any] | None:
    """The base folder a LoRA generalist checkpoint reads its frozen weights from (not in the policy folder)."""
    try:
        meta = json.loads((gen_ckpt / "model_config.json").read_text())
    except (OSError, ValueError):
        return None
    model = meta.get("model") if isinstance(meta, dict) else None
    if not isinstance(model, dict) or meta.get("kind") == "specialist":
        return None
    base = model.get("base")
    if not base or base == "tiny" or not model.get("lora"):
        return None
    return {"base": str(base), "base_hash": meta.get("base_hash")}


def _version() -> str:
    from robodual_core import __version__

    return str(__version__)


# -- the model card --------------------------------------------------------------------------------------------
def model_card(folder: Path, kind: str, ckpt: Path, gen_src: Path | None, config: dict[str, Any] | None,
               gen_config: dict[str, Any] | None, evaluations: list[dict[str, Any]], name: str) -> str:
    """README.md: YAML metadata (Hugging Face model-card fields plus a ``robodual`` block) and a short text."""
    import yaml

    main = folder / ("generalist" if kind == "generalist" else "specialist")
    meta = _json(main / "model_config.json")
    data = _dataset_info(ckpt)
    gen_dir = folder / "generalist" if (folder / "generalist").is_dir() else None
    gen_meta = _json(gen_dir / "model_config.json") if gen_dir else {}
    norm = _json(main / "normalizer.json")
    spec = _json(main / OBSERVATION_SPEC)
    robodual: dict[str, Any] = {"kind": kind, "format": FORMAT}
    if gen_dir is not None:
        from robodual_core.data.generalist_cache import checkpoint_hash

        model = gen_meta.get("model") if isinstance(gen_meta.get("model"), dict) else {}
        source = (gen_config or {}).get("base_source")
        robodual["generalist"] = {
            "path": "generalist" if kind != "generalist" else "generalist", "family": gen_meta.get("family"),
            "base": (source or {}).get("repo_id") or model.get("base"), "lora": model.get("lora"),
            "k_g": model.get("k_g"), "image_key": model.get("image_key"), "action_dim": gen_meta.get("action_dim"),
            "hash": checkpoint_hash(gen_dir), "trained_on": (gen_config or {}).get("dataset")}
        if source:
            robodual["generalist"]["base_source"] = source
        required = _required_base(gen_dir)
        if required:
            robodual["generalist"]["requires_base"] = required
    if kind != "generalist":
        spec_model = meta.get("specialist") if isinstance(meta.get("specialist"), dict) else {}
        robodual["specialist"] = {k: spec_model.get(k) for k in ("family", "conditioner", "generalist_inputs", "k_s",
                                                                   "hidden", "depth", "heads") if k in spec_model}
        if isinstance(spec_model.get("diffusion"), dict):
            robodual["specialist"]["inference_steps"] = spec_model["diffusion"].get("inference_steps")
    robodual["sensors"] = _sensors(kind, meta, gen_meta, spec)
    action_dim = (meta.get("specialist") or {}).get("action_dim") if kind != "generalist" else gen_meta.get("action_dim")
    action = norm.get("action") if isinstance(norm.get("action"), dict) else {}
    robodual["action_space"] = {"dim": action_dim, "normalization": action.get("mode"),
                                **({"space": data["action_space"]} if data and data.get("action_space") else {}),
                                **({k: action[k] for k in ("q01", "q99", "min", "max", "mean", "std") if k in action})}
    if kind != "generalist":
        robodual["action_space"]["chunk"] = (meta.get("specialist") or {}).get("k_s")
    if data:
        robodual["training_data"] = {k: data[k] for k in ("path", "source", "episodes", "steps", "fps", "tasks",
                                                          "generator") if data.get(k) not in (None, [], "", {})}
        if data.get("instructions"):
            robodual["training_data"]["instructions"] = len(data["instructions"])
    if evaluations:
        robodual["evaluation"] = {e["name"]: {**e["metrics"], **({"tasks": e["tasks"]} if e["tasks"] else {}),
                                              **({"episodes": e["episodes"]} if e["episodes"] else {})}
                                  for e in evaluations}
    front: dict[str, Any] = {"library_name": "robodual", "pipeline_tag": "robotics",
                             "tags": ["robotics", "robodual", f"{kind}-policy", "diffusion-policy" if kind != "generalist"
                                      else "vision-language-action"]}
    base_id = (robodual.get("generalist") or {}).get("base")
    if base_id and base_id != "tiny" and "/" in str(base_id) and not Path(str(base_id)).is_absolute():
        front["base_model"] = base_id
    if evaluations:
        front["model-index"] = [{"name": name, "results": [
            {"task": {"type": "robotics", "name": e["name"]},
             "dataset": {"type": e["name"], "name": e["name"]},
             "metrics": [{"type": k, "value": float(v), "name": k.replace("_", " ")}
                         for k, v in e["metrics"].items()]} for e in evaluations if e["metrics"]]}]
    front["robodual"] = robodual
    header = yaml.safe_dump(front, sort_keys=False, allow_unicode=True, width=120)
    return f"---\n{header}---\n\n" + _card_text(name, kind, robodual, evaluations)


def _sensors(kind: str, meta: dict[str, Any], gen_meta: dict[str, Any], spec: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    model = gen_meta.get("model") if isinstance(gen_meta.get("model"), dict) else {}
    if model.get("image_key"):
        out.append({"name": "generalist camera", "keys": [model["image_key"]], "used_by": "generalist"})
    if kind != "generalist":
        for sensor in (meta.get("specialist") or {}).get("sensors") or []:
            if isinstance(sensor, dict):
                entry = {"name": sensor.get("name"), "used_by": "specialist"}
                options = sensor.get("options") if isinstance(sensor.get("options"), dict) else sensor
                for key in ("modality", "keys", "backbone", "image_size"):
                    if key in options:
                        entry[key] = options[key]
                out.append(entry)
        proprio = (meta.get("specialist") or {}).get("proprio_dim")
        if proprio:
            out.append({"name": "proprio", "keys": ["proprio"], "dim": proprio, "used_by": "specialist"})
    for entry in out:
        shapes = {k: spec[k][0] for k in entry.get("keys") or [] if k in spec}
        if shapes:
            entry["shape"] = shapes
    return out


def _card_text(name: str, kind: str, robodual: dict[str, Any], evaluations: list[dict[str, Any]]) -> str:
    what = {"dual": "a dual-system policy: a generalist (VLA) conditions a diffusion specialist",
            "specialist": "a specialist-only diffusion policy", "generalist": "a generalist-only (VLA) policy"}[kind]
    lines = [f"# {name}", "", f"A robodual policy, {what}. Load it with any command that takes `--policy`:", "",
             "```bash", "robodual serve --policy .", "robodual eval offline --policy . --dataset DATA.zarr", "```", "",
             "Every file is listed with its sha256 in `policy.json` and checked when the policy is loaded."]
    gen = robodual.get("generalist")
    if gen and gen.get("requires_base"):
        lines += ["", f"The generalist is a LoRA adapter on `{gen['requires_base']['base']}`, which is not in this "
                      "folder: that base must be present at load time."]
    action = robodual.get("action_space", {})
    lines += ["", "## Inputs and outputs", ""]
    for sensor in robodual.get("sensors", []):
        shapes = sensor.get("shape") or {}
        keys = ", ".join(f"`{k}` {shapes[k]}" if k in shapes else f"`{k}`" for k in sensor.get("keys") or [])
        lines.append(f"- {sensor.get('name')} ({sensor.get('used_by')}): {keys}")
    lines.append(f"- actions: {action.get('dim')} dimensions, normalized with {action.get('normalization')}"
                 + (f", chunks of {action['chunk']}" if action.get("chunk") else ""))
    data = robodual.get("training_data")
    if data:
        lines += ["", "## Training data", "", f"`{data.get('path')}`" + (
            f": {data['episodes']} episodes, {data['steps']} steps" if "episodes" in data else "")
            + (f", tasks {', '.join(map(str, data['tasks']))}" if data.get("tasks") else "")]
    if evaluations:
        lines += ["", "## Evaluation", "", "| evaluation | metric | value |", "|---|---|---|"]
        for e in evaluations:
            for k, v in e["metrics"].items():
                lines.append(f"| {e['name']} | {k} | {v:.4g} |")
        lines += ["", "Full results in `eval/<name>/results.json`."]
    return "\n".join(lines) + "\n"


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
