"""Typed configs of the generalist (model) and of ``robodual train generalist`` (model + data + trainer)."""

from __future__ import annotations

from dataclasses import dataclass, field

from robodual_core.training import TrainerConfig


@dataclass
class TinyConfig:
    """Sizes of the CPU-sized native model (``base: tiny``); same architecture as OpenVLA."""

    image_size: int = 64
    patch_size: int = 16
    vision_dim: int = 32
    vision_depth: int = 2
    vision_heads: int = 2
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 256
    # built-in text tokenizer: "words" (whole instruction words as one id, bytes otherwise) or "bytes"
    tokenizer: str = "words"


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
    family: str = "auto"  # auto | openvla | hf_vlm
    image_key: str = "rgb_static"
    k_g: int = 8
    lora: bool = True
    lora_rank: int = 32
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: str = "all-linear"
    freeze_vision: bool = True
    train_projector: bool = True
    latent_layer: int = -1  # hidden_states index for task/action latents (-1 = last layer)
    dtype: str = "float32"  # float32 | bfloat16 | float16
    gradient_checkpointing: bool = False
    seed: int = 0
    tiny: TinyConfig = field(default_factory=TinyConfig)


@dataclass
class DataConfig:
    val_ratio: float = 0.0
    split_seed: int = 0


def _generalist_trainer() -> TrainerConfig:
    # paper App. B / OpenVLA: AdamW, constant lr 2e-5, weight decay 0.01, no EMA
    return TrainerConfig(steps=2000, batch_size=16, num_workers=2, lr=2e-5, weight_decay=0.01, warmup_steps=0,
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
