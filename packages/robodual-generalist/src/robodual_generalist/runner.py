"""The native generalist families' runtime adapter: the kernel's :class:`GeneralistModelRunner`, loaded through
the family's model class (one observation in, one :class:`GeneralistOutput` out, pooled as the cache was)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from robodual_core.runtime.runners import GeneralistModelRunner


class VLARunner(GeneralistModelRunner):
    """For :mod:`robodual_core.runtime` and online conditioning of specialist training
    (``robodual train specialist --generalist RUN``)."""

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", pooling: str = "none", latent_dtype: str = "float32",
             model_cls: Any = None) -> VLARunner:
        """``pooling`` must be the one of the cache the specialist was trained on (its generalist.json);
        ``model_cls`` is the generalist family's class (its ``load_runner`` passes itself)."""
        loader = model_cls.from_checkpoint if model_cls is not None else None
        return super().load(path, loader, device=device, pooling=pooling, latent_dtype=latent_dtype)
