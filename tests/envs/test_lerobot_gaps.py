"""LeRobot gaps of issue 22: per-frame tasks, LeRobot's statistics, the source's video codec.

Fixtures come from ``test_lerobot.py`` (three episodes at 10 fps, an AV1 video in v3.0 and H.264 in
v2.1); here episode 1 is given two tasks: frames 0-1 "open the drawer", frames 2-4 "put it in the bin",
and its episode record lists them out of frame order, as LeRobot's ``list(set(tasks))`` may.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
av = pytest.importorskip("av")

from test_lerobot import LENGTHS, TASKS, convert, write_v3, write_v21  # noqa: E402

from robodual_core.errors import RobodualError  # noqa: E402

NEW_TASK = "put it in the bin"
MULTI_EP, SWITCH = 1, 2  # episode 1 changes task at its frame 2
STEP_TASKS = [TASKS[0]] * LENGTHS[0] + [TASKS[1]] * SWITCH + [NEW_TASK] * (LENGTHS[1] - SWITCH) + \
    [TASKS[2]] * LENGTHS[2]
HAS_AV1 = any(name in av.codecs_available for name in ("libsvtav1", "libaom-av1"))


def _set_task_index(path: Path, episode: int, values: list[int | None]) -> None:
    table = pq.read_table(path)
    ids = table.column("task_index").to_pylist()
    rows = [i for i, e in enumerate(table.column("episode_index").to_pylist()) if e == episode]
    for i, v in zip(rows, values, strict=True):
        ids[i] = v
    col = table.column_names.index("task_index")
    pq.write_table(table.set_column(col, "task_index", pa.array(ids, pa.int64())), path)


def make_multi_task(root: Path, version: str) -> Path:
    """Give episode 1 of a fixture a second task from its frame 2 on (task index 2)."""
    ids = [1] * SWITCH + [2] * (LENGTHS[MULTI_EP] - SWITCH)
    listed = [NEW_TASK, TASKS[1]]  # not in frame order
    if version == "v3.0":
        _set_task_index(root / "data/chunk-000/file-000.parquet", MULTI_EP, ids)
        tasks = root / "meta/tasks.parquet"
        t = pq.read_table(tasks)
        pq.write_table(pa.table({"task_index": pa.array([0, 1, 2], pa.int64()),
                                 "__index_level_0__": [*t.column("__index_level_0__").to_pylist(), NEW_TASK]}),
                       tasks)
        episodes = root / "meta/episodes/chunk-000/file-000.parquet"
        e = pq.read_table(episodes)
        tasks_col = e.column("tasks").to_pylist()
        tasks_col[MULTI_EP] = listed
        pq.write_table(e.set_column(e.column_names.index("tasks"), "tasks", pa.array(tasks_col)), episodes)
    else:
        _set_task_index(root / f"data/chunk-000/episode_{MULTI_EP:06d}.parquet", MULTI_EP, ids)
        with open(root / "meta/tasks.jsonl", "a") as f:
            f.write(json.dumps({"task_index": 2, "task": NEW_TASK}) + "\n")
        lines = (root / "meta/episodes.jsonl").read_text().splitlines()
        record = json.loads(lines[MULTI_EP])
        record["tasks"] = listed
        lines[MULTI_EP] = json.dumps(record)
        (root / "meta/episodes.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("lerobot_gaps")
    return {"v3.0": write_v3(base / "v30"), "v2.1": write_v21(base / "v21"),
            "multi-v3.0": make_multi_task(write_v3(base / "m30"), "v3.0"),
            "multi-v2.1": make_multi_task(write_v21(base / "m21"), "v2.1")}


def copy_source(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def step_instructions(path: Path) -> list[str] | None:
    from robodual_core.data import open_dataset
    from robodual_core.data.schema import STEP_INSTRUCTIONS

    ds = open_dataset(path)
    if STEP_INSTRUCTIONS not in ds.root["meta"]:
        return None
    vocab = ds.root["meta"].attrs["instructions"]
    return [vocab[i] for i in ds.meta_array(STEP_INSTRUCTIONS)[:]]


def frame_tasks(root: Path) -> list[str]:
    """Each frame's task string in an exported LeRobot v3.0 folder, in dataset order."""
    tasks = pq.read_table(root / "meta/tasks.parquet").to_pydict()
    names = dict(zip(tasks["task_index"], tasks["task"], strict=True))
    data = pq.read_table(sorted((root / "data").glob("chunk-*/file-*.parquet"))[0]).sort_by("index")
    return [names[i] for i in data.column("task_index").to_pylist()]


