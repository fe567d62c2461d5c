"""All five image sensors encode real CALVIN frames (the repository's real CALVIN sample, converted to Zarr)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sensor_helpers import SMALL_VIT
from torch.utils.data import DataLoader

from robodual_core.plugins import registry
from robodual_sensors.encoders import resize_frames

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "calvin_sample"  # real raw CALVIN frames, in the repository
KEYS = ["rgb_static", "rgb_gripper", "depth_static", "depth_gripper", "tactile"]


def test_encode_converted_calvin_frames(tmp_path):
    from robodual_core.data import WindowDataset, open_dataset

    converter = registry("dataset_converters").get("calvin")()
    store = converter.convert(SAMPLE, tmp_path / "calvin.zarr", split="training", progress=False, workers=1)
    raw = open_dataset(store)
    native = {k: raw.array(k).shape[1:] for k in KEYS}
    assert native["rgb_static"] == (200, 200, 3) and native["rgb_gripper"] == (84, 84, 3)
    assert native["tactile"] == (160, 120, 6)
    ds = WindowDataset(store, obs_keys=KEYS, horizon=8, split="all", augment_tau=False)
    batch = next(iter(DataLoader(ds, batch_size=2)))
    for key in KEYS:
        enc = registry("sensors").get(key)(backbone="vit", **SMALL_VIT).eval()  # paper sizes: test_sensor_encoders
        x = batch["obs"][key]
        with torch.inference_mode():
            tokens = enc(x)
        assert tokens.shape == (2, 8, SMALL_VIT["out_dim"]) and torch.isfinite(tokens).all(), key
        # the runtime path (one raw numpy frame -> preprocess) equals the loader's frame, resized
        t = int(batch["index"][0])
        runtime = enc.preprocess({key: np.asarray(raw.array(key)[t])}, normalizer=ds.normalizer)
        assert runtime.shape == (1, x.shape[1], 224, 224)
        assert torch.equal(runtime, resize_frames(x[:1], (224, 224), enc.modality)), key
