"""ViT backbones built with timm: the frozen DINO ViT-S/16 and the small trainable per-modality ViT.

Both return patch tokens ``[B, N, width]`` (prefix tokens dropped) and accept any input size that is a
multiple of the patch size (timm's ``dynamic_img_size``).
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import timm
import torch
from timm.layers import Attention
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from robodual_core.errors import RobodualError

DINO_ARCH = "vit_small_patch16_224.dino"
DINO_HF_REPO = "timm/vit_small_patch16_224.dino"
DINO_ENV = "ROBODUAL_DINO_WEIGHTS"


@functools.cache
def _attention_with_head_dim(head_dim: int) -> type[nn.Module]:
    """timm's Attention with a fixed head width (timm wants a class, not a partial, as ``attn_layer``)."""

    def __init__(self, dim: int, **kwargs) -> None:
        Attention.__init__(self, dim, attn_head_dim=head_dim, **kwargs)

    return type(f"Attention{head_dim}", (Attention,), {"__init__": __init__})


class PatchTokens(nn.Module):
    """Wraps a timm ViT: images ``[B, C, H, W]`` -> patch tokens ``[B, (H/p)(W/p), width]``."""

    def __init__(self, vit: VisionTransformer):
        super().__init__()
        self.vit = vit
        self.width = vit.embed_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit.forward_features(x)[:, self.vit.num_prefix_tokens:]


def build_vit(in_chans: int, image_size: tuple[int, int], patch_size: int = 16, width: int = 256, depth: int = 6,
              heads: int = 8, head_dim: int = 64, mlp_ratio: float = 4.0) -> PatchTokens:
    """The per-modality ViT of Table 5 (6 layers, 8 heads, hidden 256, MLP 4, patch 16): 6.4M parameters
    at 224 x 224 with 8 heads of width 64 (inner attention width 512)."""
    vit = VisionTransformer(
        img_size=image_size, patch_size=patch_size, in_chans=in_chans, num_classes=0, global_pool="",
        embed_dim=width, depth=depth, num_heads=heads, mlp_ratio=mlp_ratio,
        attn_layer=_attention_with_head_dim(head_dim), dynamic_img_size=True,
    )
    return PatchTokens(vit)


def dino_weight_locations() -> list[str]:
    """Where DINO ViT-S/16 weights are looked for, in order (for error messages and docs)."""
    home = Path(os.environ.get("ROBODUAL_HOME", Path.home() / ".cache" / "robodual"))
    return [
        f"${DINO_ENV} (a .safetensors file)",
        str(home / "weights" / f"{DINO_ARCH}.safetensors"),
        f"the Hugging Face cache: {DINO_HF_REPO}/model.safetensors",
    ]


def find_dino_weights(pretrained: str | None) -> Path | None:
    """The DINO weights file: ``pretrained`` if given (it must exist), else the first of
    ``dino_weight_locations()`` that exists, else None."""
    if pretrained:
        from robodual_core.hub import cached_file, is_hub_ref

        if is_hub_ref(pretrained):  # org/name[@rev]: model.safetensors of the cached Hugging Face snapshot
            return cached_file(pretrained, "model.safetensors", what="config key 'pretrained'",
                               folder_form=f"a local .safetensors file of {DINO_ARCH}")
        path = Path(pretrained).expanduser()
        if path.is_dir():
            path = path / "model.safetensors"
        if not path.is_file():
            raise RobodualError(f"DINO weights file '{path}' (config key 'pretrained') does not exist; "
                                f"expected a .safetensors file of {DINO_ARCH}")
        return path
    env = os.environ.get(DINO_ENV)
    if env:
        return find_dino_weights(env)
    home = Path(os.environ.get("ROBODUAL_HOME", Path.home() / ".cache" / "robodual"))
    local = home / "weights" / f"{DINO_ARCH}.safetensors"
    if local.is_file():
        return local
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(DINO_HF_REPO, "model.safetensors")
    except Exception:  # no hub library or an unreadable cache: the other locations still apply
        cached = None
    return Path(cached) if isinstance(cached, str) else None


def build_dino(image_size: tuple[int, int], pretrained: str | None, random_init: bool, name: str = "rgb",
               load: bool = True) -> PatchTokens:
    """DINO ViT-S/16 (timm ``vit_small_patch16_224.dino``), loaded through timm's pretrained path from a
    local safetensors file. No weights on disk is an error unless ``random_init`` (then a warning).
    ``load=False`` builds the architecture only (parameter counts)."""
    path = find_dino_weights(pretrained) if load else None
    kwargs = dict(num_classes=0, img_size=image_size, dynamic_img_size=True)
    if path is None:
        if not random_init:
            raise RobodualError(
                f"sensor '{name}': DINO ViT-S/16 weights not found. Put {DINO_ARCH}'s model.safetensors at one of: "
                + "; ".join(dino_weight_locations())
                + " - or set the sensor's 'pretrained' to a file, or 'random_init: true' to train without them"
            )
        warnings.warn(f"sensor '{name}': DINO ViT-S/16 is randomly initialised (random_init=True); "
                      "its frozen features carry no pretrained knowledge", stacklevel=3)
        return PatchTokens(timm.create_model(DINO_ARCH, pretrained=False, **kwargs))
    if path.suffix != ".safetensors":
        raise RobodualError(f"DINO weights '{path}' must be a .safetensors file (pickled checkpoints are not loaded)")
    try:
        vit = timm.create_model(DINO_ARCH, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
    except (RuntimeError, KeyError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RobodualError(f"DINO weights '{path}' do not fit {DINO_ARCH}: {first}") from exc
    return PatchTokens(vit)