def episode_table(root: Path) -> dict:
    return pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pydict()


# -- 1. per-frame tasks -----------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["v3.0", "v2.1"])
def test_multi_task_episode_keeps_every_frames_task_through_a_round_trip(sources, tmp_path, version):
    from robodual_core.data import open_dataset
    from robodual_envs.lerobot.convert import LeRobotConverter
    from robodual_envs.lerobot.export import export_lerobot

    conv = LeRobotConverter()
    store = conv.convert(sources[f"multi-{version}"], tmp_path / "a.zarr", workers=0, progress=False)
    assert conv.report["multi_task_episodes"] == [MULTI_EP]
    ds = open_dataset(store)
    # the episode's own instruction is its first frame's task (not the first of its unordered task list)
    assert ds.instructions == TASKS and ds.tasks == TASKS
    assert step_instructions(store) == STEP_TASKS

    export_lerobot(store, tmp_path / "lr", codec="h264", progress=False)
    assert frame_tasks(tmp_path / "lr") == STEP_TASKS
    table = episode_table(tmp_path / "lr")
    assert table["tasks"] == [[TASKS[0]], [TASKS[1], NEW_TASK], [TASKS[2]]]  # frame order
    info = json.loads((tmp_path / "lr/meta/info.json").read_text())
    assert info["total_tasks"] == 3

    back = convert(tmp_path / "lr", tmp_path / "b.zarr")
    assert step_instructions(back) == STEP_TASKS
    assert open_dataset(back).instructions == TASKS


def test_single_task_stores_are_unchanged(sources, tmp_path):
    store = convert(sources["v3.0"], tmp_path / "a.zarr")
    assert step_instructions(store) is None


@pytest.mark.hostile
def test_step_instructions_survive_an_interrupted_write(tmp_path):
    """kill -9 between steps of a write: resume cuts uncommitted steps and fills steps a creation left unset."""
    from robodual_core.data import DatasetWriter
    from robodual_core.data.schema import STEP_INSTRUCTIONS
    from robodual_core.data.zarr_io import zarr_module

    def episode(n: int) -> dict:
        return {"action": np.arange(n * 2, dtype=np.float32).reshape(n, 2)}

    path = tmp_path / "s.zarr"
    w = DatasetWriter(path, fps=10, modalities={"action": "action"})
    w.add_episode(episode(3), instruction="a", task="a")
    w.add_episode(episode(4), instruction="b", task="b", step_instructions=["b", "b", "c", "c"])
    w.add_episode(episode(2), instruction="d", task="d", step_instructions=["d", "e"])
    # the last episode never committed: its episode_ends entry is gone, its steps are still there
    root = zarr_module().open_group(str(tmp_path / "s.zarr.partial"), mode="r+")
    root["meta/episode_ends"].resize((2,))
    w = DatasetWriter(path, fps=10, modalities={"action": "action"}, resume=True)
    assert w.num_episodes == 2 and root["meta"][STEP_INSTRUCTIONS].shape == (7,)
    w.add_episode(episode(2), instruction="d", task="d")
    w.finalize()
    assert step_instructions(path) == ["a"] * 3 + ["b", "b", "c", "c"] + ["d", "d"]
    with pytest.raises(RobodualError, match="step_instructions has 1 entries; expected one string per step"):
        DatasetWriter(tmp_path / "t.zarr", fps=10, modalities={"action": "action"}).add_episode(
            episode(2), instruction="x", step_instructions=["x"])

    # a crash while the per-step array was being created: its steps read -1 (the fill value) or are missing
    path = tmp_path / "u.zarr"
    w = DatasetWriter(path, fps=10, modalities={"action": "action"})
    w.add_episode(episode(3), instruction="a", task="a")
    w.add_episode(episode(2), instruction="b", task="b")
    root = zarr_module().open_group(str(tmp_path / "u.zarr.partial"), mode="r+")
    arr = root["meta"].create_array(STEP_INSTRUCTIONS, shape=(4,), dtype="int32", chunks=(16,), fill_value=-1)
    arr[:2] = 0
    w = DatasetWriter(path, fps=10, modalities={"action": "action"}, resume=True)
    w.add_episode(episode(2), instruction="c", task="c", step_instructions=["c", "a"])
    w.finalize()
    assert step_instructions(path) == ["a"] * 3 + ["b"] * 2 + ["c", "a"]


