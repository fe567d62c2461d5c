"""CALVIN converter: the real sample (tests/data/calvin_sample) bit-exactly, small CALVIN-format fixtures for edge
cases (more damaged inputs: test_hostile_calvin_convert.py)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from robodual_core.data import open_dataset
from robodual_core.data.validate import validate_store
from robodual_core.errors import RobodualError
from robodual_envs.calvin.convert import CalvinConverter
from robodual_envs.calvin.pickle_safe import load_npy

# a copy of real CALVIN task_D_D files: training/ trimmed to frames 0..11, validation/ frames 48..95 (one window each)
SAMPLE = Path(__file__).resolve().parents[1] / "data" / "calvin_sample"
SHAPES = {"rgb_static": ((6, 6, 3), np.uint8), "rgb_gripper": ((4, 4, 3), np.uint8),
          "rgb_tactile": ((5, 4, 6), np.uint8), "depth_static": ((6, 6), np.float32),
          "depth_gripper": ((4, 4), np.float32), "depth_tactile": ((5, 4, 2), np.float32),
          "robot_obs": ((15,), np.float64), "scene_obs": ((24,), np.float64), "actions": ((7,), np.float64),
          "rel_actions": ((7,), np.float64)}


def frame(i: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(i)
    out = {}
    for key, (shape, dtype) in SHAPES.items():
        out[key] = (rng.integers(0, 256, shape).astype(dtype) if dtype == np.uint8 else rng.normal(size=shape).astype(dtype))
    return out


def fake_calvin(root: Path, n_frames: int = 20, windows=((0, 7), (5, 12), (13, 19)), split: str = "training") -> Path:
    d = root / split
    (d / "lang_annotations").mkdir(parents=True)
    for i in range(n_frames):
        np.savez_compressed(d / f"episode_{i:07d}.npz", **frame(i))
    np.save(d / "ep_start_end_ids.npy", np.array([[0, n_frames - 1]]))
    ann = {"info": {"indx": list(windows), "episodes": []},
           "language": {"ann": [f"do thing {k}" for k in range(len(windows))],
                        "task": [f"task_{k % 2}" for k in range(len(windows))],
                        "emb": np.zeros((len(windows), 1, 384), np.float32)}}
    np.save(d / "lang_annotations" / "auto_lang_ann.npy", ann, allow_pickle=True)
    return root


def convert(src, dst, **kw):
    return CalvinConverter().convert(src, dst, progress=False, workers=2, **kw)


@pytest.mark.parametrize(("split", "first", "length"), [("training", 0, 12), ("validation", 48, 48)])
def test_real_sample_survives_bit_exactly(tmp_path, split, first, length):
    ds = open_dataset(convert(SAMPLE, tmp_path / f"{split}.zarr", split=split))
    ann = load_npy(SAMPLE / split / "lang_annotations" / "auto_lang_ann.npy")
    assert ds.num_episodes == 1 and ds.num_steps == length and ds.fps == 30
    assert ds.instructions == ann["language"]["ann"] and ds.tasks == ann["language"]["task"]
    frames = [np.load(SAMPLE / split / f"episode_{first + t:07d}.npz") for t in range(length)]
    pairs = {"rgb_static": "rgb_static", "rgb_gripper": "rgb_gripper", "depth_static": "depth_static",
             "depth_gripper": "depth_gripper", "tactile": "rgb_tactile", "depth_tactile": "depth_tactile",
             "robot_obs": "robot_obs", "scene_obs": "scene_obs", "actions": "actions", "rel_actions": "rel_actions"}
    for key, src_key in pairs.items():
        want = np.stack([f[src_key] for f in frames])
        got = np.asarray(ds.array(key)[:])
        assert got.dtype == want.dtype, key
        np.testing.assert_array_equal(got, want, err_msg=key)
    robot = np.stack([f["robot_obs"] for f in frames])
    np.testing.assert_array_equal(ds.array("proprio")[:], np.concatenate([robot[:, :6], robot[:, -1:]], 1).astype(np.float32))
    np.testing.assert_array_equal(ds.array("action")[:], np.stack([f["rel_actions"] for f in frames]).astype(np.float32))
    assert validate_store(ds.path) == []


def test_one_episode_per_window_with_overlaps(tmp_path):
    src = fake_calvin(tmp_path / "raw")
    ds = open_dataset(convert(src, tmp_path / "out.zarr", action_key="actions"))
    np.testing.assert_array_equal(ds.episode_ends, [8, 16, 23])
    assert ds.instructions == ["do thing 0", "do thing 1", "do thing 2"]
    assert ds.tasks == ["task_0", "task_1", "task_0"]
    assert ds.action_space["source"] == "actions"
    ep1 = ds.episode(1)
    for t, i in enumerate(range(5, 13)):  # frames 5..12 (inclusive window), overlapping episode 0
        f = frame(i)
        np.testing.assert_array_equal(ep1["rgb_static"][t], f["rgb_static"])
        np.testing.assert_array_equal(ep1["tactile"][t], f["rgb_tactile"])
        np.testing.assert_array_equal(ep1["action"][t], f["actions"].astype(np.float32))


def test_keys_and_image_size(tmp_path):
    src = fake_calvin(tmp_path / "raw")
    ds = open_dataset(convert(src, tmp_path / "out.zarr", keys=["rgb_static", "depth_gripper"], image_size=3))
    assert set(ds.keys) == {"rgb_static", "depth_gripper", "proprio", "action", "robot_obs", "scene_obs",
                            "actions", "rel_actions"}
    assert ds.array("rgb_static").shape[1:] == (3, 3, 3) and ds.array("depth_gripper").shape[1:] == (3, 3)
    with pytest.raises(RobodualError, match="unknown key"):
        convert(src, tmp_path / "x.zarr", keys=["lidar"])


def _corrupt(path: Path, how: str) -> None:
    if how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        f = frame(0)
        if how == "missing key":
            del f["scene_obs"]
        elif how == "wrong shape":
            f["rgb_static"] = np.zeros((7, 6, 3), np.uint8)
        elif how == "nan":
            f["robot_obs"][3] = np.nan
        np.savez_compressed(path, **f)


@pytest.mark.parametrize(("how", "match"), [
    ("truncated", "not a readable npz file"),
    ("missing key", "has no key 'scene_obs'"),
    ("wrong shape", r"key 'rgb_static' has shape \(7, 6, 3\).*expected \(6, 6, 3\)"),
    ("nan", "key 'robot_obs' contains NaN"),
])
def test_corrupted_frames_name_the_file(tmp_path, how, match):
    src = fake_calvin(tmp_path / "raw")
    bad = src / "training" / "episode_0000014.npz"
    _corrupt(bad, how)
    with pytest.raises(RobodualError, match=match) as info:
        convert(src, tmp_path / "out.zarr")
    assert str(bad) in str(info.value)
    assert not (tmp_path / "out.zarr").exists()


def test_missing_frame_and_missing_annotations(tmp_path):
    src = fake_calvin(tmp_path / "raw", windows=((0, 7), (15, 25)))
    with pytest.raises(RobodualError, match=r"info.indx\[1\] is \(15, 25\), past the last frame"):
        convert(src, tmp_path / "out.zarr")
    src = fake_calvin(tmp_path / "raw2")
    (src / "training" / "episode_0000012.npz").unlink()  # inside a window: found while converting
    with pytest.raises(RobodualError, match="episode_0000012.npz' does not exist"):
        convert(src, tmp_path / "out.zarr")
    with pytest.raises(RobodualError, match="has no 'validation' folder"):
        convert(src, tmp_path / "v.zarr", split="validation")
    (src / "training" / "lang_annotations" / "auto_lang_ann.npy").unlink()
    with pytest.raises(RobodualError, match="auto_lang_ann.npy' does not exist"):
        convert(src, tmp_path / "o.zarr", overwrite=True)


def test_interrupted_conversion_resumes(tmp_path):
    src = fake_calvin(tmp_path / "raw")
    whole = open_dataset(convert(src, tmp_path / "whole.zarr"))
    good = (src / "training" / "episode_0000015.npz").read_bytes()
    _corrupt(src / "training" / "episode_0000015.npz", "truncated")  # inside the third window
    with pytest.raises(RobodualError):
        convert(src, tmp_path / "out.zarr")
    assert (tmp_path / "out.zarr.partial").is_dir() and not (tmp_path / "out.zarr").exists()
    (src / "training" / "episode_0000015.npz").write_bytes(good)
    with pytest.raises(RobodualError, match="--resume"):
        convert(src, tmp_path / "out.zarr")
    conv = CalvinConverter()
    ds = open_dataset(conv.convert(src, tmp_path / "out.zarr", resume=True, progress=False))
    assert conv.report["resumed_from_episode"] == 2
    np.testing.assert_array_equal(ds.episode_ends, whole.episode_ends)
    for key in whole.keys:
        np.testing.assert_array_equal(ds.array(key)[:], whole.array(key)[:], err_msg=key)
    assert ds.stats == whole.stats
    with pytest.raises(RobodualError, match="already exists"):
        convert(src, tmp_path / "out.zarr")


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_crafted_pickle_cannot_run_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src = fake_calvin(tmp_path / "raw")
    ann_path = src / "training" / "lang_annotations" / "auto_lang_ann.npy"
    np.save(ann_path, np.array({"info": {"indx": [(0, 3)]}, "x": _Boom()}, dtype=object), allow_pickle=True)
    with pytest.raises(RobodualError, match="refusing to load global '(posix|os|nt).system'"):
        convert(src, tmp_path / "out.zarr")
    assert not (tmp_path / "pwned").exists()
    # plain containers, strings, numbers and arrays load
    np.save(tmp_path / "ok.npy", np.array({"a": [1, 2.5, "s", (3, 4)], "b": np.arange(3)}, dtype=object))
    obj = load_npy(tmp_path / "ok.npy")
    assert obj["a"] == [1, 2.5, "s", (3, 4)] and obj["b"].tolist() == [0, 1, 2]
    with pytest.raises(pickle.UnpicklingError):
        from robodual_envs.calvin.pickle_safe import safe_loads

        safe_loads(pickle.dumps(_Boom()))


def test_cli_convert_and_inspect(tmp_path, capsys):
    from robodual_cli.app import main

    src = fake_calvin(tmp_path / "raw")
    dst = tmp_path / "cli.zarr"

    def run(*args):
        with pytest.raises(SystemExit) as exc:
            main([*map(str, args)])
            raise SystemExit(0)
        return exc.value.code, capsys.readouterr()

    code, cap = run("dataset", "convert", "calvin", src, dst, "--workers", "2")
    assert code == 0 and "3 episodes, 23 steps" in cap.out
    code, cap = run("dataset", "convert", "calvin", src, dst)
    assert code == 1 and "already exists" in cap.err
    code, cap = run("dataset", "info", dst, "--json")
    assert code == 0 and '"episodes": 3' in cap.out


def test_calvin_language_embeddings_are_kept_and_read_by_the_language_sensor(tmp_path):
    """Issue 11: CALVIN's own MiniLM embeddings travel into the store and the language sensor reads them."""
    import numpy as np
    import zarr

    from robodual_core.plugins import registry
    from robodual_envs.calvin.convert import LANGUAGE_ID, CalvinConverter, load_npy

    dst = CalvinConverter().convert(SAMPLE, tmp_path / "c.zarr", split="validation", keys=["rgb_static"])
    group = zarr.open_group(str(dst), mode="r")["language"][LANGUAGE_ID]
    assert group.attrs["complete"] is True
    ann = load_npy(SAMPLE / "validation" / "lang_annotations" / "auto_lang_ann.npy")
    expected = np.asarray(ann["language"]["emb"], dtype=np.float32).reshape(-1, 384)[0]
    np.testing.assert_array_equal(group["embeddings"][0], expected)
    sensor = registry("sensors").get("language")(model=LANGUAGE_ID, store=str(dst), out_dim=16)
    tokens = sensor([str(ann["language"]["ann"][0])])
    assert tokens.shape == (1, 1, 16)
