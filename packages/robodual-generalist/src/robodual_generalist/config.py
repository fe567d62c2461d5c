"""Typed configs of the generalist (model) and of ``robodual train generalist`` (model + data + trainer)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from robodual_core.config import Check, fits_in_memory, ranged
from robodual_core.training import SEED_MAX, TrainerConfig


@dataclass
class TinyConfig:
    """Sizes of the CPU-sized native model (``base: tiny``); same architecture as OpenVLA."""

    image_size: int = ranged(64, ge=1)
    patch_size: int = ranged(16, ge=1)
    vision_dim: int = ranged(32, ge=1)
    # the projector reads the second-to-last block's features (OpenVLA's layer), so at least 2 blocks
    vision_depth: int = ranged(2, ge=2)
    vision_heads: int = ranged(2, ge=1)
    hidden_size: int = ranged(128, ge=2)
    num_layers: int = ranged(2, ge=1)
    num_heads: int = ranged(4, ge=1)
    intermediate_size: int = ranged(256, ge=1)
    # built-in text tokenizer: "words" (whole instruction words as one id, bytes otherwise) or "bytes"
    tokenizer: Literal["words", "bytes"] = "words"

    __config_checks__ = (
        Check("image_size", "a multiple of {prefix}patch_size ({patch_size})", lambda c: c.image_size % c.patch_size == 0),
        Check("vision_dim", "a multiple of {prefix}vision_heads ({vision_heads})", lambda c: c.vision_dim % c.vision_heads == 0),
        # the language model's rotary embeddings rotate pairs of each head's channels
        Check("hidden_size", "a multiple of {prefix}num_heads ({num_heads}) with an even width per head",
              lambda c: c.hidden_size % c.num_heads == 0 and (c.hidden_size // c.num_heads) % 2 == 0),
        Check("hidden_size", "small enough that {num_layers} layers of about 4 x hidden^2 + 3 x hidden x "
                             "{prefix}intermediate_size float32 weights fit in this machine's free memory",
              lambda c: fits_in_memory(c.num_layers * (4.0 * c.hidden_size ** 2
                                                       + 3.0 * c.hidden_size * c.intermediate_size))),
    )


@dataclass
class GeneralistConfig:
    """What the generalist is and how it adapts.

    ``base``: ``tiny`` (built from ``tiny``, random init from ``seed``), a local OpenVLA-format folder, or
    any local Hugging Face VLM folder (``AutoModelForImageTextToText`` + its processor).
    ``family``: ``auto`` tells ``openvla`` (tiny / OpenVLA format) from ``hf_vlm`` by the folder.
    With ``lora``, peft LoRA adapters go on ``lora_targets`` of the language model and checkpoints hold
    only trainable weights (the base is read from ``base`` again); without it, the language model and
    projector train fully (what a tiny model wants).
    """

    base: str = "tiny"
    family: Literal["auto", "openvla", "hf_vlm"] = "auto"
    image_key: str = "rgb_static"
    k_g: int = ranged(8, ge=1)
    lora: bool = True
    lora_rank: int = ranged(32, ge=1)
    lora_alpha: int = ranged(16, ge=1)
    lora_dropout: float = ranged(0.0, ge=0, lt=1)
    lora_targets: str = "all-linear"
    freeze_vision: bool = True
    train_projector: bool = True
    # hidden_states index for task/action latents (-1 = last layer; any index, checked against the model when built)
    latent_layer: int = ranged(-1)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    gradient_checkpointing: bool = False
    # chunk decoding: "static" (static KV cache, selection on the device; robodual_generalist.decoding),
    # "dynamic" (growing cache, a host round trip per token), "recompute" (no cache)
    decoding: Literal["static", "dynamic", "recompute"] = "static"
    # the static decode step as a CUDA graph: auto (on CUDA), on, off
    cuda_graphs: Literal["auto", "on", "off"] = "auto"
    seed: int = ranged(0, ge=0, le=SEED_MAX)
    tiny: TinyConfig = field(default_factory=TinyConfig)


@dataclass
class DataConfig:
    val_ratio: float = ranged(0.0, ge=0, lt=1)
    split_seed: int = ranged(0, ge=0, le=SEED_MAX)


def _generalist_trainer() -> TrainerConfig:
    # paper App. B / OpenVLA: AdamW, constant lr 2e-5, weight decay 0.01, no EMA
    return TrainerConfig(steps=2000, batch_size=16, num_workers="auto", lr=2e-5, weight_decay=0.01, warmup_steps=0,
                         scheduler="constant", grad_clip=1.0, ema=False, ckpt_every=500)


@dataclass
class GeneralistTrainConfig:
    model: GeneralistConfig = field(default_factory=GeneralistConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=_generalist_trainer)


# Applied under a config file and --set when --base tiny: a tiny random model trains fully, fast.
TINY_TRAIN_DEFAULTS = {
    "model": {"base": "tiny", "lora": False, "freeze_vision": False},
    "trainer": {"lr": 1e-3, "warmup_steps": 20, "scheduler": "cosine", "batch_size": 16, "steps": 300,
                "ckpt_every": 100, "log_every": 10},
}


def stored_model_config(model: dict) -> dict:
    """A generalist model config read back from a run or checkpoint: a tiny model saved before
    ``tiny.tokenizer`` existed used the byte tokenizer, which the new default must not replace."""
    tiny = model.get("tiny")
    if isinstance(tiny, dict) and "tokenizer" not in tiny:
        model = {**model, "tiny": {**tiny, "tokenizer": "bytes"}}
    return model
