"""Frozen-backbone features computed once per stored frame (issue 20): the cache, the loader serving it, the
specialist's loss on it, and ``train specialist`` with ``data.feature_cache``."""

import numpy as np
import pytest
import torch
from specialist_helpers import tiny_config, write_tiny_store

from robodual_core.data import WindowDataset
from robodual_core.data.feature_cache import build_feature_cache, list_feature_caches, open_feature_cache
from robodual_core.errors import RobodualError
from robodual_specialist.config import SensorConfig
from robodual_specialist.model import DiTSpecialist
from robodual_specialist.train import train

VIT = {"backbone": "vit", "image_size": 16, "width": 32, "depth": 1, "heads": 2, "head_dim": 16, "patch_size": 8,
       "trainable": False, "num_queries": 2, "resampler_heads": 2, "resampler_head_dim": 16}


@pytest.fixture()
def store(tmp_path):
    return write_tiny_store(tmp_path / "tiny.zarr")


def _model(history=1):
    torch.manual_seed(0)
    sensors = [SensorConfig("rgb_static", {**VIT, "history": history})]
    return DiTSpecialist(tiny_config(sensors=sensors, generalist_dim=0))


def _build(store, model, dtype="float32", **kw):
    enc = model.sensors["rgb_static"]
    ds = WindowDataset(store, obs_keys=["rgb_static"], horizon=4, k_g=4, history=enc.history, image_size=16,
                       split="all", augment_tau=False)
    fp = enc.feature_fingerprint(16)
    build_feature_cache(store, "rgb_static", "rgb", fp, enc.backbone_features, ds.normalizer, (16, 16),
                        dtype=dtype, sensor="rgb_static", **kw)
    return ds, fp


@pytest.mark.parametrize("history", [0, 1])
def test_loss_on_cached_features_equals_the_loss_on_frames(store, history):
    model = _model(history).train()
    ds, fp = _build(store, model)
    cached = WindowDataset(store, obs_keys=["rgb_static"], horizon=4, k_g=4, history=history, image_size=16,
                           split="all", augment_tau=False)
    cached.attach_features({"rgb_static": fp}, drop_keys=["rgb_static"])
    idx = list(range(0, len(ds), 3))
    a = torch.utils.data.default_collate(ds.__getitems__(idx))
    b = torch.utils.data.default_collate(cached.__getitems__(idx))
    assert "rgb_static" not in b["obs"] and b["features"]["rgb_static"].shape[-2:] == (4, 32)
    g = torch.Generator().manual_seed(0)
    fixed = {"noise": torch.randn(len(idx), 4, 4, generator=g), "timesteps": torch.randint(0, 100, (len(idx),),
             generator=g), "drop": torch.zeros(len(idx), dtype=torch.bool)}
    la, _ = model.loss({**a, **fixed})
    lb, _ = model.loss({**b, **fixed})
    torch.testing.assert_close(lb, la, rtol=1e-5, atol=1e-6)
    # the resampler (trainable) still gets gradients through cached features
    lb.backward()
    enc = model.sensors["rgb_static"]
    assert all(p.grad is not None for p in enc.resampler.parameters())
    assert all(p.grad is None for p in enc.backbone.parameters())  # frozen, and not even run


def test_fingerprint_follows_the_backbone_weights_and_the_loader_size():
    model = _model()
    enc = model.sensors["rgb_static"]
    fp = enc.feature_fingerprint(16)
    assert fp == enc.feature_fingerprint(16) and fp != enc.feature_fingerprint(None)
    with torch.no_grad():
        next(enc.backbone.parameters()).add_(1e-3)
    assert enc.feature_fingerprint(16) != fp
    with torch.no_grad():
        enc.resampler.parameters().__next__().add_(1.0)  # the trainable resampler does not change features
    trainable = DiTSpecialist(tiny_config(sensors=[SensorConfig("rgb_static", {**VIT, "trainable": True})],
                                          generalist_dim=0)).sensors["rgb_static"]
    assert trainable.feature_fingerprint(16) == ""


@pytest.mark.hostile
def test_an_interrupted_build_resumes_and_equals_a_full_build(store, tmp_path):
    model = _model()

    class Stop(Exception):
        pass

    def interrupt(done, total):
        if done < total:
            raise Stop

    with pytest.raises(Stop):
        _build(store, model, progress=interrupt, batch_size=16, chunk_rows=16)
    fp = model.sensors["rgb_static"].feature_fingerprint(16)
    attrs = list_feature_caches(store)[fp]
    assert not attrs["complete"] and 0 < attrs["done_until"] < attrs["num_steps"]
    assert open_feature_cache(store, fp) is None  # an incomplete cache is never read
    with pytest.raises(RobodualError, match="no complete feature cache"):
        WindowDataset(store, obs_keys=["rgb_static"], horizon=4, features={"rgb_static": fp})
    _build(store, model, batch_size=16, chunk_rows=16)
    resumed = np.asarray(open_feature_cache(store, fp)[:])
    other = write_tiny_store(tmp_path / "b.zarr")
    _build(other, model)
    np.testing.assert_array_equal(resumed, np.asarray(open_feature_cache(other, fp)[:]))


CONFIG = """
model:
  hidden: 32
  depth: 2
  heads: 4
  k_s: 4
  k_g: 4
  sensors:
    - {name: rgb_static, options: {backbone: vit, image_size: 16, width: 32, depth: 1, heads: 2, head_dim: 16,
                                   patch_size: 8, trainable: false, history: 1, num_queries: 2}}
  guidance: {null_tokens: 2}
data: {image_size: 16, feature_cache: true, feature_dtype: float32}
trainer: {batch_size: 8, num_workers: 0, warmup_steps: 2, ckpt_every: 4, log_every: 2, lr: 1e-3, steps: 4}
"""


def test_train_specialist_with_the_feature_cache(store, tmp_path):
    config = tmp_path / "spec.yaml"
    config.write_text(CONFIG)
    train(store, tmp_path / "run", config=config, show_progress=False)
    caches = list_feature_caches(store)
    assert len(caches) == 1 and next(iter(caches.values()))["complete"]
    # a second run reuses the cache (same fingerprint: the frozen backbone's weights follow the seed)
    train(store, tmp_path / "run2", config=config, show_progress=False)
    assert list_feature_caches(store).keys() == caches.keys()
    from robodual_core.runtime import load_policy

    policy = load_policy(tmp_path / "run")  # control time encodes frames: no cache needed
    policy.reset()
    obs = {"rgb_static": np.zeros((16, 16, 3), np.uint8), "proprio": np.zeros(3, np.float32)}
    assert np.isfinite(policy.step(obs, "task 0")).all()
