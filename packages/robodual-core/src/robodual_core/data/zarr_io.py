"""The zarr module robodual reads and writes stores with, set up once: ``from ... import zarr_module``.

When the ``zarrs`` package (zarr-python's Rust codec pipeline, a dependency of robodual-core) is
installed, stores are encoded and decoded through it: zarr-python's own pipeline spends about 0.5-1 ms
of Python per image chunk, more than decoding the frame of a video, while zarrs encodes and decodes
chunks in Rust threads (writing 224x224 frames: about 4x faster; reading: 2.5x; ``robodual bench
lerobot``). The files are the same zarr v3 either way.

zarrs runs its work in a Rust (rayon) thread pool, which a forked child inherits without its threads: the
first read there would wait forever. A process forked after this module configured zarrs (a DataLoader
worker, say) therefore switches back to zarr-python's own pipeline; arrays must be opened again in the
child (the sampler does, per process). Spawned processes configure themselves anew.

Environment:
    ROBODUAL_ZARR_PIPELINE: ``auto`` (default: zarrs when importable), ``zarrs`` (required) or ``zarr``
        (zarr-python's own pipeline).
    ROBODUAL_ZARR_THREADS: threads zarrs may use (default: all cores).
"""

from __future__ import annotations

import os
from typing import Any

from robodual_core.errors import RobodualError

ZARRS_PIPELINE = "zarrs.ZarrsCodecPipeline"
DEFAULT_PIPELINE = "zarr.core.codec_pipeline.BatchedCodecPipeline"
_configured: str | None = None
_fork_hook = False


def _after_fork_in_child() -> None:
    global _configured
    if _configured == ZARRS_PIPELINE:
        import zarr

        zarr.config.set({"codec_pipeline.path": DEFAULT_PIPELINE})
        _configured = DEFAULT_PIPELINE


def configure() -> str:
    """Select the codec pipeline (see the module docstring); returns its dotted path."""
    global _configured, _fork_hook
    import zarr

    choice = os.environ.get("ROBODUAL_ZARR_PIPELINE", "auto").strip().lower() or "auto"
    if choice not in ("auto", "zarrs", "zarr"):
        raise RobodualError(f"ROBODUAL_ZARR_PIPELINE is '{choice}'; expected auto, zarrs or zarr")
    path = zarr.config.get("codec_pipeline.path")
    if choice != "zarr":
        try:
            import zarrs  # noqa: F401
        except ImportError as exc:
            if choice == "zarrs":
                raise RobodualError("ROBODUAL_ZARR_PIPELINE=zarrs but the 'zarrs' package is not installed: "
                                    "pip install zarrs") from exc
        else:
            path = ZARRS_PIPELINE
    else:
        path = DEFAULT_PIPELINE
    settings: dict[str, Any] = {"codec_pipeline.path": path}
    threads = os.environ.get("ROBODUAL_ZARR_THREADS")
    if threads:
        if not threads.isdigit() or int(threads) < 1:
            raise RobodualError(f"ROBODUAL_ZARR_THREADS is '{threads}'; expected a positive integer")
        settings["threading.max_workers"] = int(threads)
    zarr.config.set(settings)
    _configured = path
    if not _fork_hook:
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _fork_hook = True
    return path


def zarr_module() -> Any:
    """``zarr``, with the codec pipeline chosen by :func:`configure` (done on first call)."""
    import zarr

    if _configured is None:
        configure()
    return zarr
