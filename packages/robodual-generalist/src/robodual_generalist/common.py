"""Small helpers both generalist families use (a leaf module: it imports no other module of the package)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from robodual_core.errors import RobodualError


def checkpointing_enable(model: Any) -> None:
    """Activation checkpointing through transformers' current name (``gradient_checkpointing_enable`` is deprecated)."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()


def check_latent_layer(layer: int, config: Any) -> None:
    """``model.latent_layer`` must index the language model's hidden states (0 = embeddings, -1 = last layer):
    checked when the model is built, not at the first ``generate`` after training."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    n = int(text.num_hidden_layers)
    if not -(n + 1) <= layer <= n:
        raise RobodualError(f"config key 'model.latent_layer' is {layer}; the language model has {n} layers, so "
                            f"expected {-(n + 1)}..{n} (a hidden_states index: 0 = embeddings, -1 = last layer)")


def folder_hash(path: Path) -> str:
    """sha256 over an OpenVLA-format folder's config.json and weight files (content, in index order)."""
    from robodual_generalist.prismatic import weight_files

    h = hashlib.sha256()
    for f in [path / "config.json", *weight_files(path)]:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]
