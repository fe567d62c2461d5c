"""One preprocessing path for observations, owned by the kernel: what an encoder receives from the training
loader and at control time.

:func:`prepare_observation` is that path. :class:`~robodual_core.data.WindowDataset` builds its batches with it,
and the runtime calls it on each raw control-time frame (numpy from a robot or a simulator) with the run's
:class:`Preprocessing` (the key's modality, ``data.image_size``; saved as ``preprocessing.json`` in every
specialist checkpoint) and normalizer before any encoder sees the frame. A sensor plugin does no preprocessing of
its own and cannot get it wrong; whatever else it needs it does in ``forward``, which runs the same on both paths.
Tests compare what an encoder receives through the loader and through a policy's ``step``, bit for bit.

- images (``rgb``, ``tactile``): uint8 ``[N, H, W, C]`` -> float32 ``[N, C, H, W]`` in [0, 1] (float frames are
  taken to be in [0, 1] already), bilinear with antialiasing to ``size``, clamped to [0, 1];
- ``depth``: ``[N, H, W]`` or ``[N, H, W, 1]`` -> float32 ``[N, 1, H, W]`` normalized with the dataset's
  statistics for the key (when the normalizer has it), nearest resize to ``size``;
- any other key (low-dimensional: proprio, force/torque, ...): float32, normalized when the normalizer has it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robodual_core.errors import RobodualError

IMAGE_MODALITIES = ("rgb", "depth", "tactile")
PREPROCESSING_FILE = "preprocessing"  # <name>.json in a checkpoint


def prepare_observation(values: Any, key: str, modality: str, normalizer: Any = None, image_size: Any = None,
                        lead: int = 1) -> Any:
    """Raw values of observation ``key`` -> the float32 tensor a sensor encoder receives (the loader's and the
    runtime's one path).

    ``values``: numpy (or, for image keys, a torch tensor on any device) with ``lead`` leading dimensions (batch,
    or batch and history) before one stored frame: images ``[H, W, C]``, depth ``[H, W]`` or ``[H, W, 1]``,
    any other key its value ``[D...]``. ``image_size``: the loader's ``data.image_size`` (an int for square
    frames, ``(h, w)``, or None to keep the stored size). Images -> ``[*lead, C, h, w]`` (:func:`prepare_images`);
    other keys -> ``[*lead, D...]`` normalized when the normalizer has the key (:func:`prepare_lowdim`)."""
    import torch

    if modality in IMAGE_MODALITIES:
        shape = tuple(values.shape)
        if len(shape) < lead + 2:
            raise RobodualError(f"observation '{key}' ({modality}) has shape {list(shape)}; expected {lead} leading "
                                "dimension(s) before one frame [H, W] or [H, W, C]")
        lead_shape = shape[:lead]
        flat = values.reshape(int(np.prod(lead_shape, dtype=np.int64)), *shape[lead:])
        out = prepare_images(flat, key, modality, normalizer, _square(image_size))
        return out.reshape(*lead_shape, *out.shape[1:])
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return torch.from_numpy(prepare_lowdim(values, key, normalizer))


def _square(image_size: Any) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, int):
        return (image_size, image_size)
    return (int(image_size[0]), int(image_size[1]))


def guess_modality(frame: Any) -> str:
    """A modality for one raw frame of a key no :class:`Preprocessing` names (a model no trainer prepared, e.g. a
    bench's freshly built one): uint8 ``[H, W, C]`` -> ``rgb``; float ``[H, W]`` / ``[H, W, 1]`` -> ``depth``;
    float ``[H, W, C]`` -> ``rgb`` (in [0, 1]); anything else -> ``lowdim``."""
    x = np.asarray(frame)
    if x.ndim == 3 and x.dtype == np.uint8:
        return "rgb"
    if np.issubdtype(x.dtype, np.floating) and (x.ndim == 2 or (x.ndim == 3 and x.shape[-1] == 1)):
        return "depth"
    return "rgb" if x.ndim == 3 else "lowdim"


@dataclass(frozen=True)
class Preprocessing:
    """How a run's loader turned stored observations into encoder inputs: each observation key's modality (the
    store's schema) and ``data.image_size``. The trainer records it in every checkpoint (``preprocessing.json``);
    the runtime applies it, with the run's normalizer, to every control-time frame (:meth:`apply`)."""

    modalities: dict[str, str] = field(default_factory=dict)
    image_size: int | None = None

    def apply(self, key: str, values: Any, normalizer: Any = None, lead: int = 1) -> Any:
        """``values`` of ``key`` (``lead`` leading dims) -> the tensor the run's loader served for them."""
        if key not in self.modalities:
            raise RobodualError(f"{PREPROCESSING_FILE}.json: expected a modality for observation key '{key}', found "
                                f"only {', '.join(sorted(self.modalities)) or '(none)'}")
        return prepare_observation(values, key, self.modalities[key], normalizer, self.image_size, lead)

    def to_dict(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "modalities": dict(sorted(self.modalities.items()))}

    @classmethod
    def from_dict(cls, d: Any, where: str = f"{PREPROCESSING_FILE}.json") -> Preprocessing:
        if not isinstance(d, dict) or not isinstance(d.get("modalities"), dict):
            raise RobodualError(f"'{where}': expected an object with 'modalities' {{key: modality}} and "
                                f"'image_size', found {str(d)[:80]!r}")
        mods = d["modalities"]
        bad = [k for k, v in mods.items() if not isinstance(v, str)]
        if bad:
            raise RobodualError(f"'{where}': key 'modalities.{bad[0]}' must name a modality (a string), found "
                                f"{mods[bad[0]]!r}")
        size = d.get("image_size")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise RobodualError(f"'{where}': key 'image_size' must be a positive int or null, found {size!r}")
        return cls(dict(mods), size)

    @classmethod
    def from_checkpoint(cls, ckpt: str | Path, keys: list[str] | tuple[str, ...] = ()) -> Preprocessing | None:
        """The checkpoint's ``preprocessing.json``; for a checkpoint written before it existed, rebuilt from the
        run's ``config.json`` (``data.image_size`` and the modalities of ``keys`` in its dataset) when both are
        still there; else None (the runtime then falls back to each sensor's declared modality)."""
        import json

        ckpt = Path(ckpt)
        path = ckpt / f"{PREPROCESSING_FILE}.json"
        if path.is_file():
            from robodual_core.checkpoint import read_json

            return cls.from_dict(read_json(ckpt, PREPROCESSING_FILE), str(path))
        for run in (ckpt, ckpt.parent.parent):
            cfg_path = run / "config.json"
            if cfg_path.is_file():
                break
        else:
            return None
        try:
            cfg = json.loads(cfg_path.read_text())
            from robodual_core.data.store import open_dataset

            ds = open_dataset(cfg["dataset"], check=False)
            size = (cfg.get("data") or {}).get("image_size")
            return cls.from_dict({"image_size": size,
                                  "modalities": {k: ds.modalities[k] for k in keys if k in ds.modalities}},
                                 str(cfg_path))
        except Exception:  # moved dataset, unreadable config: the runtime falls back, as for a fresh model
            return None


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
