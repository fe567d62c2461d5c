"""WindowDataset and Normalizer: windows, padding, history, tau and splits checked by value."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dataset_helpers import LENGTHS, make_store

from robodual_core.data import Normalizer, WindowDataset, open_dataset, split_episodes
from robodual_core.errors import RobodualError

STARTS = np.concatenate([[0], np.cumsum(LENGTHS)[:-1]])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("s") / "a.zarr")


def raw(**kw):
    return {"action": "none", "proprio": "none", "depth_static": "none", **kw}


def test_action_window_padding_and_obs(store):
    ds = WindowDataset(store, obs_keys=["rgb_static", "depth_static"], horizon=4, split="all",
                       normalization=raw(), augment_tau=False)
    assert len(ds) == sum(LENGTHS) and ds.action_dim == 3 and ds.proprio_dim == 2
    # episode 1 (length 3) starts at global step 5; take its second step
    s = ds[6]
    assert (s["index"], s["episode"], s["tau"], s["gen_index"]) == (6, 1, 0, 6)
    assert s["instruction"] == "instruction 1" and s["task"] == "task1"
    np.testing.assert_array_equal(s["action"][:, 0].numpy(), [101, 102, 102, 102])  # last action repeated
    np.testing.assert_array_equal(s["action_is_pad"].numpy(), [False, False, True, True])
    np.testing.assert_array_equal(s["proprio"].numpy(), [1, 1])
    rgb = s["obs"]["rgb_static"]
    assert rgb.shape == (3, 8, 8) and rgb.dtype == torch.float32
    assert rgb[0, 0, 0].item() == pytest.approx(11 / 255) and rgb[1].min().item() == 1.0
    assert s["obs"]["depth_static"].shape == (1, 8, 8)
    assert s["obs"]["depth_static"][0, 0, 0].item() == pytest.approx(2.1)


def test_history_is_oldest_first_and_clamped_at_episode_start(store):
    ds = WindowDataset(store, obs_keys=["rgb_static"], horizon=2, history=2, split="all", normalization=raw(),
                       augment_tau=False, image_size=4)
    x = ds[int(STARTS[2]) + 1]["obs"]["rgb_static"]  # episode 2, step 1
    assert x.shape == (3, 3, 4, 4)
    np.testing.assert_allclose(x[:, 0, 0, 0].numpy() * 255, [20, 20, 21], atol=1e-3)


def test_tau_augmentation_is_bounded_and_clamped(store):
    torch.manual_seed(0)
    ds = WindowDataset(store, obs_keys=[], horizon=2, k_g=4, split="all", normalization=raw())
    seen = set()
    for i in range(len(ds)):
        for _ in range(8):
            s = ds[i]
            ep_start = STARTS[s["episode"]]
            assert 0 <= s["tau"] < 4
            assert s["gen_index"] == s["index"] - s["tau"] >= ep_start
            seen.add(s["tau"])
    assert seen == {0, 1, 2, 3}
    first = ds[int(STARTS[3])]
    assert first["tau"] == 0 and first["gen_index"] == STARTS[3]
    val = WindowDataset(store, obs_keys=[], split="val", val_ratio=0.5, normalization=raw())
    assert all(val[i]["tau"] == 0 for i in range(len(val)))


def test_split_by_episode_is_seeded_and_disjoint(store):
    train = WindowDataset(store, obs_keys=[], split="train", val_ratio=0.25, seed=3)
    val = WindowDataset(store, obs_keys=[], split="val", val_ratio=0.25, seed=3)
    assert len(val.episode_ids) == 1 and set(train.episode_ids).isdisjoint(val.episode_ids)
    assert sorted([*train.episode_ids, *val.episode_ids]) == [0, 1, 2, 3]
    assert len(train) + len(val) == sum(LENGTHS)
    np.testing.assert_array_equal(split_episodes(4, "val", 0.25, 3), val.episode_ids)
    assert {val[i]["episode"] for i in range(len(val))} == set(val.episode_ids)
    with pytest.raises(RobodualError, match="split is 'test'"):
        split_episodes(4, "test")


def test_default_normalization_uses_store_stats(store):
    ds = WindowDataset(store, obs_keys=["depth_static"], horizon=3, split="all", augment_tau=False)
    stats = open_dataset(store).stats
    s = ds[0]
    a = s["action"].numpy()
    assert a.min() >= -1 and a.max() <= 1  # q99 bounds clip
    norm = Normalizer.from_stats(stats, {"action": "q99"})
    bounds = stats["action"]["q01"], stats["action"]["q99"]
    np.testing.assert_allclose(norm.unnormalize("action", a[0]), np.clip([0, 0, 0], *bounds), atol=1e-4)
    p = s["proprio"].numpy()
    np.testing.assert_allclose(p, [-1, -1], atol=1e-6)  # min_max: step 0, episode 0 are the minimum
    d = stats["depth_static"]
    assert s["obs"]["depth_static"][0, 0, 0].item() == pytest.approx((1.0 - d["mean"][0]) / d["std"][0], rel=1e-5)


def test_dataloader_with_workers(store):
    ds = WindowDataset(store, obs_keys=["rgb_static", "depth_static"], horizon=4, split="all")
    loader = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=2, shuffle=True)
    indices = []
    for batch in loader:
        assert batch["obs"]["rgb_static"].shape[1:] == (3, 8, 8)
        assert batch["action"].shape[1:] == (4, 3)
        indices.extend(batch["index"].tolist())
        assert len(batch["instruction"]) == len(batch["index"])
    assert sorted(indices) == list(range(sum(LENGTHS)))


def test_unknown_obs_key(store):
    with pytest.raises(RobodualError, match="no key 'rgb_gripper'"):
        WindowDataset(store, obs_keys=["rgb_gripper"])


def test_normalizer_modes_numpy_and_torch_round_trip():
    stats = {"a": {"min": [0.0, 2.0], "max": [10.0, 2.0], "mean": [5.0, 2.0], "std": [2.0, 0.0],
                   "q01": [1.0, 2.0], "q99": [9.0, 2.0]}}
    x = np.array([[0.0, 2.0], [10.0, 2.0], [5.0, 2.0]], np.float32)
    mm = Normalizer.from_stats(stats, {"a": "min_max"})
    np.testing.assert_allclose(mm.normalize("a", x), [[-1, 0], [1, 0], [0, 0]], atol=1e-6)
    ms = Normalizer.from_stats(stats, {"a": "mean_std"})
    np.testing.assert_allclose(ms.normalize("a", x), [[-2.5, 0], [2.5, 0], [0, 0]], atol=1e-6)
    q = Normalizer.from_stats(stats, {"a": "q99"})
    np.testing.assert_allclose(q.normalize("a", x)[:, 0], [-1, 1, 0], atol=1e-6)  # clipped at the bounds
    for norm in (mm, ms, q):
        inside = np.array([[3.0, 2.0]], np.float32)
        np.testing.assert_allclose(norm.unnormalize("a", norm.normalize("a", inside)), inside, atol=1e-5)
        t = torch.tensor(inside, dtype=torch.float64)
        back = norm.unnormalize("a", norm.normalize("a", t))
        assert isinstance(back, torch.Tensor) and back.dtype == torch.float64
        torch.testing.assert_close(back, t, atol=1e-5, rtol=0)
        again = Normalizer.from_dict(norm.to_dict())
        np.testing.assert_allclose(again.normalize("a", inside), norm.normalize("a", inside))
    with pytest.raises(RobodualError, match="mode for 'a' is 'z'"):
        Normalizer.from_stats(stats, {"a": "z"})
    with pytest.raises(RobodualError, match="no statistics for it"):
        Normalizer.from_stats(stats, {"b": "q99"})


@pytest.mark.parametrize("in_memory", [True, False])
def test_batched_reads_equal_sample_by_sample(store, in_memory):
    """The DataLoader's batched read (__getitems__) gives exactly the one-by-one samples, tau draws included,
    for in-memory images and for images read from zarr, with history, resizing and depth normalization."""
    kw = dict(obs_keys=["rgb_static", "depth_static", "proprio"], horizon=4, k_g=4, history=2, image_size=6,
              split="all", image_cache_bytes=1 << 30 if in_memory else 0)
    ds = WindowDataset(store, **kw)
    assert ds.images_in_memory == in_memory
    idx = [0, 6, int(STARTS[2]) + 1, len(ds) - 1, 6]
    torch.manual_seed(5)
    batch = ds.__getitems__(idx)
    torch.manual_seed(5)
    single = [ds[i] for i in idx]
    assert len({s["tau"] for s in batch}) > 1 or len({s["tau"] for s in single}) == 1
    for a, b in zip(batch, single, strict=True):
        assert a.keys() == b.keys() and a["obs"].keys() == b["obs"].keys()
        for key in ("index", "tau", "gen_index", "episode", "instruction", "task"):
            assert a[key] == b[key]
        for key in ("action", "action_is_pad", "proprio"):
            assert torch.equal(a[key], b[key])
        for key in a["obs"]:
            assert torch.equal(a["obs"][key], b["obs"][key])
    assert single[2]["obs"]["rgb_static"].shape == (3, 3, 6, 6) and single[2]["obs"]["proprio"].shape == (2,)
    with pytest.raises(IndexError, match="out of range"):
        ds.__getitems__([0, len(ds)])


def test_training_batches_draw_tau_from_their_own_seed(store):
    """The trainer's batches (SeededBatch) carry their seed: the same batches with 0 or 2 loader workers, and a
    loader resumed mid-epoch gives the remaining batches exactly, tau draws included."""
    from robodual_core.training import ResumableBatchSampler

    ds = WindowDataset(store, obs_keys=["proprio"], horizon=4, k_g=4, split="all")

    def taus(workers: int, offset: int = 0) -> list[list[int]]:
        sampler = ResumableBatchSampler(len(ds), 4, seed=3)
        sampler.offset = offset
        kw = {"num_workers": workers} if workers else {}
        loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, **kw)
        return [batch["tau"].tolist() for batch in loader]

    torch.manual_seed(0)
    full = taus(0)
    assert len({t for batch in full for t in batch}) > 1  # tau is drawn, not constant
    torch.manual_seed(1)  # another global RNG state changes nothing
    assert taus(2) == full
    assert taus(2, offset=3) == full[3:]


@pytest.mark.parametrize("history", [0, 1])
@pytest.mark.parametrize("image_size", [None, 6])
def test_raw_images_converted_on_the_device_equal_the_default_path(tmp_path, history, image_size):
    """``raw_images``: the loader serves stored frames (uint8 RGB, raw depth) and ``prepare_batch_images`` converts
    them after the transfer (on the GPU in training: issue 20); on the CPU both paths are bit-identical."""
    from dataset_helpers import make_store

    store = make_store(tmp_path / "s.zarr")
    kw = dict(obs_keys=["rgb_static", "depth_static"], horizon=3, k_g=2, history=history, image_size=image_size,
              split="all", augment_tau=False)
    ref, raw = WindowDataset(store, **kw), WindowDataset(store, raw_images=True, **kw)
    idx = list(range(len(ref)))
    a = torch.utils.data.default_collate(ref.__getitems__(idx))
    served = torch.utils.data.default_collate(raw.__getitems__(idx))
    assert served["obs"]["rgb_static"].dtype == torch.uint8  # a quarter of the bytes through the transfer
    b = raw.prepare_batch_images(served)
    for key in ("rgb_static", "depth_static"):
        assert b["obs"][key].shape == a["obs"][key].shape, key
        assert torch.equal(b["obs"][key], a["obs"][key]), key
    assert torch.equal(b["action"], a["action"]) and torch.equal(b["proprio"], a["proprio"])
