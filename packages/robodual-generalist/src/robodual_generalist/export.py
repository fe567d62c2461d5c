"""Offline LoRA merge: a trained generalist -> a standalone OpenVLA-format folder (``hf_vlm`` generalists:
a Hugging Face folder, see :meth:`~robodual_generalist.hf_vlm.HFVLMGeneralist.save_merged`).

The folder is what OpenVLA publishes (config.json with ``norm_stats``, sharded safetensors, index) plus a
``robodual`` section in config.json (generalist config, action dim, token layout) and ``normalizer.json``,
so ``VLAGeneralist.from_checkpoint(folder)`` rebuilds the same policy without the base folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from robodual_core.config import to_dict
from robodual_core.errors import RobodualError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")


def _normalizer_dict(run: Path) -> dict[str, Any] | None:
    from robodual_core.checkpoint import resolve_checkpoint

    ckpt = resolve_checkpoint(run)
    file = ckpt / "normalizer.json"
    return json.loads(file.read_text()) if file.is_file() else None


def export_merged(run: str | Path, out: str | Path) -> Path:
    """``robodual generalist merge``: the run's family writes its standalone folder (any registered family that
    has a ``merge``)."""
    from robodual_core.families import generalist_family_of

    run, out = Path(run), Path(out)
    name, family = generalist_family_of(run)
    if family.recognizes(run):
        raise RobodualError(f"'{run}' is already a merged model folder (nothing to merge); pass a generalist "
                            "run or checkpoint folder")
    if family.merge is None:
        raise RobodualError(f"generalist family '{name}' has no merge: its checkpoints are its model (load "
                            f"'{run}' as it is)")
    return family.merge(run, out)


def merge_hf_vlm(run: str | Path, out: str | Path) -> Path:
    """An ``hf_vlm`` run -> a Hugging Face folder (LoRA merged, processor, robodual fields, normalizer)."""
    from robodual_generalist.hf_vlm import HFVLMGeneralist

    return HFVLMGeneralist.from_checkpoint(run).save_merged(Path(out), _normalizer_dict(Path(run)))


def merge_openvla(run: str | Path, out: str | Path) -> Path:
    """An ``openvla`` run -> an OpenVLA-format folder (LoRA merged)."""
    from robodual_generalist.model import VLAGeneralist
    from robodual_generalist.norm_stats import norm_stats_of
    from robodual_generalist.prismatic import save_openvla

    run, out = Path(run), Path(out)
    model = VLAGeneralist.from_checkpoint(run)
    normalizer = _normalizer_dict(run)
    model.merge_lora()
    config = dict(model.vla.config)
    gen_cfg = to_dict(model.cfg)
    gen_cfg["lora"] = False
    config["robodual"] = {**(config.get("robodual") or {}), "generalist": gen_cfg, "action_dim": model.action_dim,
                          "action_vocab_size": model.meta["action_vocab_size"],
                          "separator_id": model.meta["separator_id"],
                          "text_tokenizer": model.meta.get("text_tokenizer", "hf")}
    stats = norm_stats_of(normalizer)
    if stats:  # OpenVLA's norm_stats layout, {dataset: {action: {q01, q99, mask}}}, with the run's own mask
        config["norm_stats"] = {"robodual": stats}
    extra = {"normalizer.json": json.dumps(normalizer, indent=2)} if normalizer else {}
    base = Path(model.cfg.base)
    tokenizer = ([base / name for name in TOKENIZER_FILES if (base / name).is_file()]
                 if model.cfg.base != "tiny" and base.is_dir() else [])
    return save_openvla(model.vla, out, config=config, extra_files=extra, copy_files=tokenizer)
