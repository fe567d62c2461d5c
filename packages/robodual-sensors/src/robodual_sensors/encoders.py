"""Image-like sensor encoders: a ViT backbone + a perceiver resampler -> 8 tokens per frame.

``forward(x)`` takes what ``WindowDataset`` yields in ``batch["obs"][key]``: ``[B, C, H, W]`` (or
``[B, T, C, H, W]`` with ``history = T - 1``), RGB and tactile in [0, 1], depth normalized by the
dataset statistics; it returns tokens ``[B, T * num_queries, out_dim]``. ``preprocess`` turns raw
control-time observations (HWC uint8 / HW float numpy) into that same tensor.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from robodual_core.data.preprocess import prepare_images
from robodual_core.errors import RobodualError
from robodual_core.interfaces import SensorEncoder
from robodual_sensors.backbones import PatchTokens, build_dino, build_vit
from robodual_sensors.config import SensorConfig, sensor_config
from robodual_sensors.resampler import PerceiverResampler

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_frames(x: torch.Tensor, hw: tuple[int, int], modality: str) -> torch.Tensor:
    """Resize frames ``[M, C, H, W]`` to ``hw`` exactly as ``WindowDataset`` does: depth nearest;
    rgb/tactile bilinear, antialiased, clamped to [0, 1]. A no-op at that size."""
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    if modality == "depth":
        return F.interpolate(x, size=hw, mode="nearest")
    return F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=True).clamp_(0.0, 1.0)


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _forget_cached_features(module: nn.Module, incompatible_keys: Any) -> None:
    module.reset_cache()  # a load_state_dict post hook (a module-level function: the encoder stays picklable)


class ImageSensorEncoder(nn.Module, SensorEncoder):
    """One image modality (rgb, depth or tactile) -> tokens ``[B, (history + 1) * num_queries, out_dim]``.

    Construct with a :class:`SensorConfig` or keyword overrides of the class's preset, e.g.
    ``DepthStaticEncoder(image_size=128, history=1)``. A frozen backbone stays in eval mode and runs
    without autograd whatever the parent's mode; the resampler (and a trainable backbone) train.
    """

    preset: ClassVar[str] = ""
    width_option: ClassVar[str | None] = "out_dim"

    def __init__(self, cfg: SensorConfig | None = None, *, load_weights: bool = True, **overrides: Any):
        super().__init__()
        if cfg is None:
            overrides.pop("name", None)  # the preset decides the registry name; configs may carry it
            cfg = sensor_config(self.preset, **overrides)
        elif overrides:
            cfg = dataclasses.replace(cfg, **overrides)
        self.cfg = cfg
        self.name = cfg.name
        self.keys = tuple(cfg.keys)
        self.modality = cfg.modality
        self.out_dim = cfg.out_dim
        self.history = cfg.history
        self.trainable = cfg.is_trainable
        self.num_tokens = cfg.num_queries * (cfg.history + 1)
        self.backbone = self._build_backbone(load_weights)
        if not self.trainable:
            self.backbone.requires_grad_(False)
            self.backbone.eval()
        self.resampler = PerceiverResampler(
            self.backbone.width, cfg.out_dim, cfg.num_queries, cfg.resampler_depth, cfg.resampler_heads,
            cfg.resampler_head_dim, cfg.resampler_mlp_ratio,
        )
        # Which frame of the history a token comes from (oldest first); zero-initialised.
        self.frame_embed = nn.Parameter(torch.zeros(cfg.history + 1, 1, cfg.out_dim)) if cfg.history else None
        if cfg.modality == "rgb":
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._cache: list[tuple[torch.Tensor, torch.Tensor]] = []
        # weights loaded into a live encoder (a checkpoint swapped in a running policy, also through a parent
        # module) make the cached history-frame features stale
        self.register_load_state_dict_post_hook(_forget_cached_features)
        self.cache_hits = 0

    def _build_backbone(self, load_weights: bool) -> PatchTokens:
        cfg = self.cfg
        if cfg.backbone == "dino_vits16":
            if not load_weights:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return build_dino(cfg.hw, None, random_init=True, name=cfg.name, load=False)
            return build_dino(cfg.hw, cfg.pretrained, cfg.random_init, name=cfg.name)
        return build_vit(cfg.in_chans, cfg.hw, cfg.patch_size, cfg.width, cfg.depth, cfg.heads, cfg.head_dim,
                         cfg.mlp_ratio)

    # -- modes -----------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> ImageSensorEncoder:
        super().train(mode)
        if not self.trainable:
            self.backbone.eval()
        return self

    def config_dict(self) -> dict[str, Any]:
        """JSON-able config; ``registry("sensors").get(d["name"])(**d)`` rebuilds this encoder."""
        return self.cfg.to_dict()

    def reset_cache(self) -> None:
        """Forget cached frame features (call at episode start; stale entries never match anyway)."""
        self._cache = []

    # -- control-time preprocessing --------------------------------------------------------------
    def preprocess(self, arrays: dict[str, np.ndarray] | np.ndarray, normalizer: Any = None,
                   device: Any = None) -> torch.Tensor:
        """Raw numpy observations -> the tensor ``forward`` takes, converted exactly as the loader does.

        ``arrays``: a dict holding ``self.keys[0]``, or the array itself: one frame (HWC uint8, or HW /
        HW1 float depth), a batch ``[B, H, W, C]`` or a batch with history ``[B, T, H, W, C]``.
        Depth needs the dataset ``normalizer`` (``robodual_core.data.Normalizer``, as saved in checkpoints).
        Returns float32 ``[B, C, H, W]`` / ``[B, T, C, H, W]`` at ``image_size``.
        """
        key = self.keys[0]
        if isinstance(arrays, dict):
            if key not in arrays:
                raise RobodualError(f"sensor '{self.name}' reads observation key '{key}', "
                                    f"found keys: {', '.join(sorted(arrays)) or '(none)'}")
            arr = arrays[key]
        else:
            arr = arrays
        arr = np.asarray(arr)
        if self.modality == "depth":
            if arr.ndim >= 3 and arr.shape[-1] == 1:
                arr = arr[..., 0]
            frame_dims = 2
        else:
            frame_dims = 3
        lead = arr.shape[: arr.ndim - frame_dims]
        if len(lead) > 2:
            raise RobodualError(f"sensor '{self.name}': '{key}' has shape {arr.shape}; expected one frame, "
                                "[B, ...] or [B, T, ...]")
        if self.modality == "depth" and normalizer is None:
            raise RobodualError(f"sensor '{self.name}': preprocessing depth '{key}' needs the dataset "
                                "normalizer (the checkpoint's normalizer.json, robodual_core.data.Normalizer)")
        x = np.asarray(arr).reshape(-1, *arr.shape[len(lead):])
        channels = x.shape[-1] if x.ndim == 4 else 1
        if channels != self.cfg.in_chans:
            raise RobodualError(f"sensor '{self.name}': '{key}' has {channels} channels (shape {arr.shape}); "
                                f"expected {self.cfg.in_chans}")
        # the loader's own path (robodual_core.data.preprocess): training and control time see the same tensor
        frames = prepare_images(x, key, self.modality, normalizer, self.cfg.hw)
        x = frames.reshape(*lead, *frames.shape[-3:])
        if not lead:
            x = x.unsqueeze(0)
        return x.contiguous() if device is None else x.to(device)

    # -- encoding --------------------------------------------------------------------------------
    def _prepare(self, frames: torch.Tensor) -> torch.Tensor:
        frames = resize_frames(frames, self.cfg.hw, self.modality)
        if self.modality == "rgb":
            frames = (frames - self.mean) / self.std
        if self.cfg.clip is not None:
            frames = frames.clamp(-self.cfg.clip, self.cfg.clip)
        return frames

    def _backbone(self, frames: torch.Tensor) -> torch.Tensor:
        """Patch tokens ``[M, N, width]`` of frames ``[M, C, H, W]``; frozen backbones without autograd."""
        if self.trainable:
            return self.backbone(self._prepare(frames))
        # inference_mode where the caller has no autograd; no_grad otherwise (inference tensors could
        # not be saved for the trainable resampler's backward).
        ctx = torch.no_grad() if torch.is_grad_enabled() else torch.inference_mode()
        with ctx:
            return self.backbone(self._prepare(frames))

    def _frames(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, C, H, W]`` or ``[B, T, C, H, W]`` checked and returned as ``[B, T, C, H, W]``."""
        T = self.history + 1
        if x.dim() == 4 and T == 1:
            x = x.unsqueeze(1)
        if x.dim() != 5 or x.shape[1] != T or x.shape[2] != self.cfg.in_chans:
            raise RobodualError(f"sensor '{self.name}' (history={self.history}, in_chans={self.cfg.in_chans}) "
                                f"expects [B, {T}, {self.cfg.in_chans}, H, W]"
                                f"{'' if T > 1 else f' or [B, {self.cfg.in_chans}, H, W]'}; found {list(x.shape)}")
        return x

    def _uses_frame_cache(self, x: torch.Tensor) -> bool:
        return x.shape[1] > 1 and self.cfg.cache_features and not self.trainable and not torch.is_grad_enabled()

    def _cached_features(self, x: torch.Tensor) -> list[torch.Tensor | None]:
        """Per history slot of ``x [B, T, C, H, W]``: the features of that frame from the previous call,
        or None (at inference with a frozen backbone, the history frame was the last current frame)."""
        feats: list[torch.Tensor | None] = [None] * x.shape[1]
        if not self._uses_frame_cache(x):
            return feats
        for t in range(x.shape[1]):
            for inp, feat in self._cache:
                if inp.shape == x[:, t].shape and inp.device == x.device and torch.equal(inp, x[:, t]):
                    feats[t] = feat
                    break
        return feats

    def frames_to_encode(self, x: torch.Tensor) -> torch.Tensor:
        """The prepared frames ``[M, C, H, W]`` that ``forward(x)`` needs backbone features of: every frame
        except those the frame cache holds. A caller that runs them through the (frozen) backbone itself,
        e.g. batched with another sensor's frames, passes the result as ``forward(x, features=...)``."""
        x = self._frames(x)
        todo = [t for t, f in enumerate(self._cached_features(x)) if f is None]
        return self._prepare(_frames_at(x, todo).flatten(0, 1))

    def forward(self, x: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, C, H, W]`` or ``[B, T, C, H, W]`` (T = history + 1) -> tokens ``[B, T * num_queries, out_dim]``.

        ``features``: backbone features ``[M, N, width]`` of :meth:`frames_to_encode` ``(x)``, computed by
        the caller (frozen backbones only); None runs the backbone here.
        """
        if features is not None and self.trainable:
            raise RobodualError(f"sensor '{self.name}': precomputed features bypass a trainable backbone")
        x = self._frames(x)
        B, T = x.shape[:2]
        feats = self._cached_features(x)
        todo = [t for t in range(T) if feats[t] is None]
        self.cache_hits += T - len(todo)
        new = None
        if todo:
            new = features if features is not None else self._backbone(_frames_at(x, todo).flatten(0, 1))
            if new.shape[0] != B * len(todo):
                raise RobodualError(f"sensor '{self.name}': {new.shape[0]} precomputed feature rows for "
                                    f"{B * len(todo)} frames to encode")
            for j, t in enumerate(todo):
                feats[t] = new.unflatten(0, (B, len(todo)))[:, j]
        if self._uses_frame_cache(x):
            self._cache = [(x[:, t].clone(), feats[t]) for t in range(T)]
        flat = new if len(todo) == T else torch.stack(feats, dim=1).flatten(0, 1)  # [B * T, N, width]
        tokens = self.resampler(flat).unflatten(0, (B, T))  # [B, T, Q, D]
        if self.frame_embed is not None:
            tokens = tokens + self.frame_embed
        return tokens.flatten(1, 2)

    # -- cached backbone features (training with a frozen backbone) -----------------------------
    def feature_fingerprint(self, loader_size: Any = None) -> str:
        """What shapes this sensor's backbone features of a stored frame: its preprocessing settings, the
        loader's frame size and the backbone's weights (sha256, 16 hex digits). None for a trainable backbone,
        whose features change as it trains."""
        import hashlib
        import json

        if self.trainable:
            return ""
        cfg = self.cfg
        h = hashlib.sha256(json.dumps({
            "class": type(self).__name__, "modality": cfg.modality, "in_chans": cfg.in_chans, "hw": list(cfg.hw),
            "backbone": cfg.backbone, "patch_size": cfg.patch_size, "clip": cfg.clip, "key": self.keys[0],
            "loader_size": loader_size}, sort_keys=True).encode())
        for name, tensor in sorted({**self.backbone.state_dict(), **dict(self.named_buffers())}.items()):
            if name.startswith("resampler.") or name == "frame_embed":
                continue
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def backbone_features(self, frames: torch.Tensor) -> torch.Tensor:
        """Patch tokens ``[M, N, width]`` of loader-prepared frames ``[M, C, H, W]`` (what a feature cache stores)."""
        return self._backbone(frames)

    def encode_features(self, feats: torch.Tensor) -> torch.Tensor:
        """Tokens from cached backbone features ``[B, N, width]`` or ``[B, T, N, width]`` (T = history + 1, oldest
        first): the resampler and frame embedding of :meth:`forward`, without the backbone."""
        if feats.dim() == 3:
            feats = feats.unsqueeze(1)
        B, T = feats.shape[:2]
        if T != self.history + 1:
            raise RobodualError(f"sensor '{self.name}' (history={self.history}) got cached features of {T} frames")
        tokens = self.resampler(feats.flatten(0, 1)).unflatten(0, (B, T))
        if self.frame_embed is not None:
            tokens = tokens + self.frame_embed
        return tokens.flatten(1, 2)

    # -- summary ---------------------------------------------------------------------------------
    @classmethod
    def describe(cls, **overrides: Any) -> str:
        """Parameter counts and token shape of the preset (built on the meta device: no weights, no time)."""
        with torch.device("meta"):
            enc = cls(load_weights=False, **overrides)
        cfg = enc.cfg
        h, w = cfg.hw
        n_patch = (h // cfg.patch_size) * (w // cfg.patch_size)
        backbone = count_params(enc.backbone)
        resampler = count_params(enc.resampler)
        kind = ("frozen DINO ViT-S/16" if cfg.backbone == "dino_vits16" else
                f"ViT {cfg.depth} layers x {cfg.heads} heads, width {cfg.width}")
        return (f"reads '{', '.join(cfg.keys)}' ({cfg.modality}, {cfg.in_chans} ch, {h}x{w}); backbone: {kind}, "
                f"{backbone / 1e6:.2f}M params ({'trainable' if enc.trainable else 'frozen'}); "
                f"resampler: {resampler / 1e6:.2f}M params, {n_patch} -> {cfg.num_queries} tokens of width "
                f"{cfg.out_dim}; trainable total: {count_params(enc, trainable_only=True) / 1e6:.2f}M")


class RGBStaticEncoder(ImageSensorEncoder):
    """Static (third-view) RGB camera, frozen DINO ViT-S/16."""

    preset = "rgb_static"


class RGBGripperEncoder(ImageSensorEncoder):
    """Gripper (wrist) RGB camera, frozen DINO ViT-S/16."""

    preset = "rgb_gripper"


class DepthStaticEncoder(ImageSensorEncoder):
    """Static camera depth, normalized by dataset statistics, trainable ViT."""

    preset = "depth_static"


class DepthGripperEncoder(ImageSensorEncoder):
    """Gripper camera depth, normalized by dataset statistics, trainable ViT."""

    preset = "depth_gripper"


class TactileEncoder(ImageSensorEncoder):
    """CALVIN's two DIGIT tactile sensors stacked in 6 channels, trainable ViT."""

    preset = "tactile"


def _frames_at(x: torch.Tensor, todo: list[int]) -> torch.Tensor:
    """``x[:, todo]`` of ``x [B, T, ...]``, as a view when ``todo`` is every slot in order (training, or no
    cached frame): list indexing would copy the frames, and its backward scatter them back."""
    return x if todo == list(range(x.shape[1])) else x[:, todo]
