"""LeRobot import/export: fixtures in v3.0 and v2.1 written here with pyarrow and PyAV.

Each fixture has three short episodes (10 fps) with one video feature (``observation.images.top``,
AV1 in v3.0 and H.264 in v2.1), one inline PNG image feature (``observation.images.wrist``),
``observation.state`` [4], ``action`` [3], a scalar ``next.reward`` and a string feature that is not
converted. Video frames are smooth images whose brightness steps by 12 per frame, so a lossy codec
stays within a few levels while neighbouring frames differ by 12: frame identity is checkable.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
av = pytest.importorskip("av")
Image = pytest.importorskip("PIL.Image")

from robodual_core.errors import RobodualError  # noqa: E402

FPS = 10
LENGTHS = [7, 5, 9]
TASKS = ["pick up the red cube", "open the drawer", "pick up the red cube"]
H = W = 32
MAX_MEAN_ERR = 3.0  # mean |error| of a lossy codec on these smooth frames, in 0-255 levels
MAX_ABS_ERR = 24


def video_frame(ep: int, t: int) -> np.ndarray:
    """A smooth frame, distinct per (episode, step): brightness 30 + 12 t + 40 ep plus gentle gradients."""
    y, x = np.mgrid[0:H, 0:W]
    base = 30 + 12 * t + 40 * ep
    img = np.stack([base + x, base + y, base + (x + y) // 2], axis=-1)
    return np.clip(img, 0, 255).astype(np.uint8)


def wrist_image(ep: int, t: int) -> np.ndarray:
    rng = np.random.default_rng(1000 * ep + t)
    return rng.integers(0, 256, (H, W, 3), dtype=np.uint8)  # PNG is lossless: noise must survive exactly


def episode_values(ep: int, n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(ep)
    return {"observation.state": rng.standard_normal((n, 4)).astype(np.float32),
            "action": rng.standard_normal((n, 3)).astype(np.float32),
            "next.reward": rng.random(n).astype(np.float32)}


def png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def encode_mp4(path: Path, frames: list[np.ndarray], codec: str) -> None:
    from fractions import Fraction

    from robodual_envs.common.video import keep_scheduling

    path.parent.mkdir(parents=True, exist_ok=True)
    with keep_scheduling(), av.open(str(path), "w") as out:  # SVT-AV1 as root would leave this process real-time
        stream = out.add_stream(codec, rate=Fraction(FPS))
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.options = {"crf": "10", "g": "2"} if codec == "libx264" else {"crf": "10", "g": "2", "preset": "10"}
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def features(codec: str) -> dict:
    video_info = {"video.height": H, "video.width": W, "video.codec": codec, "video.pix_fmt": "yuv420p",
                  "video.is_depth_map": False, "video.fps": FPS, "video.channels": 3, "has_audio": False}
    return {
        "observation.images.top": {"dtype": "video", "shape": [H, W, 3], "names": ["height", "width", "channels"],
                                   "info": video_info},
        "observation.images.wrist": {"dtype": "image", "shape": [H, W, 3], "names": ["height", "width", "channels"]},
        "observation.state": {"dtype": "float32", "shape": [4], "names": ["x", "y", "z", "gripper"]},
        "action": {"dtype": "float32", "shape": [3], "names": ["dx", "dy", "dz"]},
        "next.reward": {"dtype": "float32", "shape": [1], "names": None},
        "language_instruction": {"dtype": "string", "shape": [1], "names": None},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
    }


def task_ids() -> tuple[list[str], list[int]]:
    unique = list(dict.fromkeys(TASKS))
    return unique, [unique.index(t) for t in TASKS]


def episode_table(ep: int, start: int, task_index: int) -> pa.Table:
    n = LENGTHS[ep]
    vals = episode_values(ep, n)
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    return pa.table({
        "observation.images.wrist": pa.array([{"bytes": png(wrist_image(ep, t)), "path": None} for t in range(n)],
                                             image_type),
        "observation.state": pa.FixedSizeListArray.from_arrays(pa.array(vals["observation.state"].ravel()), 4),
        "action": pa.array(list(vals["action"]), pa.list_(pa.float32())),  # variable list, as older HF writes
        "next.reward": pa.array(vals["next.reward"]),
        "language_instruction": pa.array([TASKS[ep]] * n),
        "timestamp": pa.array((np.arange(n) / FPS).astype(np.float32)),
        "frame_index": pa.array(np.arange(n, dtype=np.int64)),
        "episode_index": pa.array(np.full(n, ep, dtype=np.int64)),
        "index": pa.array(np.arange(start, start + n, dtype=np.int64)),
        "task_index": pa.array(np.full(n, task_index, dtype=np.int64)),
    })


def info(version: str, codec: str, **paths: str) -> dict:
    return {"codebase_version": version, "robot_type": "toy_arm", "total_episodes": len(LENGTHS),
            "total_frames": sum(LENGTHS), "total_tasks": len(set(TASKS)), "chunks_size": 1000, "fps": FPS,
            "splits": {"train": f"0:{len(LENGTHS)}"}, **paths, "features": features(codec)}


def write_v3(root: Path) -> Path:
    """Episodes 0-1 in data/video file-000, episode 2 in file-001 (as LeRobot rolls files over)."""
    unique, ids = task_ids()
    files = [[0, 1], [2]]
    starts = np.concatenate([[0], np.cumsum(LENGTHS)[:-1]])
    rows = []
    for file_index, eps in enumerate(files):
        tables = [episode_table(ep, int(starts[ep]), ids[ep]) for ep in eps]
        data = root / f"data/chunk-000/file-{file_index:03d}.parquet"
        data.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.concat_tables(tables), data)
        frames, offset = [], 0
        for ep in eps:
            frames += [video_frame(ep, t) for t in range(LENGTHS[ep])]
            rows.append({"episode_index": ep, "tasks": [TASKS[ep]], "length": LENGTHS[ep],
                         "data/chunk_index": 0, "data/file_index": file_index,
                         "dataset_from_index": int(starts[ep]), "dataset_to_index": int(starts[ep] + LENGTHS[ep]),
                         "videos/observation.images.top/chunk_index": 0,
                         "videos/observation.images.top/file_index": file_index,
                         "videos/observation.images.top/from_timestamp": offset / FPS,
                         "videos/observation.images.top/to_timestamp": (offset + LENGTHS[ep]) / FPS,
                         "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0,
                         "stats/action/mean": [0.0, 0.0, 0.0]})
            offset += LENGTHS[ep]
        encode_mp4(root / f"videos/observation.images.top/chunk-000/file-{file_index:03d}.mp4", frames, "libsvtav1")
    meta = root / "meta"
    (meta / "episodes/chunk-000").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), meta / "episodes/chunk-000/file-000.parquet")
    # pandas writes the task strings as its unnamed index
    pq.write_table(pa.table({"task_index": pa.array(range(len(unique)), pa.int64()), "__index_level_0__": unique}),
                   meta / "tasks.parquet")
    (meta / "info.json").write_text(json.dumps(info(
        "v3.0", "av1", data_path="data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        video_path="videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4")))
    (meta / "stats.json").write_text("{}")
    return root


def write_v21(root: Path) -> Path:
    unique, ids = task_ids()
    start = 0
    meta = root / "meta"
    meta.mkdir(parents=True, exist_ok=True)
    episodes = []
    for ep, n in enumerate(LENGTHS):
        data = root / f"data/chunk-000/episode_{ep:06d}.parquet"
        data.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(episode_table(ep, start, ids[ep]), data)
        encode_mp4(root / f"videos/chunk-000/observation.images.top/episode_{ep:06d}.mp4",
                   [video_frame(ep, t) for t in range(n)], "libx264")
        episodes.append({"episode_index": ep, "tasks": [TASKS[ep]], "length": n})
        start += n
    (meta / "episodes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in episodes))
    (meta / "tasks.jsonl").write_text("".join(json.dumps({"task_index": i, "task": t}) + "\n"
                                              for i, t in enumerate(unique)))
    (meta / "info.json").write_text(json.dumps(info(
        "v2.1", "h264", data_path="data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        video_path="videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4")))
    return root


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("lerobot")
    return {"v3.0": write_v3(base / "v30"), "v2.1": write_v21(base / "v21")}


def convert(src: Path, dst: Path, **kw):
    from robodual_envs.lerobot.convert import LeRobotConverter

    kw.setdefault("workers", 0)
    return LeRobotConverter().convert(src, dst, progress=False, **kw)


def assert_frames_close(got: np.ndarray, ep: int) -> None:
    want = np.stack([video_frame(ep, t) for t in range(LENGTHS[ep])])
    assert got.shape == want.shape
    err = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert err.mean() <= MAX_MEAN_ERR and err.max() <= MAX_ABS_ERR, (err.mean(), err.max())
    # each frame is nearest to its own original, not to a neighbour (timestamp matching is right)
    dist = np.abs(got[:, None].astype(np.int16) - want[None].astype(np.int16)).mean(axis=(2, 3, 4))
    assert (dist.argmin(axis=1) == np.arange(len(want))).all()


def check_store(path: Path, video_key: str = "rgb_top", wrist_key: str | None = "rgb_wrist",
                reward_key: str | None = "next_reward") -> None:
    from robodual_core.data import open_dataset

    ds = open_dataset(path)
    assert ds.num_episodes == len(LENGTHS)
    assert ds.episode_ends.tolist() == np.cumsum(LENGTHS).tolist()
    assert ds.instructions == TASKS and ds.tasks == TASKS
    assert ds.fps == FPS
    assert ds.modalities["proprio"] == "proprio" and ds.modalities["action"] == "action"
    assert ds.modalities[video_key] == "rgb"
    for ep, (start, end) in enumerate(zip([0, *ds.episode_ends[:-1]], ds.episode_ends, strict=True)):
        vals = episode_values(ep, LENGTHS[ep])
        np.testing.assert_array_equal(ds.array("proprio")[start:end], vals["observation.state"])
        np.testing.assert_array_equal(ds.array("action")[start:end], vals["action"])
        if reward_key:
            np.testing.assert_array_equal(ds.array(reward_key)[start:end], vals["next.reward"][:, None])
        if wrist_key:
            np.testing.assert_array_equal(ds.array(wrist_key)[start:end],
                                          np.stack([wrist_image(ep, t) for t in range(LENGTHS[ep])]))
        assert_frames_close(np.asarray(ds.array(video_key)[start:end]), ep)


@pytest.mark.parametrize("version", ["v3.0", "v2.1"])
def test_convert_keeps_frames_values_boundaries_and_tasks(sources, tmp_path, version):
    from robodual_core.data import open_dataset

    path = convert(sources[version], tmp_path / "out.zarr")
    check_store(path)
    ds = open_dataset(path)
    lerobot = ds.attrs["lerobot"]
    assert lerobot["codebase_version"] == version and lerobot["fps"] == FPS
    assert lerobot["features"] == {"rgb_top": "observation.images.top", "rgb_wrist": "observation.images.wrist",
                                   "proprio": "observation.state", "action": "action", "next_reward": "next.reward"}
    assert "language_instruction" in lerobot["dropped"]
    assert ds.action_space["components"] == ["dx", "dy", "dz"]


def test_map_renames_and_drops_and_worker_processes(sources, tmp_path):
    from robodual_core.data import open_dataset

    path = convert(sources["v3.0"], tmp_path / "out.zarr", workers=2,
                   mapping={"observation.images.top": "rgb_static", "observation.images.wrist": "",
                            "next.reward": "", "frame_index": "frame_index"})
    ds = open_dataset(path)
    assert set(ds.keys) == {"rgb_static", "proprio", "action", "frame_index"}
    np.testing.assert_array_equal(ds.array("frame_index")[:, 0], np.concatenate([np.arange(n) for n in LENGTHS]))
    check_store(path, video_key="rgb_static", wrist_key=None, reward_key=None)
    with pytest.raises(RobodualError, match="observation.images.nope"):
        convert(sources["v3.0"], tmp_path / "bad.zarr", mapping={"observation.images.nope": "x"})
    with pytest.raises(RobodualError, match="map to key"):
        convert(sources["v3.0"], tmp_path / "bad.zarr", mapping={"observation.images.wrist": "rgb_top"})


def test_interrupted_conversion_resumes(sources, tmp_path, monkeypatch):
    import robodual_envs.lerobot.decode as decode
    from robodual_core.data import open_dataset

    real = decode.load_episode

    def failing(job):
        if job.episode.index == 2:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(decode, "load_episode", failing)
    dst = tmp_path / "out.zarr"
    with pytest.raises(KeyboardInterrupt):
        convert(sources["v2.1"], dst)
    assert not dst.exists() and (tmp_path / "out.zarr.partial").is_dir()
    monkeypatch.setattr(decode, "load_episode", real)
    with pytest.raises(RobodualError, match="--resume"):
        convert(sources["v2.1"], dst)
    from robodual_envs.lerobot.convert import LeRobotConverter

    conv = LeRobotConverter()
    conv.convert(sources["v2.1"], dst, workers=0, resume=True, progress=False)
    assert conv.report["resumed_from_episode"] == 2
    assert open_dataset(dst).complete
    check_store(dst)


def test_export_then_import_round_trips(sources, tmp_path):
    from robodual_core.data import open_dataset
    from robodual_envs.lerobot.export import export_lerobot

    store = convert(sources["v3.0"], tmp_path / "a.zarr", mapping={"observation.images.wrist": "rgb_gripper"})
    report = export_lerobot(store, tmp_path / "exported", progress=False)
    assert report["encoder"] in ("libx264", "libopenh264", "libsvtav1", "libaom-av1", "mpeg4")
    root = tmp_path / "exported"
    info_ = json.loads((root / "meta/info.json").read_text())
    assert info_["codebase_version"] == "v3.0" and info_["total_frames"] == sum(LENGTHS)
    assert info_["features"]["observation.images.wrist"]["dtype"] == "video"  # names restored from the attrs
    assert info_["features"]["observation.state"]["names"] == ["x", "y", "z", "gripper"]
    stats = json.loads((root / "meta/stats.json").read_text())
    assert np.array(stats["observation.images.top"]["mean"]).shape == (3, 1, 1)
    assert stats["action"]["count"] == [sum(LENGTHS)]
    assert (root / "videos/observation.images.top/chunk-000/file-000.mp4").is_file()

    back = convert(root, tmp_path / "b.zarr", mapping={"observation.images.wrist": "rgb_gripper"})
    a, b = open_dataset(store), open_dataset(back)
    assert a.keys == b.keys
    assert b.episode_ends.tolist() == a.episode_ends.tolist() and b.instructions == a.instructions
    for key in ("proprio", "action", "next_reward"):
        np.testing.assert_array_equal(b.array(key)[:], a.array(key)[:])
    check_store(back, wrist_key=None)  # top went through two lossy codecs, still within bounds
    err = np.abs(b.array("rgb_gripper")[:].astype(np.int16) - a.array("rgb_gripper")[:].astype(np.int16))
    assert err.shape[0] == sum(LENGTHS)  # random-noise frames through h264: kept, not exact
    assert b.attrs["lerobot"]["robot_type"] == "toy_arm"


def test_cli_convert_and_export(sources, tmp_path):
    from typer.testing import CliRunner

    from robodual_cli.app import build_app

    runner = CliRunner()
    result = runner.invoke(build_app(), ["dataset", "convert", "lerobot", str(sources["v2.1"]),
                                         str(tmp_path / "c.zarr"), "--workers", "0", "--map", "next.reward=",
                                         "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["episodes"] == 3 and report["frames_converted"] == sum(LENGTHS)
    result = runner.invoke(build_app(), ["dataset", "export", "lerobot", str(tmp_path / "c.zarr"),
                                         str(tmp_path / "lr"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["episodes"] == 3
    assert (tmp_path / "lr/meta/tasks.parquet").is_file()
    # the converted store trains the specialist from the CLI (both cameras, state as proprio)
    config = tmp_path / "specialist.yaml"
    vit = "backbone: vit, image_size: 32, width: 32, depth: 1, heads: 2, head_dim: 16, history: 0"
    config.write_text(
        "model: {hidden: 32, depth: 1, heads: 2, k_s: 2, sensors: ["
        f"{{name: rgb_static, options: {{keys: [rgb_top], {vit}}}}}, "
        f"{{name: rgb_gripper, options: {{keys: [rgb_wrist], {vit}}}}}]}}\n"
        "data: {image_size: 32}\n"
        "trainer: {batch_size: 4, num_workers: 0, warmup_steps: 1, ckpt_every: 2, log_every: 1}\n")
    result = runner.invoke(build_app(), ["train", "specialist", "--dataset", str(tmp_path / "c.zarr"), "--out",
                                         str(tmp_path / "run"), "--config", str(config), "--steps", "2"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run/checkpoints/2/model.safetensors").is_file()


# -- errors -------------------------------------------------------------------------------------------
def copy_source(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_missing_video_file_is_a_clear_error(sources, tmp_path):
    src = copy_source(sources["v2.1"], tmp_path / "src")
    video = src / "videos/chunk-000/observation.images.top/episode_000001.mp4"
    video.unlink()
    with pytest.raises(RobodualError, match="episode_000001.mp4.*does not exist"):
        convert(src, tmp_path / "out.zarr")


def test_timestamp_gap_beyond_tolerance_is_a_clear_error(sources, tmp_path):
    src = copy_source(sources["v3.0"], tmp_path / "src")
    path = src / "data/chunk-000/file-001.parquet"
    table = pq.read_table(path)
    ts = table.column("timestamp").to_numpy().copy()
    ts[4:] += 0.05  # half a frame late from frame 4 on
    pq.write_table(table.set_column(table.column_names.index("timestamp"), "timestamp", pa.array(ts)), path)
    with pytest.raises(RobodualError, match=r"file-001\.parquet.*episode 2.*frames 3 and 4"):
        convert(src, tmp_path / "out.zarr")
    # evenly spaced timestamps that sit half a frame off the video's frames: no frame within tolerance
    ts = table.column("timestamp").to_numpy() + np.float32(0.05)
    pq.write_table(table.set_column(table.column_names.index("timestamp"), "timestamp", pa.array(ts)), path)
    with pytest.raises(RobodualError, match=r"file-001\.mp4.*no frame within tolerance_s 0.0001 of 0.05"):
        convert(src, tmp_path / "out2.zarr")


def test_unknown_format_version_is_a_clear_error(sources, tmp_path):
    src = copy_source(sources["v2.1"], tmp_path / "src")
    info_path = src / "meta/info.json"
    data = json.loads(info_path.read_text())
    data["codebase_version"] = "v1.6"
    info_path.write_text(json.dumps(data))
    with pytest.raises(RobodualError, match=r"info\.json.*v1\.6"):
        convert(src, tmp_path / "out.zarr")
