"""The ``bow_mlp`` family object: what robodual's commands and runtime call (a
:class:`robodual_core.interfaces.GeneralistFamily`). Torch loads when a method runs, not at registration."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class BowMLPFamily:
    name = "bow_mlp"
    merge = None  # no adapters to merge: `robodual generalist merge` says so in one line

    def train_config(self, path: Path | None, overrides: list[str], prior: dict[str, Any]) -> Any:
        """``robodual train generalist --set model.family=bow_mlp``: this family's own typed config."""
        from robodual_core.config import load_config
        from robodual_example_generalist.model import BowTrainConfig

        return load_config(BowTrainConfig, path, overrides, base=prior)

    def build(self, cfg: Any, action_dim: int) -> Any:
        from robodual_example_generalist.model import BowMLPGeneralist

        return BowMLPGeneralist(cfg, action_dim=action_dim)

    def from_checkpoint(self, path: str | Path, device: Any = "cpu") -> Any:
        from robodual_example_generalist.model import BowMLPGeneralist

        return BowMLPGeneralist.from_checkpoint(path, device=device)

    def load_runner(self, path: str | Path, **options: Any) -> Any:
        # the kernel's runner serves any Generalist: pooling and latent precision as the cache had them
        from robodual_core.runtime.runners import GeneralistModelRunner

        return GeneralistModelRunner.load(path, self.from_checkpoint, **options)

    def recognizes(self, path: Path) -> bool:
        return False  # it writes no standalone model folders: its checkpoints are its model

    def describe(self) -> str:
        return "model BowMLPGeneralist; config model.{image_key, k_g, image_size, vocab, hidden, max_words, seed}"


FAMILY = BowMLPFamily()