@pytest.mark.hostile
def test_task_index_missing_from_the_tasks_table_is_refused(sources, tmp_path):
    src = copy_source(sources["v3.0"], tmp_path / "src")
    _set_task_index(src / "data/chunk-000/file-001.parquet", 2, [0, 0, 0, 7, 7, 7, 7, 7, 7])
    with pytest.raises(RobodualError, match=r"file-001\.parquet.*episode 2: frame 3 has task_index 7.*"
                                            r"meta/tasks\.parquet.*known: \[0, 1\]"):
        convert(src, tmp_path / "out.zarr")
    src = copy_source(sources["v2.1"], tmp_path / "src21")
    (src / "meta/tasks.jsonl").write_text(json.dumps({"task_index": 0, "task": TASKS[0]}) + "\n")  # 1 is gone
    with pytest.raises(RobodualError, match=r"episode 1: frame 0 has task_index 1.*meta/tasks\.jsonl"):
        convert(src, tmp_path / "out21.zarr")


@pytest.mark.hostile
def test_null_task_index_is_refused(sources, tmp_path):
    src = copy_source(sources["v2.1"], tmp_path / "src")
    _set_task_index(src / "data/chunk-000/episode_000000.parquet", 0, [0, 0, None, 0, 0, 0, 0])
    with pytest.raises(RobodualError, match=r"episode 0: column 'task_index' holds .* not all whole numbers"):
        convert(src, tmp_path / "out.zarr")


@pytest.mark.hostile
def test_several_tasks_without_a_task_index_column_are_refused_naming_them(sources, tmp_path):
    src = copy_source(sources["multi-v2.1"], tmp_path / "src")
    path = src / f"data/chunk-000/episode_{MULTI_EP:06d}.parquet"
    table = pq.read_table(path)
    pq.write_table(table.drop(["task_index"]), path)
    with pytest.raises(RobodualError, match=r"episode 1: the episode lists tasks \['put it in the bin', "
                                            r"'open the drawer'\] but its frames have no 'task_index' column"):
        convert(src, tmp_path / "out.zarr")


# -- 2. statistics as LeRobot writes them -----------------------------------------------------------
STATS = ("min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99")
Q = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}


