"""Tiny stores and models for the generalist tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

INSTRUCTIONS = ("open the drawer", "push the red block left", "lift the blue block")


# `train generalist` flags for a tiny, fast CPU run
TINY = ["--set", "trainer.num_workers=0", "--set", "trainer.batch_size=4", "--set", "model.k_g=4",
        "--set", "model.tiny.image_size=32", "--set", "model.tiny.hidden_size=64", "--set", "model.tiny.num_heads=2",
        "--set", "model.tiny.intermediate_size=128", "--set", "trainer.ckpt_every=2"]


def make_store(path: Path, episodes: int = 3, steps: int = 10, size: int = 32, action_dim: int = 7,
               seed: int = 0) -> Path:
    """Episodes with one instruction and one colour each; actions depend on the episode (learnable)."""
    from robodual_core.data import DatasetWriter

    rng = np.random.default_rng(seed)
    w = DatasetWriter(path, fps=10, modalities={"rgb_static": "rgb", "proprio": "proprio", "action": "action"},
                      action_space={"dim": action_dim})
    for e in range(episodes):
        colour = np.zeros((steps, size, size, 3), np.uint8)
        colour[..., e % 3] = 200
        colour += rng.integers(0, 30, colour.shape, dtype=np.uint8)
        base = rng.uniform(-0.8, 0.8, action_dim).astype(np.float32)
        actions = np.repeat(base[None], steps, 0)
        actions[:, -1] = 1.0 if e % 2 == 0 else -1.0
        w.add_episode({"rgb_static": colour, "proprio": rng.normal(size=(steps, 4)).astype(np.float32),
                       "action": actions}, instruction=INSTRUCTIONS[e % len(INSTRUCTIONS)], task=f"task{e}")
    return w.finalize()


def tiny_cfg(**kw):
    """A GeneralistConfig for the smallest useful native model (4 patches, 2 LLaMA layers of width 64)."""
    from robodual_generalist.config import GeneralistConfig, TinyConfig

    tiny = TinyConfig(image_size=32, patch_size=16, vision_dim=16, vision_depth=2, vision_heads=2, hidden_size=64,
                      num_layers=2, num_heads=2, intermediate_size=128)
    args = dict(base="tiny", lora=False, freeze_vision=False, k_g=4, tiny=tiny)
    args.update(kw)
    return GeneralistConfig(**args)


def batch_of(n: int, size: int = 32, seed: int = 0, action_dim: int = 3, k_g: int = 4):
    import torch

    g = torch.Generator().manual_seed(seed)
    return {"obs": {"rgb_static": torch.rand(n, 3, size, size, generator=g)},
            "instruction": [INSTRUCTIONS[i % len(INSTRUCTIONS)] + " now" * (2 * i) for i in range(n)],
            "action": torch.rand(n, k_g, action_dim, generator=g) * 2 - 1}


def tiny_paligemma(folder) -> None:
    """A tiny random PaliGemma (SigLIP + Gemma) with a one-character-per-token tokenizer, saved locally."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        AutoModelForImageTextToText,
        PaliGemmaConfig,
        PaliGemmaProcessor,
        PreTrainedTokenizerFast,
        SiglipImageProcessor,
    )

    words = ["<pad>", "<eos>", "<bos>", "<unk>", "<image>", "\n"] + [chr(c) for c in range(32, 127)]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")  # one token per character
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                                   unk_token="<unk>")
    images = SiglipImageProcessor(size={"height": 32, "width": 32})
    images.image_seq_length = 16  # (32 / 8) ** 2 patches
    processor = PaliGemmaProcessor(image_processor=images, tokenizer=fast)  # adds PaliGemma's loc/seg tokens
    vocab = len(processor.tokenizer)
    config = PaliGemmaConfig(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8,
                           projection_dim=32),
        text_config=dict(model_type="gemma", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, vocab_size=vocab),
        image_token_index=fast.convert_tokens_to_ids("<image>"), projection_dim=32, vocab_size=vocab)
    torch.manual_seed(0)
    AutoModelForImageTextToText.from_config(config).save_pretrained(folder)
    processor.save_pretrained(folder)


def cli(*args):
    """Run ``robodual ARGS`` in this process; fail the test on a non-zero exit."""
    from robodual_cli.app import main

    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        assert exc.code in (0, None), f"robodual {' '.join(map(str, args))} exited with {exc.code}"
