"""Encoder configs: one small dataclass per encoder, with the defaults of each registered modality.

The defaults are the paper's (Table 5, section 3.2): frozen DINO ViT-S/16 for RGB; for every other
image modality a trainable ViT with 6 layers, 8 heads of width 64, hidden 256, MLP ratio 4, patch 16 at
224 x 224 (6.4M parameters); a perceiver resampler with 8 learned queries, 1 layer, MLP ratio 4
(1.1M parameters) that turns ~196 patch tokens into 8 tokens of the specialist's width.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from robodual_core.config import check_config, from_dict, ranged
from robodual_core.errors import ConfigError

BACKBONES = ("dino_vits16", "vit")
MODALITIES = ("rgb", "depth", "tactile")


@dataclass
class SensorConfig:
    """Config of one image-like sensor encoder (a ViT backbone + a perceiver resampler).

    ``keys``: dataset keys read (``batch["obs"][key]``). ``image_size``: frames are resized to this
    (int = square, or [H, W]) before the ViT. ``backbone``: ``"dino_vits16"`` (the frozen, pretrained DINO
    ViT-S/16) or ``"vit"`` (a ViT built from ``width``/``depth``/``heads``/``head_dim``, trainable).
    ``pretrained``: for DINO, a local ``.safetensors`` file or a cached Hugging Face id ``org/name[@rev]`` holding
    model.safetensors (default: searched, see ``backbones.find_dino_weights``).
    ``random_init``: allow a randomly initialised DINO when no weights are on disk (a warning says so).
    ``trainable``: None = frozen for DINO, trainable for ``vit``. ``history``: extra past frames per sample;
    tokens of all frames are concatenated. ``cache_features``: at inference, reuse the frozen backbone's
    features of frames seen in the previous call (a history frame is then not encoded twice).
    ``clip``: inputs are clipped to [-clip, clip] (depth, normalized by dataset statistics).
    """

    name: str = ""
    modality: str = "rgb"
    keys: list[str] = field(default_factory=list)
    backbone: str = "vit"
    image_size: Any = ranged(224, ge=1)  # int, or [H, W] (each >= 1)
    in_chans: int = ranged(3, ge=1)
    patch_size: int = ranged(16, ge=1)
    width: int = ranged(256, ge=1)
    depth: int = ranged(6, ge=1)
    heads: int = ranged(8, ge=1)
    head_dim: int = ranged(64, ge=1)
    mlp_ratio: float = ranged(4.0, gt=0)
    pretrained: str | None = None
    random_init: bool = False
    trainable: bool | None = None
    out_dim: int = ranged(256, ge=1)
    num_queries: int = ranged(8, ge=1)
    resampler_depth: int = ranged(1, ge=1)
    resampler_heads: int = ranged(8, ge=1)
    resampler_head_dim: int = ranged(64, ge=1)
    resampler_mlp_ratio: float = ranged(4.0, gt=0)
    history: int = ranged(0, ge=0)
    cache_features: bool = True
    clip: float | None = ranged(None, gt=0)

    def __post_init__(self) -> None:
        # every numeric option's range, named as a specialist config spells it
        check_config(self, f"model.sensors[{self.name or '?'}].options.")
        if self.backbone not in BACKBONES:
            raise ConfigError(f"sensor '{self.name}': backbone '{self.backbone}' is unknown; expected one of {BACKBONES}")
        if self.modality not in MODALITIES:
            raise ConfigError(f"sensor '{self.name}': modality '{self.modality}' is unknown; expected one of {MODALITIES}")
        if self.backbone == "dino_vits16" and self.in_chans != 3:
            raise ConfigError(f"sensor '{self.name}': the DINO backbone takes 3 channels, config has in_chans={self.in_chans}")
        h, w = self.hw
        if h % self.patch_size or w % self.patch_size:
            raise ConfigError(f"sensor '{self.name}': image_size {h}x{w} must be a multiple of patch_size {self.patch_size}")
        if not self.keys:
            raise ConfigError(f"sensor '{self.name}': 'keys' must name the dataset key it reads")

    @property
    def hw(self) -> tuple[int, int]:
        """``image_size`` as (H, W)."""
        size = self.image_size
        if isinstance(size, int):
            return size, size
        if isinstance(size, list | tuple) and len(size) == 2:
            return int(size[0]), int(size[1])
        raise ConfigError(f"sensor '{self.name}': image_size must be an int or [H, W], found {size!r}")

    @property
    def is_trainable(self) -> bool:
        return self.backbone != "dino_vits16" if self.trainable is None else bool(self.trainable)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if isinstance(d["image_size"], tuple):
            d["image_size"] = list(d["image_size"])
        return d


# Defaults per registered name (the dataset key of the same name; CALVIN's tactile has 6 channels).
PRESETS: dict[str, dict[str, Any]] = {
    "rgb_static": dict(modality="rgb", keys=["rgb_static"], backbone="dino_vits16", in_chans=3),
    "rgb_gripper": dict(modality="rgb", keys=["rgb_gripper"], backbone="dino_vits16", in_chans=3),
    "depth_static": dict(modality="depth", keys=["depth_static"], backbone="vit", in_chans=1, clip=5.0),
    "depth_gripper": dict(modality="depth", keys=["depth_gripper"], backbone="vit", in_chans=1, clip=5.0),
    "tactile": dict(modality="tactile", keys=["tactile"], backbone="vit", in_chans=6),
}


def sensor_config(name: str, **overrides: Any) -> SensorConfig:
    """The preset of ``name`` (a registered first-party sensor) with ``overrides`` applied."""
    if name not in PRESETS:
        raise ConfigError(f"no preset sensor config named '{name}'; presets: {', '.join(sorted(PRESETS))}")
    # options from a config file: types coerced and unknown keys refused, each naming the key
    return from_dict(SensorConfig, {**PRESETS[name], "name": name, **overrides},
                     prefix=f"model.sensors[{name}].options.")
