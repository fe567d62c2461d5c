"""One preprocessing path for observations: what an encoder receives from the training loader and at control time.

:class:`~robodual_core.data.WindowDataset` builds its batches with these functions, and every sensor's
``preprocess`` (the control-time path, raw numpy from a robot or a simulator) must give the same tensor for the
same raw frame; built-in sensors call them, and so should a plugin's (docs/plugins.md). A parity test checks it
for every registered sensor.

- images (``rgb``, ``tactile``): uint8 ``[N, H, W, C]`` -> float32 ``[N, C, H, W]`` in [0, 1] (float frames are
  taken to be in [0, 1] already), bilinear with antialiasing to ``size``, clamped to [0, 1];
- ``depth``: ``[N, H, W]`` or ``[N, H, W, 1]`` -> float32 ``[N, 1, H, W]`` normalized with the dataset's
  statistics for the key (when the normalizer has it), nearest resize to ``size``;
- any other key (low-dimensional: proprio, force/torque, ...): float32, normalized when the normalizer has it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

IMAGE_MODALITIES = ("rgb", "depth", "tactile")


def prepare_images(frames: Any, key: str, modality: str, normalizer: Any = None,
                   size: tuple[int, int] | None = None) -> Any:
    """Raw frames ``[N, H, W(, C)]`` of ``key`` -> the float32 tensor ``[N, C, h, w]`` an encoder receives.

    ``frames`` is numpy (the loader's worker processes, control time) or a torch tensor on any device (the
    trainer's device-side path: uint8 frames travel to the GPU and are converted there); both give the same
    arithmetic (bit-identical on the CPU, tested)."""
    import torch

    if isinstance(frames, torch.Tensor):
        return _prepare_images_torch(frames, key, modality, normalizer, size)
    x = np.asarray(frames)
    if x.ndim == 3:
        x = x[..., None]
    if modality == "depth":
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)
        if normalizer is not None and key in normalizer.entries:  # scalar statistics broadcast over every pixel
            x = normalizer.normalize(key, x)
    elif x.dtype == np.uint8:
        # numpy, not torch, for the elementwise work: it stays single-threaded in loader processes
        x = np.multiply(x.transpose(0, 3, 1, 2), np.float32(1 / 255), dtype=np.float32)
    else:  # float frames are taken to be in [0, 1] already
        x = x.transpose(0, 3, 1, 2).astype(np.float32)
    return _resize(torch.from_numpy(np.ascontiguousarray(x)), modality, size)


def _prepare_images_torch(x: Any, key: str, modality: str, normalizer: Any, size: tuple[int, int] | None) -> Any:
    import torch

    if x.dim() == 3:
        x = x.unsqueeze(-1)
    x = x.permute(0, 3, 1, 2)
    if modality == "depth":
        x = x.to(torch.float32)
        if normalizer is not None and key in normalizer.entries:
            x = normalizer.normalize(key, x)
    elif x.dtype == torch.uint8:
        x = x.to(torch.float32) * torch.tensor(np.float32(1 / 255), device=x.device)
    else:
        x = x.to(torch.float32)
    return _resize(x.contiguous(), modality, size)


def _resize(out: Any, modality: str, size: tuple[int, int] | None) -> Any:
    import torch

    if size is None or tuple(out.shape[-2:]) == tuple(size):
        return out
    if modality == "depth":
        return torch.nn.functional.interpolate(out, size=tuple(size), mode="nearest")
    return torch.nn.functional.interpolate(out, size=tuple(size), mode="bilinear", align_corners=False,
                                           antialias=True).clamp_(0.0, 1.0)


def prepare_lowdim(values: np.ndarray, key: str, normalizer: Any = None) -> np.ndarray:
    """Raw low-dimensional values ``[..., D]`` of ``key`` -> float32, normalized when the normalizer has the key."""
    x = np.asarray(values, dtype=np.float32)
    if normalizer is not None and key in normalizer.entries:
        x = normalizer.normalize(key, x)
    return np.ascontiguousarray(x, dtype=np.float32)
