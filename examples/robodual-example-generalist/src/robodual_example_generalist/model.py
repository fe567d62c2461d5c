"""A small generalist: a downsampled frame and a hashed bag of words -> an action chunk and latents.

Not a VLA: it shows what the kernel needs of one (``robodual_core.interfaces.Generalist``): ``loss``,
``generate`` -> ``GeneralistOutput`` (actions ``[B, k_g, D]`` in [-1, 1], task latents ``[B, Nt, H]`` one per
instruction word, action latents ``[B, k_g, H]`` one per chunk step, with masks), ``task_token_count``,
``hidden_size``, ``image_key`` and ``robodual_config``.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from robodual_core.config import load_config, ranged, to_dict
from robodual_core.errors import RobodualError
from robodual_core.interfaces import Generalist, GeneralistOutput
from robodual_core.training import TrainerConfig

FAMILY = "bow_mlp"


@dataclass
class BowConfig:
    family: Literal["bow_mlp"] = "bow_mlp"
    image_key: str = "rgb_static"
    k_g: int = ranged(4, ge=1)
    image_size: int = ranged(8, ge=1)  # frames are average-pooled to image_size x image_size
    vocab: int = ranged(512, ge=1)  # hash buckets of the instruction words
    hidden: int = ranged(64, ge=1)  # H of the latents
    max_words: int = ranged(16, ge=1)  # task tokens: one per word, at most this many
    seed: int = ranged(0, ge=0)


@dataclass
class BowDataConfig:
    val_ratio: float = ranged(0.0, ge=0, lt=1)
    split_seed: int = ranged(0, ge=0)


@dataclass
class BowTrainConfig:
    model: BowConfig = field(default_factory=BowConfig)
    data: BowDataConfig = field(default_factory=BowDataConfig)
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(
        steps=200, batch_size=16, num_workers=0, lr=1e-3, warmup_steps=10, ema=False, ckpt_every=100))


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


class BowMLPGeneralist(nn.Module, Generalist):
    def __init__(self, cfg: BowConfig, action_dim: int):
        super().__init__()
        self.cfg, self.k_g, self.action_dim = cfg, cfg.k_g, action_dim
        h, pixels = cfg.hidden, 3 * cfg.image_size ** 2
        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed)
            self.image = nn.Sequential(nn.Linear(pixels, h), nn.GELU(), nn.Linear(h, h))
            self.word = nn.Embedding(cfg.vocab, h)
            self.trunk = nn.Sequential(nn.Linear(2 * h, 2 * h), nn.GELU(), nn.Linear(2 * h, cfg.k_g * h))
            self.head = nn.Linear(h, action_dim)

    @property
    def hidden_size(self) -> int:
        return self.cfg.hidden

    def task_token_count(self, instruction: str) -> int:
        return max(1, min(len(words(instruction)), self.cfg.max_words))

    def robodual_config(self) -> dict[str, Any]:
        return {"family": FAMILY, "kind": "generalist", "model": to_dict(self.cfg), "action_dim": self.action_dim}

    def _tokens(self, instructions: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        n = max(self.task_token_count(s) for s in instructions)
        ids = torch.zeros((len(instructions), n), dtype=torch.long)
        mask = torch.zeros((len(instructions), n), dtype=torch.bool)
        for i, text in enumerate(instructions):
            ws = words(text)[: self.cfg.max_words]
            for j, w in enumerate(ws):
                ids[i, j] = zlib.crc32(w.encode()) % self.cfg.vocab  # stable across processes (hash() is not)
            mask[i, : max(1, len(ws))] = True  # an empty instruction is one (bucket 0) token
        return ids.to(device), mask.to(device)

    def _forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        obs = batch["obs"]
        if self.cfg.image_key not in obs:
            raise RobodualError(f"bow_mlp reads obs key '{self.cfg.image_key}' but the batch has {sorted(obs)}; "
                                "set model.image_key")
        device = self.head.weight.device
        x = obs[self.cfg.image_key].to(device).float()  # [B, 3, H, W] in [0, 1]
        if x.ndim == 5:  # [B, T, C, H, W] history: the current frame
            x = x[:, -1]
        image = self.image(nn.functional.adaptive_avg_pool2d(x, self.cfg.image_size).flatten(1))  # [B, H]
        instructions = [batch["instruction"]] if isinstance(batch["instruction"], str) else list(batch["instruction"])
        ids, mask = self._tokens(instructions, device)
        m = mask.unsqueeze(-1).float()
        task = (self.word(ids) + image[:, None]) * m  # [B, Nt, H]: each word seen with the scene
        bag = (self.word(ids) * m).sum(1) / m.sum(1)  # the bag-of-words embedding [B, H]
        action_latents = self.trunk(torch.cat([image, bag], -1)).unflatten(-1, (self.k_g, -1))  # [B, k_g, H]
        return torch.tanh(self.head(action_latents)), task, action_latents, mask

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        actions, *_ = self._forward(batch)
        target = batch["action"][:, : self.k_g].to(actions.device).float()
        loss = nn.functional.mse_loss(actions, target)
        return loss, {"mse": float(loss.detach())}

    @torch.no_grad()
    def generate(self, batch: dict[str, Any]) -> GeneralistOutput:
        actions, task, action_latents, mask = self._forward(batch)
        ones = torch.ones(action_latents.shape[:2], dtype=torch.bool, device=actions.device)
        return GeneralistOutput(actions, task, action_latents, mask, ones)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: Any = "cpu") -> BowMLPGeneralist:
        from robodual_core.checkpoint import (
            load_model_state,
            load_state_checked,
            read_json,
            resolve_checkpoint,
        )

        ckpt = resolve_checkpoint(path)
        meta = read_json(ckpt, "model_config", expect=dict)
        if meta.get("family") != FAMILY:
            raise RobodualError(f"checkpoint '{ckpt}' is a '{meta.get('family')}' model, not '{FAMILY}'")
        model = cls(load_config(BowConfig, base=meta["model"]), action_dim=int(meta["action_dim"]))
        load_state_checked(model, load_model_state(ckpt), ckpt, meta)
        return model.to(device).eval()
