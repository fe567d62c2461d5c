"""Latent pooling of generalist outputs (the cache's and the runtime's: what the specialist trained on).

The kernel owns it (:func:`robodual_core.data.generalist_cache.pool_output`): the cache writer and the generic
runner of any generalist family pool the same way.
"""

from __future__ import annotations

from robodual_core.data.generalist_cache import POOLINGS, pool_output

__all__ = ["POOLINGS", "pool_output"]
