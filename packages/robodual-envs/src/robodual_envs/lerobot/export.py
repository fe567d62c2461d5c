"""``robodual dataset export lerobot SRC DST``: a robodual Zarr store -> a LeRobot v3.0 dataset folder.

Written layout (see :mod:`robodual_envs.lerobot.layout`): ``meta/info.json``, ``meta/stats.json``,
``meta/tasks.parquet``, ``meta/episodes/chunk-000/file-000.parquet``, ``data/chunk-XXX/file-YYY.parquet``
(one row group per episode) and ``videos/<feature>/chunk-XXX/file-YYY.mp4`` (episodes one after another;
``from_timestamp``/``to_timestamp`` per episode). Files roll over at episode boundaries past
``--data-file-mb`` / ``--video-file-mb``, as LeRobot does.

Keys map back to the LeRobot feature names recorded by ``robodual dataset convert lerobot``; other
stores get ``rgb_X`` -> ``observation.images.X``, ``proprio`` -> ``observation.state``, ``action`` ->
``action`` and every other low-dimensional key under its own name. RGB (and 3-channel tactile) keys
become videos; depth and images of other channel counts are left out (reported).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robodual_core.errors import RobodualError

CHUNKS_SIZE = 1000
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"
STAT_SAMPLE_FRAMES = 64


@dataclass
class ExportFeature:
    key: str  # robodual key
    feature: str  # LeRobot feature name
    kind: str  # "video" | "numeric"
    declaration: dict[str, Any]


@dataclass
class _Rolling:
    """Chunk/file index of the file being written, rolled over at an episode boundary."""

    chunk: int = 0
    file: int = 0
    history: list[tuple[int, int]] = field(default_factory=list)

    def advance(self) -> None:
        self.file += 1
        if self.file >= CHUNKS_SIZE:
            self.chunk, self.file = self.chunk + 1, 0


def _default_feature(key: str, modality: str) -> str:
    if modality in ("rgb", "tactile"):
        return "observation.images." + key.removeprefix("rgb_")
    return {"proprio": "observation.state", "action": "action"}.get(key, key)


def plan_export(ds: Any) -> tuple[list[ExportFeature], dict[str, str]]:
    """The features to write and ``{key: why}`` for keys left out."""
    lerobot = dict(ds.attrs.get("lerobot") or {})
    names = dict(lerobot.get("features") or {})
    declared = dict(lerobot.get("declarations") or {})
    plan: list[ExportFeature] = []
    skipped: dict[str, str] = {}
    for key in ds.keys:
        modality = ds.modalities.get(key, "lowdim")
        arr = ds.array(key)
        shape = [int(s) for s in arr.shape[1:]]
        feature = names.get(key) or _default_feature(key, modality)
        old = declared.get(feature) or {}
        if modality in ("rgb", "tactile"):
            if len(shape) != 3 or shape[2] != 3 or np.dtype(arr.dtype) != np.uint8:
                skipped[key] = f"{modality} frames of shape {shape} {arr.dtype} are not 3-channel uint8 video"
                continue
            plan.append(ExportFeature(key, feature, "video", {"dtype": "video", "shape": shape,
                                                              "names": ["height", "width", "channels"]}))
        elif modality == "depth":
            skipped[key] = "depth is not exported (LeRobot v3.0 has no lossless depth feature)"
        else:
            dtype = np.dtype(arr.dtype)
            decl: dict[str, Any] = {"dtype": "bool" if dtype == np.bool_ else dtype.name, "shape": shape or [1]}
            names_ = old.get("names") if list(old.get("shape") or []) == decl["shape"] else None
            if names_ is None and key == "action":
                names_ = ds.action_space.get("components")
            decl["names"] = names_
            plan.append(ExportFeature(key, feature, "numeric", decl))
    features = [p.feature for p in plan]
    clash = sorted({f for f in features if features.count(f) > 1})
    if clash:
        raise RobodualError(f"'{ds.path}': keys {[p.key for p in plan if p.feature in clash]} all export as "
                            f"LeRobot feature(s) {clash}")
    return plan, skipped


def export_lerobot(src: str | Path, dst: str | Path, codec: str | None = None, crf: int | None = None,
                   gop: int = 2, data_file_mb: float = 100, video_file_mb: float = 200, overwrite: bool = False,
                   progress: bool = True) -> dict[str, Any]:
    """Write the store ``src`` as a LeRobot v3.0 folder ``dst``; returns a report."""
    from robodual_core.data import open_dataset
    from robodual_core.io import atomic_dir
    from robodual_core.progress import counting
    from robodual_envs.common.video import codec_name, pick_encoder

    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise RobodualError(f"'{dst}' already exists; pass --overwrite to replace it or choose another path")
    ds = open_dataset(src)
    plan, skipped = plan_export(ds)
    videos = [p for p in plan if p.kind == "video"]
    encoder = pick_encoder(codec) if videos else None
    t0 = time.perf_counter()
    with atomic_dir(dst, overwrite=overwrite) as tmp, \
            counting(progress, ds.num_steps, f"{Path(src).name} -> LeRobot v3.0", "frames") as advance:
        writer = _Writer(tmp, ds, plan, encoder, crf, gop, data_file_mb, video_file_mb)
        for ep in range(ds.num_episodes):
            writer.episode(ep)
            advance(int(ds.episode_ends[ep] - (ds.episode_ends[ep - 1] if ep else 0)))
        writer.close()
        info = _info(ds, plan, writer, encoder and codec_name(encoder), data_file_mb, video_file_mb)
        _write_json(tmp / "meta" / "info.json", info)
        _write_json(tmp / "meta" / "stats.json", _stats(ds, plan))
        _write_tasks(tmp / "meta" / "tasks.parquet", writer.tasks)
        _write_episodes(tmp / EPISODES_PATH, writer.episodes)
    seconds = time.perf_counter() - t0
    return {"path": str(dst), "episodes": ds.num_episodes, "frames": ds.num_steps, "encoder": encoder,
            "seconds": seconds, "frames_per_s": ds.num_steps / seconds if seconds > 0 else None,
            "features": {p.key: p.feature for p in plan}, "skipped": skipped}


class _Writer:
    """Appends episodes to the current data parquet and video files; collects the episode table."""

    def __init__(self, root: Path, ds: Any, plan: list[ExportFeature], encoder: str | None, crf: int | None,
                 gop: int, data_file_mb: float, video_file_mb: float):
        self.root, self.ds, self.plan = root, ds, plan
        self.encoder, self.crf, self.gop = encoder, crf, gop
        self.data_limit, self.video_limit = data_file_mb * 2**20, video_file_mb * 2**20
        self.numeric = [p for p in plan if p.kind == "numeric"]
        self.videos = [p for p in plan if p.kind == "video"]
        self.data_pos = _Rolling()
        self.data_writer: Any = None
        self.data_bytes = 0
        self.video_pos = {p.key: _Rolling() for p in self.videos}
        self.video_files: dict[str, Any] = {}
        self.tasks: dict[str, int] = {}
        self.episodes: list[dict[str, Any]] = []
        self.fps = ds.fps

    def episode(self, ep: int) -> None:
        start = int(self.ds.episode_ends[ep - 1]) if ep else 0
        end = int(self.ds.episode_ends[ep])
        length = end - start
        task = self.ds.instructions[ep]
        task_index = self.tasks.setdefault(task, len(self.tasks))
        row: dict[str, Any] = {"episode_index": ep, "tasks": [task], "length": length}
        row.update(self._data(ep, start, end, task_index))
        for p in self.videos:
            row.update(self._video(p, start, end))
        row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
        self.episodes.append(row)

    def _data(self, ep: int, start: int, end: int, task_index: int) -> dict[str, Any]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.data_writer is not None and self.data_bytes > self.data_limit:
            self.data_writer.close()
            self.data_writer = None
            self.data_pos.advance()
        length = end - start
        frame_index = np.arange(length, dtype=np.int64)
        columns: dict[str, Any] = {}
        for p in self.numeric:
            x = np.asarray(self.ds.array(p.key)[start:end])
            columns[p.feature] = _arrow_column(x, p.declaration["shape"])
        columns["timestamp"] = pa.array((frame_index / self.fps).astype(np.float32))
        columns["frame_index"] = pa.array(frame_index)
        columns["episode_index"] = pa.array(np.full(length, ep, dtype=np.int64))
        columns["index"] = pa.array(np.arange(start, end, dtype=np.int64))
        columns["task_index"] = pa.array(np.full(length, task_index, dtype=np.int64))
        table = pa.table(columns)
        if self.data_writer is None:
            path = self.root / DATA_PATH.format(chunk_index=self.data_pos.chunk, file_index=self.data_pos.file)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.data_writer = pq.ParquetWriter(path, table.schema)
            self.data_bytes = 0
        self.data_writer.write_table(table)
        self.data_bytes += table.nbytes
        return {"data/chunk_index": self.data_pos.chunk, "data/file_index": self.data_pos.file,
                "dataset_from_index": start, "dataset_to_index": end}

    def _video(self, p: ExportFeature, start: int, end: int) -> dict[str, Any]:
        from robodual_envs.common.video import VideoFile

        pos = self.video_pos[p.key]
        current = self.video_files.get(p.key)
        if current is not None and current.bytes > self.video_limit:
            current.close()
            current = None
            pos.advance()
        if current is None:
            h, w, _ = p.declaration["shape"]
            path = self.root / VIDEO_PATH.format(video_key=p.feature, chunk_index=pos.chunk, file_index=pos.file)
            current = self.video_files[p.key] = VideoFile(path, self.fps, h, w, self.encoder, self.gop, self.crf)
            p.declaration.setdefault("info", {})["video.pix_fmt"] = current.pix_fmt
        first = current.frames
        arr = self.ds.array(p.key)
        for s in range(start, end, 256):
            current.write(np.asarray(arr[s:min(end, s + 256)]))
        return {f"videos/{p.feature}/chunk_index": pos.chunk, f"videos/{p.feature}/file_index": pos.file,
                f"videos/{p.feature}/from_timestamp": first / self.fps,
                f"videos/{p.feature}/to_timestamp": current.frames / self.fps}

    def close(self) -> None:
        if self.data_writer is not None:
            self.data_writer.close()
        for f in self.video_files.values():
            f.close()


def _arrow_column(x: np.ndarray, shape: list[int]) -> Any:
    """``[T, *shape]`` -> a scalar column for shape ``[1]`` (as LeRobot writes), else a fixed-size list column."""
    import pyarrow as pa

    if shape == [1]:
        return pa.array(x.reshape(len(x)))
    flat = pa.array(x.reshape(-1))
    for size in reversed(shape):
        flat = pa.FixedSizeListArray.from_arrays(flat, size)
    return flat


def _info(ds: Any, plan: list[ExportFeature], writer: _Writer, codec: str | None, data_file_mb: float,
          video_file_mb: float) -> dict[str, Any]:
    fps = int(ds.fps) if float(ds.fps).is_integer() else ds.fps
    features: dict[str, Any] = {}
    for p in plan:
        decl = dict(p.declaration)
        if p.kind == "video":
            h, w, c = decl["shape"]
            decl["info"] = {"video.height": h, "video.width": w, "video.codec": codec,
                            "video.pix_fmt": decl.get("info", {}).get("video.pix_fmt", "yuv420p"),
                            "video.is_depth_map": False, "video.fps": fps, "video.channels": c, "has_audio": False}
        features[p.feature] = decl
    features["timestamp"] = {"dtype": "float32", "shape": [1], "names": None}
    for name in ("frame_index", "episode_index", "index", "task_index"):
        features[name] = {"dtype": "int64", "shape": [1], "names": None}
    lerobot = dict(ds.attrs.get("lerobot") or {})
    return {"codebase_version": "v3.0", "robot_type": lerobot.get("robot_type"),
            "total_episodes": ds.num_episodes, "total_frames": ds.num_steps, "total_tasks": len(writer.tasks),
            "chunks_size": CHUNKS_SIZE, "data_files_size_in_mb": data_file_mb,
            "video_files_size_in_mb": video_file_mb, "fps": fps, "splits": {"train": f"0:{ds.num_episodes}"},
            "data_path": DATA_PATH, "video_path": VIDEO_PATH if writer.videos else None, "features": features}


def _stats(ds: Any, plan: list[ExportFeature]) -> dict[str, Any]:
    """LeRobot ``stats.json``: numeric features from the store's statistics, videos from sampled frames."""
    out: dict[str, Any] = {}
    stored = ds.stats
    for p in plan:
        if p.kind == "numeric":
            entry = stored.get(p.key)
            if entry is None:
                x = np.asarray(ds.array(p.key)[:], dtype=np.float64).reshape(ds.num_steps, -1)
                entry = {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0),
                         "q01": np.quantile(x, 0.01, axis=0), "q99": np.quantile(x, 0.99, axis=0)}
            out[p.feature] = {k: np.asarray(v, dtype=np.float64).tolist() for k, v in entry.items()
                              if k in ("min", "max", "mean", "std", "q01", "q99")}
            out[p.feature]["count"] = [ds.num_steps]
        else:
            idx = np.unique(np.linspace(0, ds.num_steps - 1, min(STAT_SAMPLE_FRAMES, ds.num_steps)).astype(int))
            arr = ds.array(p.key)
            x = np.stack([np.asarray(arr[int(i)]) for i in idx]).astype(np.float64) / 255.0  # [N, H, W, C]
            x = x.reshape(-1, x.shape[-1])
            per_channel = {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0),
                           "q01": np.quantile(x, 0.01, axis=0), "q99": np.quantile(x, 0.99, axis=0)}
            # LeRobot keeps image statistics per channel with shape [C, 1, 1]
            out[p.feature] = {k: v.reshape(-1, 1, 1).tolist() for k, v in per_channel.items()}
            out[p.feature]["count"] = [len(idx)]
    return out


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=4) + "\n")


def _write_tasks(path: Path, tasks: dict[str, int]) -> None:
    """``tasks.parquet`` as LeRobot's pandas writes it: the task string is the index, ``task_index`` a column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"task_index": pa.array(list(tasks.values()), pa.int64()),
                      "task": pa.array(list(tasks), pa.string())})
    pandas_meta = {"index_columns": ["task"],
                   "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode",
                                       "numpy_type": "object", "metadata": {"encoding": "UTF-8"}}],
                   "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                                "numpy_type": "int64", "metadata": None},
                               {"name": "task", "field_name": "task", "pandas_type": "unicode",
                                "numpy_type": "object", "metadata": None}],
                   "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": "2.2.3"}
    table = table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def _write_episodes(path: Path, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {name: [r[name] for r in rows] for name in rows[0]}
    types = {"tasks": pa.list_(pa.string())}
    table = pa.table({name: pa.array(values, types.get(name, pa.float64() if name.endswith("timestamp")
                                                        else pa.int64())) for name, values in columns.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)

