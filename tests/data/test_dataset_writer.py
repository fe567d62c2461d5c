"""DatasetWriter / open_dataset / statistics: round trip by value, resume, overwrite and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from dataset_helpers import LENGTHS, MODALITIES, episode, make_store

from robodual_core.data import DatasetWriter, open_dataset
from robodual_core.data.stats import lowdim_stats
from robodual_core.data.validate import validate_store
from robodual_core.errors import RobodualError


def test_round_trip_values_and_metadata(tmp_path):
    ds = open_dataset(make_store(tmp_path / "a.zarr"))
    assert ds.complete and ds.schema_version == 1 and ds.fps == 10
    assert ds.num_episodes == 4 and ds.num_steps == sum(LENGTHS)
    np.testing.assert_array_equal(ds.episode_ends, np.cumsum(LENGTHS))
    assert ds.instructions == ["instruction 0", "instruction 1", "instruction 0", "instruction 1"]
    assert ds.tasks == ["task0", "task1", "task2", "task3"]
    assert ds.root["meta"].attrs["instructions"] == ["instruction 0", "instruction 1"]  # distinct strings stored once
    assert ds.modalities == MODALITIES and ds.keys == sorted(MODALITIES)
    for e, n in enumerate(LENGTHS):
        got = ds.episode(e)
        for key, want in episode(e, n).items():
            np.testing.assert_array_equal(got[key], want)
            assert got[key].dtype == want.dtype
    assert ds.array("rgb_static").chunks == (1, 8, 8, 3)  # one frame per chunk
    assert validate_store(ds.path) == []


def test_stats_match_numpy_exactly(tmp_path):
    ds = open_dataset(make_store(tmp_path / "a.zarr"))
    action = np.asarray(ds.array("action")[:], dtype=np.float64)
    s = ds.stats["action"]
    np.testing.assert_allclose(s["min"], action.min(0))
    np.testing.assert_allclose(s["max"], action.max(0))
    np.testing.assert_allclose(s["mean"], action.mean(0))
    np.testing.assert_allclose(s["std"], action.std(0))
    np.testing.assert_allclose(s["q01"], np.quantile(action, 0.01, axis=0))
    np.testing.assert_allclose(s["q99"], np.quantile(action, 0.99, axis=0))
    depth = np.asarray(ds.array("depth_static")[:])
    assert ds.stats["depth_static"]["mean"] == pytest.approx([depth.mean()], rel=1e-6)
    assert "rgb_static" not in ds.stats


def test_streaming_quantiles_on_many_chunks():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(5000, 3)), rng.standard_cauchy(size=(3001, 3))])  # heavy tails
    x[:, 2] = np.round(x[:, 2])  # many ties
    s = lowdim_stats(x, "x", step=512)
    np.testing.assert_allclose(s["q01"], np.quantile(x, 0.01, axis=0), rtol=1e-12)
    np.testing.assert_allclose(s["q99"], np.quantile(x, 0.99, axis=0), rtol=1e-12)
    np.testing.assert_allclose(s["std"], x.std(0), rtol=1e-10)


def test_existing_store_needs_overwrite_and_survives_until_done(tmp_path):
    path = make_store(tmp_path / "a.zarr")
    with pytest.raises(RobodualError, match="already exists.*--overwrite"):
        DatasetWriter(path, fps=10, modalities=MODALITIES)
    w = DatasetWriter(path, fps=10, modalities=MODALITIES, overwrite=True)
    w.add_episode(episode(0, 2), "x", "y")
    assert open_dataset(path).num_episodes == 4  # the old store is intact until finalize
    w.finalize()
    assert open_dataset(path).num_episodes == 1
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    with pytest.raises(RobodualError, match="not a zarr store"):
        DatasetWriter(tmp_path / "notes", fps=10, modalities=MODALITIES, overwrite=True)


def test_interrupted_write_resumes_after_last_whole_episode(tmp_path):
    path = tmp_path / "a.zarr"
    w = DatasetWriter(path, fps=10, modalities=MODALITIES)
    w.add_episode(episode(0, 5), "i0", "t0")
    w.add_episode(episode(1, 3), "i1", "t1")
    # simulate a crash inside add_episode: data of a third episode written, never committed
    for key, x in episode(2, 7).items():
        arr = w.root["data"][key]
        arr.resize((8 + 7, *arr.shape[1:]))
        arr[8:] = x
    del w
    assert not path.exists()
    with pytest.raises(RobodualError, match="interrupted write.*--resume"):
        DatasetWriter(path, fps=10, modalities=MODALITIES)
    with pytest.raises(RobodualError, match="partial.*does not exist|interrupted"):
        open_dataset(path)
    with pytest.raises(RobodualError, match="attribute 'fps'"):
        DatasetWriter(path, fps=5, modalities=MODALITIES, resume=True)
    w = DatasetWriter(path, fps=10, modalities=MODALITIES, resume=True)
    assert w.num_episodes == 2 and w.num_steps == 8
    w.add_episode(episode(2, 7), "i2", "t2")
    ds = open_dataset(w.finalize())
    np.testing.assert_array_equal(ds.episode_ends, [5, 8, 15])
    np.testing.assert_array_equal(ds.episode(2)["action"], episode(2, 7)["action"])
    assert ds.instructions == ["i0", "i1", "i2"]
    assert validate_store(path) == []


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda ep: ep.pop("proprio"), r"missing: \['proprio'\]"),
        (lambda ep: ep.update(extra=np.zeros(3)), r"unexpected: \['extra'\]"),
        (lambda ep: ep.update(action=np.zeros((4, 3), np.float32)), "has 4 steps"),
        (lambda ep: ep.update(rgb_static=np.zeros((5, 8, 8, 3), np.float32)), "expected uint8"),
        (lambda ep: ep.update(rgb_static=np.zeros((5, 8, 8), np.uint8)), "expected HWC"),
        (lambda ep: ep.update(rgb_static=np.zeros((5, 4, 8, 3), np.uint8)), r"shape \(4, 8, 3\) differs"),
        (lambda ep: ep["action"].__setitem__((2, 1), np.nan), "key 'action': NaN or Inf at step 2"),
    ],
)
def test_bad_episodes_are_refused_with_the_key(tmp_path, change, match):
    w = DatasetWriter(tmp_path / "a.zarr", fps=10, modalities=MODALITIES)
    w.add_episode(episode(0, 5), "i", "t")
    bad = episode(1, 5)
    change(bad)
    with pytest.raises(RobodualError, match=match):
        w.add_episode(bad, "i", "t")
    assert w.num_episodes == 1


def test_bad_modalities_and_empty_finalize(tmp_path):
    with pytest.raises(RobodualError, match="modality of key 'x' is 'video'"):
        DatasetWriter(tmp_path / "a.zarr", fps=10, modalities={"x": "video"})
    w = DatasetWriter(tmp_path / "b.zarr", fps=10, modalities=MODALITIES)
    with pytest.raises(RobodualError, match="no episodes"):
        w.finalize()


def test_validate_lists_every_problem(tmp_path):
    import zarr

    path = make_store(tmp_path / "a.zarr")
    root = zarr.open_group(str(path), mode="r+")
    root["data/action"][3] = np.array([np.inf, 0, 0], np.float32)
    root["meta/episode_ends"][1] = 4
    root.attrs["complete"] = False
    del root["meta/task_index"]
    root.create_array("meta/task_index", shape=(3,), dtype="int32", chunks=(16,))
    problems = validate_store(path)
    text = "\n".join(problems)
    assert "not true" in text
    assert "episode_ends is not strictly increasing" in text
    assert "meta/task_index has 3 entries but there are 4 episodes" in text
    assert "data/action: NaN or Inf at step(s) [3]" in text
    assert validate_store(tmp_path / "missing.zarr") == [f"dataset '{tmp_path / 'missing.zarr'}' does not exist"]
    with pytest.raises(RobodualError, match="not complete"):
        open_dataset(path)


def test_split_and_merge_keep_per_step_instructions(tmp_path):
    """An episode whose frames carry two instructions (a LeRobot episode with two tasks) keeps them through
    split and merge (meta/step_instruction_index), not only its first."""
    from robodual_core.data import DatasetWriter, open_dataset
    from robodual_core.data.ops import copy_episodes, merge_stores
    from robodual_core.data.schema import STEP_INSTRUCTIONS

    src = tmp_path / "src.zarr"
    rng = np.random.default_rng(0)
    with DatasetWriter(src, fps=10, modalities={"proprio": "proprio", "action": "action"}) as w:
        for e in range(3):
            arrays = {"proprio": rng.normal(size=(4, 2)).astype(np.float32),
                      "action": rng.normal(size=(4, 2)).astype(np.float32)}
            steps = ["pick", "pick", "place", "place"] if e == 1 else None
            w.add_episode(arrays, instruction="pick" if e == 1 else f"go {e}", task="t", step_instructions=steps)

    def per_step(path, ep):
        ds = open_dataset(path)
        start, end = ds.episode_bounds(ep)
        assert STEP_INSTRUCTIONS in ds.root["meta"]
        return ds.step_instructions()[start:end]

    assert per_step(src, 1) == ["pick", "pick", "place", "place"]
    copy_episodes([(open_dataset(src), [1, 2])], tmp_path / "split.zarr")
    assert per_step(tmp_path / "split.zarr", 0) == ["pick", "pick", "place", "place"]
    merge_stores([src, tmp_path / "split.zarr"], tmp_path / "merged.zarr")
    assert per_step(tmp_path / "merged.zarr", 1) == ["pick", "pick", "place", "place"]
    assert per_step(tmp_path / "merged.zarr", 3) == ["pick", "pick", "place", "place"]
    assert per_step(tmp_path / "merged.zarr", 2) == ["go 2"] * 4


def test_training_windows_carry_each_steps_instruction(tmp_path):
    from robodual_core.data import DatasetWriter, WindowDataset

    src = tmp_path / "src.zarr"
    with DatasetWriter(src, fps=10, modalities={"proprio": "proprio", "action": "action"}) as w:
        for e in range(2):
            w.add_episode({"proprio": np.zeros((4, 2), np.float32), "action": np.zeros((4, 2), np.float32)},
                          instruction="pick" if e == 0 else "go", task="t",
                          step_instructions=["pick", "pick", "place", "place"] if e == 0 else None)
    ds = WindowDataset(src, obs_keys=[], horizon=2, k_g=2, split="all", augment_tau=False)
    got = [(s["index"], s["instruction"]) for s in ds.__getitems__(list(range(len(ds))))]
    assert got == [(0, "pick"), (1, "pick"), (2, "place"), (3, "place"), (4, "go"), (5, "go"), (6, "go"), (7, "go")]
    assert open_dataset(src).instruction_per_step() == [s for _, s in got]
