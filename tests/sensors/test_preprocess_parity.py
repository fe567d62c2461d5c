"""One preprocessing path per sensor (issue 22): for every registered sensor and the example modality plugin,
the encoder input built at control time from a raw frame (``sensor.preprocess``) equals what the training loader
(``WindowDataset``) serves for the same stored frame, normalization and resizing included."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from robodual_core.data import DatasetWriter, WindowDataset
from robodual_core.plugins import registry

ROOT = Path(__file__).resolve().parents[2]
SMALL_VIT = {"backbone": "vit", "image_size": 16, "width": 32, "depth": 1, "heads": 2, "head_dim": 16,
             "patch_size": 8}
T = 6


def _raw(modality, rng, size=24, channels=3):
    if modality in ("rgb", "tactile"):
        return rng.integers(0, 256, (T, size, size + 4, channels), dtype=np.uint8)
    if modality == "depth":
        return (rng.uniform(0.5, 3.0, (T, size, size + 4)) ** 2).astype(np.float32)  # metres, far from N(0, 1)
    return rng.normal(5.0, 3.0, (T, 6)).astype(np.float32)  # a raw low-dim reading, far from N(0, 1)


def _store(tmp_path, key, modality, raw):
    rng = np.random.default_rng(1)
    path = tmp_path / f"{key}.zarr"
    modalities = {key: modality, "proprio": "proprio", "action": "action"}
    with DatasetWriter(path, fps=10, modalities=modalities, action_space={"dim": 2}) as w:
        w.add_episode({key: raw, "proprio": rng.normal(size=(T, 3)).astype(np.float32),
                       "action": rng.uniform(-1, 1, (T, 2)).astype(np.float32)}, instruction="push", task="push")
    return path


def _image_sensors():
    return [n for n in registry("sensors").names() if n != "language"]


def _check(enc, key, modality, tmp_path, history=0, image_size=None, normalization=None):
    raw = _raw(modality, np.random.default_rng(0), channels=getattr(getattr(enc, "cfg", None), "in_chans", 3))
    ds = WindowDataset(_store(tmp_path, key, modality, raw), obs_keys=[key], horizon=2, k_g=2, history=history,
                       image_size=image_size, split="train", val_ratio=0.0, augment_tau=False,
                       normalization=normalization)
    for i in range(len(ds)):
        sample = ds[i]
        t = sample["index"]
        frames = raw[[max(t - h, 0) for h in range(history, -1, -1)]] if history else raw[t]
        control = enc.preprocess(frames[None] if history else frames, normalizer=ds.normalizer)
        served = sample["obs"][key][None]
        assert control.dtype == served.dtype == torch.float32
        assert control.shape == served.shape, (key, control.shape, served.shape)
        torch.testing.assert_close(control, served, rtol=0, atol=0)


@pytest.mark.parametrize("name", _image_sensors())
@pytest.mark.parametrize("history", [0, 1])
def test_every_registered_image_sensor_sees_what_the_loader_serves(name, history, tmp_path):
    cls = registry("sensors").get(name)
    enc = cls(**SMALL_VIT, history=history)
    key, modality = enc.keys[0], enc.modality
    _check(enc, key, modality, tmp_path, history=history, image_size=16)


def test_image_sensor_with_its_own_size_when_the_loader_does_not_resize(tmp_path):
    """``data.image_size: null``: the loader serves stored frames and the sensor resizes its own, as at control
    time; the encoder then resizes both in forward. Here the stored size equals the sensor's."""
    enc = registry("sensors").get("rgb_static")(**{**SMALL_VIT, "image_size": [24, 28], "patch_size": 4})
    _check(enc, "rgb_static", "rgb", tmp_path, image_size=None)


def test_the_example_modality_plugin_sees_what_the_loader_serves(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "examples" / "robodual-example-modality" / "src"))
    from robodual_example_modality.encoder import ForceTorqueEncoder

    enc = ForceTorqueEncoder(out_dim=8, hidden=8)
    # normalized in training (mean/std of the store): the control-time path must normalize the same way
    _check(enc, "force_torque", "lowdim", tmp_path, normalization={"action": "min_max", "force_torque": "mean_std"})
    sys.modules.pop("robodual_example_modality.encoder", None)
    sys.modules.pop("robodual_example_modality", None)
