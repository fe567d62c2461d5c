"""Hostile feature caches (issue 28): a garbled cache (a chunk overwritten, its metadata broken, rows that do not
match the store, a resume counter that is not a step) is refused in one line naming the cache folder and what to do,
when it is opened, when the loader reads it and when a build would resume it; never raw zarr/blosc text."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from specialist_helpers import write_tiny_store

from robodual_core.data import WindowDataset
from robodual_core.data.feature_cache import build_feature_cache, open_feature_cache
from robodual_core.errors import RobodualError

pytestmark = pytest.mark.hostile

FP = "fp-test"


def encode(x: torch.Tensor) -> torch.Tensor:
    """A stand-in backbone: [M, 3, 16, 16] -> [M, 4, 8] patch means (deterministic, cheap)."""
    return torch.nn.functional.avg_pool2d(x, 8).flatten(2).transpose(1, 2).repeat(1, 1, 3)[:, :, :8]


@pytest.fixture
def store(tmp_path):
    path = write_tiny_store(tmp_path / "tiny.zarr")
    ds = WindowDataset(path, obs_keys=["rgb_static"], horizon=4, k_g=4, image_size=16, split="all",
                       augment_tau=False)
    build_feature_cache(path, "rgb_static", "rgb", FP, encode, ds.normalizer, (16, 16), dtype="float32",
                        chunk_rows=16)
    assert np.isfinite(np.asarray(open_feature_cache(path, FP)[:])).all()
    return path


def loader(store):
    ds = WindowDataset(store, obs_keys=["rgb_static"], horizon=4, k_g=4, image_size=16, split="all",
                       augment_tau=False, features={"rgb_static": FP})
    return ds.__getitems__(list(range(len(ds))))


def _tokens(store):
    return store / "features" / FP / "tokens"


def _garble_chunk(store):
    f = _tokens(store) / "c" / "1" / "0" / "0"
    f.write_bytes(np.random.default_rng(0).integers(0, 256, f.stat().st_size, dtype=np.uint8).tobytes())


def _break_metadata(store):
    (_tokens(store) / "zarr.json").write_text("{ not json")


def _wrong_rows(store):
    meta = json.loads((_tokens(store) / "zarr.json").read_text())
    meta["shape"][0] = 7
    (_tokens(store) / "zarr.json").write_text(json.dumps(meta))


GARBLED = {
    "chunk overwritten": (_garble_chunk, "cannot be decoded"),
    "metadata not json": (_break_metadata, "metadata cannot be read"),
    "rows not the store's": (_wrong_rows, "expected [48, N, W]"),
}


@pytest.mark.parametrize("case", sorted(GARBLED))
def test_a_garbled_cache_is_refused_in_one_line(store, case):
    damage, needle = GARBLED[case]
    damage(store)
    with pytest.raises(RobodualError) as info:
        loader(store)
    msg = str(info.value)
    assert "\n" not in msg and needle in msg and f"features/{FP}" in msg, msg


def test_a_resume_counter_that_is_not_a_step_is_refused(store):
    meta_path = store / "features" / FP / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"].update(complete=False, done_until="half")
    meta_path.write_text(json.dumps(meta))
    ds = WindowDataset(store, obs_keys=["rgb_static"], horizon=4, k_g=4, image_size=16, split="all")
    with pytest.raises(RobodualError, match="done_until is 'half'") as info:
        build_feature_cache(store, "rgb_static", "rgb", FP, encode, ds.normalizer, (16, 16), dtype="float32")
    assert "delete that folder" in str(info.value)
