"""Image sensor encoders: token shapes, frozen backbones, history cache, loader-exact preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sensor_helpers import SMALL_VIT, write_store

from robodual_core.errors import RobodualError
from robodual_core.plugins import registry
from robodual_sensors.encoders import (
    DepthGripperEncoder,
    DepthStaticEncoder,
    RGBGripperEncoder,
    RGBStaticEncoder,
    TactileEncoder,
)

NAMES = ["rgb_static", "rgb_gripper", "depth_static", "depth_gripper", "tactile"]
# CALVIN's native sizes (static 200x200, gripper 84x84, tactile 160x120 with 6 channels) and channels.
NATIVE = {"rgb_static": (3, 200, 200), "rgb_gripper": (3, 84, 84), "depth_static": (1, 200, 200),
          "depth_gripper": (1, 84, 84), "tactile": (6, 160, 120)}


def test_all_modalities_registered():
    reg = registry("sensors")
    for name in [*NAMES, "language"]:
        assert name in reg
    assert reg.get("rgb_static") is RGBStaticEncoder
    assert reg.get("tactile") is TactileEncoder


@pytest.mark.parametrize("name", NAMES)
def test_paper_size_tokens_at_224_and_native(name):
    enc = registry("sensors").get(name)(random_init=True).eval()
    assert enc.num_tokens == 8 and enc.out_dim == 256 and enc.keys == (name,)
    c, h, w = NATIVE[name]
    with torch.inference_mode():
        assert enc(torch.rand(1, c, 224, 224)).shape == (1, 8, 256)
        assert enc(torch.rand(1, c, h, w)).shape == (1, 8, 256)
    patches = enc.backbone(torch.rand(1, c, 224, 224))
    assert patches.shape[1] == 196  # 14 x 14 patches of 16 px before the resampler


def test_paper_parameter_counts():
    """Table 5 / App. B: 6.4M per extra ViT encoder, 1.1M per resampler (7.5M per extra sensor)."""
    with torch.device("meta"):
        depth = DepthStaticEncoder(load_weights=False)
        rgb = RGBStaticEncoder(load_weights=False)
    vit = sum(p.numel() for p in depth.backbone.parameters())
    resampler = sum(p.numel() for p in depth.resampler.parameters())
    assert 6.3e6 < vit < 6.5e6
    assert 1.0e6 < resampler < 1.15e6
    assert 21e6 < sum(p.numel() for p in rgb.backbone.parameters()) < 22.5e6  # ViT-S/16
    assert "6.43M" in DepthStaticEncoder.describe() and "frozen" in RGBStaticEncoder.describe()


def test_tactile_native_aspect_and_history():
    enc = TactileEncoder(image_size=[64, 48], history=1, **SMALL_VIT)
    tokens = enc(torch.rand(2, 2, 6, 160, 120))
    assert tokens.shape == (2, 16, 32) and enc.num_tokens == 16
    with pytest.raises(RobodualError, match=r"expects \[B, 2, 6, H, W\]"):
        enc(torch.rand(2, 6, 160, 120))


def test_frozen_backbone_unchanged_after_optimizer_step():
    enc = RGBGripperEncoder(image_size=32, random_init=True, out_dim=32)
    assert not enc.trainable and enc.cfg.backbone == "dino_vits16"
    assert not any(p.requires_grad for p in enc.backbone.parameters())
    before = {k: v.clone() for k, v in enc.backbone.state_dict().items()}
    resampler_before = enc.resampler.latents.detach().clone()
    enc.train()
    assert enc.training and not enc.backbone.training  # stays in eval inside a training parent
    opt = torch.optim.AdamW([p for p in enc.parameters() if p.requires_grad], lr=1e-2)
    enc(torch.rand(2, 3, 32, 32)).square().mean().backward()
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in enc.backbone.state_dict().items())
    assert all(p.grad is None for p in enc.backbone.parameters())
    assert not torch.equal(resampler_before, enc.resampler.latents)


def test_small_trainable_rgb_backbone_learns():
    enc = RGBStaticEncoder(backbone="vit", image_size=64, **SMALL_VIT)
    assert enc.trainable and all(p.requires_grad for p in enc.parameters())
    enc(torch.rand(2, 3, 64, 64)).sum().backward()
    assert enc.backbone.vit.patch_embed.proj.weight.grad is not None


def test_history_cache_reuses_previous_frame_features():
    enc = RGBStaticEncoder(backbone="vit", trainable=False, image_size=32, history=1, **SMALL_VIT).eval()
    f0, f1, f2 = (torch.rand(1, 3, 32, 32) for _ in range(3))
    with torch.inference_mode():
        enc(torch.stack([f0, f1], 1))
        assert enc.cache_hits == 0
        cached = enc(torch.stack([f1, f2], 1))
        assert enc.cache_hits == 1  # f1 was encoded in the previous call
        enc.reset_cache()
        fresh = enc(torch.stack([f1, f2], 1))
    assert torch.allclose(cached, fresh, atol=1e-6)
    assert enc.cache_hits == 1


def test_preprocess_matches_window_dataset(tmp_path):
    from robodual_core.data import WindowDataset, open_dataset

    store = write_store(tmp_path / "d.zarr")
    ds = WindowDataset(store, obs_keys=["rgb_static", "depth_static", "tactile"], horizon=2, history=1,
                       image_size=32, split="all", augment_tau=False)
    raw = open_dataset(store)
    sample = ds[3]
    t = sample["index"]
    encoders = {
        "rgb_static": RGBStaticEncoder(backbone="vit", image_size=32, history=1, **SMALL_VIT),
        "depth_static": DepthStaticEncoder(image_size=32, history=1, **SMALL_VIT),
        "tactile": TactileEncoder(image_size=32, history=1, **SMALL_VIT),
    }
    for key, enc in encoders.items():
        frames = np.asarray(raw.array(key)[t - 1:t + 1])[None]  # [1, T, H, W(, C)] as the runtime stacks them
        x = enc.preprocess({key: frames}, normalizer=ds.normalizer)
        assert x.shape == (1, *sample["obs"][key].shape)
        assert torch.equal(x[0], sample["obs"][key]), key
    single = encoders["rgb_static"].preprocess(np.asarray(raw.array("rgb_static")[t]))
    assert single.shape == (1, 3, 32, 32)
    with pytest.raises(RobodualError, match="needs the dataset normalizer"):
        encoders["depth_static"].preprocess(np.zeros((40, 40), np.float32))
    with pytest.raises(RobodualError, match="reads observation key 'tactile'"):
        encoders["tactile"].preprocess({"rgb_static": frames})


def test_depth_gripper_config_roundtrip():
    enc = DepthGripperEncoder(image_size=48, **SMALL_VIT)
    cfg = enc.config_dict()
    again = registry("sensors").get(cfg["name"])(**cfg)
    assert again.config_dict() == cfg
    assert again.load_state_dict(enc.state_dict()) is not None
    x = torch.rand(1, 1, 84, 84)
    with torch.no_grad():
        assert torch.equal(enc(x), again(x))


def test_history_cache_forgets_features_of_replaced_weights():
    """Loading other backbone weights into a live encoder (a checkpoint swapped in a running policy) must not
    reuse the previous weights' features of the history frame."""
    enc = RGBStaticEncoder(backbone="vit", trainable=False, image_size=32, history=1, **SMALL_VIT).eval()
    other = RGBStaticEncoder(backbone="vit", trainable=False, image_size=32, history=1, **SMALL_VIT).eval()
    f0, f1, f2 = (torch.rand(1, 3, 32, 32) for _ in range(3))
    with torch.inference_mode():
        enc(torch.stack([f0, f1], 1))
        torch.nn.ModuleDict({"enc": enc}).load_state_dict({f"enc.{k}": v for k, v in other.state_dict().items()})
        got = enc(torch.stack([f1, f2], 1))
        assert enc.cache_hits == 0
        want = other(torch.stack([f1, f2], 1))
    torch.testing.assert_close(got, want)