def test_stats_have_lerobots_keys_features_and_values(sources, tmp_path):
    from robodual_core.data import open_dataset
    from robodual_envs.lerobot.export import export_lerobot
    from robodual_envs.lerobot.stats import sample_indices

    store = convert(sources["multi-v3.0"], tmp_path / "a.zarr", mapping={"observation.images.wrist": ""})
    export_lerobot(store, tmp_path / "lr", codec="h264", progress=False)
    root = tmp_path / "lr"
    ds = open_dataset(store)
    stats = json.loads((root / "meta/stats.json").read_text())
    features = json.loads((root / "meta/info.json").read_text())["features"]
    assert set(stats) == set(features)  # timestamp, frame_index, episode_index, index, task_index included
    for feature in stats:
        assert list(stats[feature]) == list(STATS), feature
    table = episode_table(root)
    for feature in features:
        for stat in STATS:
            assert f"stats/{feature}/{stat}" in table, (feature, stat)

    data = pq.read_table(root / "data/chunk-000/file-000.parquet").sort_by("index")
    values = {"observation.state": ds.array("proprio")[:], "action": ds.array("action")[:],
              "next.reward": ds.array("next_reward")[:],
              **{name: data.column(name).to_numpy()[:, None] for name in
                 ("timestamp", "frame_index", "episode_index", "index", "task_index")}}
    bounds = list(zip([0, *ds.episode_ends[:-1]], ds.episode_ends, strict=True))
    for feature, x in values.items():
        x = np.asarray(x, dtype=np.float64)
        for ep, (a, b) in enumerate(bounds):  # per episode: numpy's quantiles
            got = {s: np.asarray(table[f"stats/{feature}/{s}"][ep]) for s in STATS}
            assert got["count"].tolist() == [b - a]
            np.testing.assert_allclose(got["mean"], x[a:b].mean(0), rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(got["std"], x[a:b].std(0), rtol=1e-6, atol=1e-6)
            for s, q in Q.items():
                np.testing.assert_allclose(got[s], np.quantile(x[a:b], q, axis=0), rtol=1e-6, atol=1e-6)
        # the whole dataset: exact min/max/mean/std; quantiles as LeRobot aggregates them (count-weighted)
        st = {k: np.asarray(v) for k, v in stats[feature].items()}
        assert st["count"].tolist() == [ds.num_steps]
        np.testing.assert_allclose(st["min"], x.min(0), atol=1e-6)
        np.testing.assert_allclose(st["max"], x.max(0), atol=1e-6)
        np.testing.assert_allclose(st["mean"], x.mean(0), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(st["std"], x.std(0), rtol=1e-6, atol=1e-6)
        lengths = np.diff([0, *ds.episode_ends])
        for s, q in Q.items():
            per_episode = np.stack([np.quantile(x[a:b], q, axis=0) for a, b in bounds])
            np.testing.assert_allclose(st[s], (per_episode * lengths[:, None]).sum(0) / lengths.sum(), atol=1e-6)
    assert np.asarray(stats["task_index"]["max"]).tolist() == [2.0]
    assert np.asarray(stats["frame_index"]["max"]).tolist() == [max(LENGTHS) - 1]

    # video: per channel in [0, 1] over the frames LeRobot samples, shape [3, 1, 1]
    frames = np.asarray(ds.array("rgb_top")[:])
    counts = []
    for ep, (a, b) in enumerate(bounds):
        sampled = frames[a:b][sample_indices(b - a)].reshape(-1, 3).astype(np.float64) / 255.0
        counts.append(len(sample_indices(b - a)))
        got = {s: np.asarray(table[f"stats/observation.images.top/{s}"][ep]) for s in STATS}
        assert got["mean"].shape == (3, 1, 1) and got["count"].tolist() == [counts[-1]]
        np.testing.assert_allclose(got["mean"][:, 0, 0], sampled.mean(0), atol=1e-9)
        np.testing.assert_allclose(got["std"][:, 0, 0], sampled.std(0), atol=1e-9)
        np.testing.assert_allclose(got["min"][:, 0, 0], sampled.min(0), atol=1e-9)
        for s, q in Q.items():
            np.testing.assert_allclose(got[s][:, 0, 0], np.quantile(sampled, q, axis=0), atol=1e-9)
    assert np.asarray(stats["observation.images.top"]["q50"]).shape == (3, 1, 1)
    assert stats["observation.images.top"]["count"] == [sum(counts)]


def test_image_quantiles_from_counts_equal_numpy():
    from robodual_envs.lerobot.stats import QUANTILES, downsample, image_stats, sample_indices

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (5, 7, 9, 3), dtype=np.uint8)
    frames[0, 0, 0] = 0
    got = image_stats(frames)
    x = frames.reshape(-1, 3).astype(np.float64) / 255
    for key, q in zip(("q01", "q10", "q50", "q90", "q99"), QUANTILES, strict=True):
        np.testing.assert_allclose(got[key][:, 0, 0], np.quantile(x, q, axis=0), atol=1e-12)
    assert sample_indices(7) == list(range(7)) and len(sample_indices(1000)) == 177  # LeRobot's heuristic
    assert downsample(np.zeros((1, 480, 640, 3))).shape == (1, 120, 160, 3)  # LeRobot keeps every 4th pixel


# -- 3. the source's video codec ---------------------------------------------------------------------
def test_conversion_records_the_source_codec(sources, tmp_path):
    from robodual_core.data import open_dataset

    for version, codec in (("v3.0", "av1"), ("v2.1", "h264")):
        store = convert(sources[version], tmp_path / f"{codec}.zarr")
        assert open_dataset(store).attrs["lerobot"]["video_codecs"] == {"observation.images.top": codec}


@pytest.mark.skipif(not HAS_AV1, reason="this PyAV has no AV1 encoder")
def test_export_matches_the_source_codec_by_default(sources, tmp_path):
    from robodual_envs.lerobot.export import export_lerobot

    for version, codec in (("v3.0", "av1"), ("v2.1", "h264")):
        store = convert(sources[version], tmp_path / f"{codec}.zarr")
        report = export_lerobot(store, tmp_path / f"lr-{codec}", progress=False)
        info = json.loads((tmp_path / f"lr-{codec}/meta/info.json").read_text())
        # the wrist camera was PNG images in the source: it follows the dataset's video codec
        for feature in ("observation.images.top", "observation.images.wrist"):
            assert info["features"][feature]["info"]["video.codec"] == codec
        assert report["warnings"] == []
        with av.open(str(tmp_path / f"lr-{codec}/videos/observation.images.top/chunk-000/file-000.mp4")) as c:
            assert c.streams.video[0].codec_context.codec.canonical_name == codec
    report = export_lerobot(tmp_path / "av1.zarr", tmp_path / "lr-chosen", codec="h264", progress=False)
    assert report["encoder"] in ("libx264", "libopenh264")
    info = json.loads((tmp_path / "lr-chosen/meta/info.json").read_text())
    assert info["features"]["observation.images.top"]["info"]["video.codec"] == "h264"


@pytest.mark.hostile
def test_missing_av1_encoder_falls_back_with_a_clear_message(sources, tmp_path, monkeypatch):
    import robodual_envs.common.video as video
    from robodual_envs.lerobot.export import export_lerobot

    store = convert(sources["v3.0"], tmp_path / "a.zarr")
    real = video._can_encode
    monkeypatch.setattr(video, "_can_encode", lambda name: name not in ("libsvtav1", "libaom-av1") and real(name))
    report = export_lerobot(store, tmp_path / "lr", progress=False)
    assert report["encoder"] in ("libx264", "libopenh264")
    assert len(report["warnings"]) == 2
    assert all("the source's videos are av1" in w and "libsvtav1, libaom-av1" in w and "merge" in w
               for w in report["warnings"])
    info = json.loads((tmp_path / "lr/meta/info.json").read_text())
    assert info["features"]["observation.images.top"]["info"]["video.codec"] == "h264"
    # asked for by name, a missing encoder is refused, not replaced
    with pytest.raises(RobodualError, match=r"--codec 'av1': PyAV has no encoder for it here; available: libx264"):
        export_lerobot(store, tmp_path / "lr2", codec="av1", progress=False)


@pytest.mark.hostile
def test_unknown_codec_flag_is_a_clear_error(sources, tmp_path):
    from typer.testing import CliRunner

    from robodual_cli.app import build_app
    from robodual_envs.lerobot.export import export_lerobot

    store = convert(sources["v2.1"], tmp_path / "a.zarr")
    with pytest.raises(RobodualError, match=r"--codec 'h265x' is not a codec this export knows; expected one of "
                                            r"auto, h264, av1 or an FFmpeg video encoder name"):
        export_lerobot(store, tmp_path / "lr", codec="h265x", progress=False)
    with pytest.raises(RobodualError, match="--codec 'aac'"):  # an encoder, but not of video
        export_lerobot(store, tmp_path / "lr", codec="aac", progress=False)
    assert not (tmp_path / "lr").exists()
    result = CliRunner().invoke(build_app(), ["dataset", "export", "lerobot", str(store), str(tmp_path / "lr"),
                                              "--codec", "nope"])
    assert result.exit_code != 0  # the CLI's main() prints a RobodualError as one line
    assert isinstance(result.exception, RobodualError) and "--codec 'nope'" in str(result.exception)


@pytest.mark.hostile
def test_a_source_stats_json_that_is_not_json_does_not_matter(sources, tmp_path):
    """The converter recomputes statistics: a damaged meta/stats.json neither stops nor feeds it."""
    from robodual_core.data import open_dataset

    src = copy_source(sources["v3.0"], tmp_path / "src")
    (src / "meta/stats.json").write_text('{"action": {"mean": [0.0, ')
    store = convert(src, tmp_path / "a.zarr")
    ds = open_dataset(store)
    np.testing.assert_allclose(ds.stats["action"]["mean"], np.asarray(ds.array("action")[:]).mean(0), rtol=1e-5)


@pytest.mark.hostile
def test_damaged_step_instructions_are_refused_on_export(sources, tmp_path):
    from robodual_core.data.schema import STEP_INSTRUCTIONS
    from robodual_core.data.zarr_io import zarr_module
    from robodual_envs.lerobot.export import export_lerobot

    store = convert(sources["multi-v3.0"], tmp_path / "a.zarr")
    arr = zarr_module().open_group(str(store), mode="r+")["meta"][STEP_INSTRUCTIONS]
    arr[4] = 99
    with pytest.raises(RobodualError, match=rf"meta/{STEP_INSTRUCTIONS} has values 0\.\.99; expected indices"):
        export_lerobot(store, tmp_path / "lr", codec="h264", progress=False)
    arr.resize((sum(LENGTHS) - 1,))
    with pytest.raises(RobodualError, match=rf"meta/{STEP_INSTRUCTIONS} has {sum(LENGTHS) - 1} entries; "
                                            rf"expected one per step \({sum(LENGTHS)}"):
        export_lerobot(store, tmp_path / "lr", codec="h264", progress=False)


@pytest.mark.hostile
@pytest.mark.skipif("libsvtav1" not in av.codecs_available, reason="this PyAV has no SVT-AV1 encoder")
@pytest.mark.skipif(not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() != 0,
                    reason="SVT-AV1 makes its threads real-time only when run as root")
def test_an_av1_encode_as_root_leaves_no_thread_real_time_and_prints_no_banner(tmp_path, capfd):
    """SVT-AV1, run as root, puts the thread that opens it and the threads it starts at SCHED_FIFO 99 and prints
    a banner: an AV1 export would leave the command's process real-time (its encoding threads able to starve the
    machine) and the user's terminal full of 'Svt[info]' lines."""
    import os

    from robodual_envs.common.video import VideoFile

    def policies():
        found = []
        for tid in os.listdir("/proc/self/task"):
            try:
                found.append(os.sched_getscheduler(int(tid)))
            except OSError:
                continue
        return found

    before = os.sched_getscheduler(0)
    realtime = {os.SCHED_FIFO, os.SCHED_RR}
    assert before not in realtime
    frames = np.random.default_rng(0).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    out = VideoFile(tmp_path / "a.mp4", fps=10, height=32, width=32, encoder="libsvtav1")
    out.write(frames[:3])
    assert not realtime & set(policies())  # the encoder is open, its threads running: none real-time
    out.write(frames[3:])
    out.close()
    assert not realtime & set(policies()) and os.sched_getscheduler(0) == before
    assert (tmp_path / "a.mp4").stat().st_size > 0
    assert "Svt[" not in capfd.readouterr().err
