"""``robodual generalist cache``: the model-agnostic loop lives with the kernel's cache writer
(:func:`robodual_core.data.generalist_cache.build_cache`), which loads any registered generalist family.
Re-exported here for the callers that import it from this package."""

from __future__ import annotations

from robodual_core.data.generalist_cache import build_cache, load_images
from robodual_core.data.generalist_cache import pad_tokens as _pad_tokens

__all__ = ["_pad_tokens", "build_cache", "load_images"]
