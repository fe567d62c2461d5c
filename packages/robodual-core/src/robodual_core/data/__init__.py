"""robodual Zarr datasets: schema, writer, reader, statistics, normalizers and the window sampler.

``from robodual_core.data import DatasetWriter, open_dataset, WindowDataset, Normalizer``. Names are
imported lazily, so ``robodual_core.data.generalist_cache`` and the CLI do not pay for torch or zarr
until they use them.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DatasetWriter": "robodual_core.data.writer",
    "open_dataset": "robodual_core.data.store",
    "ZarrDataset": "robodual_core.data.store",
    "WindowDataset": "robodual_core.data.sampler",
    "split_episodes": "robodual_core.data.sampler",
    "Normalizer": "robodual_core.data.normalize",
    "compute_stats": "robodual_core.data.stats",
    "SCHEMA_VERSION": "robodual_core.data.schema",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'robodual_core.data' has no attribute '{name}'")
