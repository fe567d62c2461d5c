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

Videos are encoded with the codec of the LeRobot source the store was converted from (the store's
``lerobot.video_codecs``, else the codec its ``info.json`` declared), so that LeRobot's merge accepts
the export beside its siblings (it refuses features that differ, ``video.codec`` included); other stores
get H.264. ``--codec`` chooses one for every video. When the source's codec has no encoder in the
installed PyAV (AV1 needs ``libsvtav1`` or ``libaom-av1`` in ``av.codecs_available``) the export falls
back to H.264 and says so in the report's ``warnings``; a codec asked for by name is never replaced.

Frames keep their tasks: a store with per-step instructions (``meta/step_instruction_index``) writes
each frame's ``task_index`` and lists the episode's tasks in frame order. Statistics follow LeRobot's
writer (:mod:`robodual_envs.lerobot.stats`): per episode in ``stats/<feature>/<stat>`` columns of the
episode table, aggregated into ``meta/stats.json``, for every feature including ``timestamp``,
``frame_index``, ``episode_index``, ``index`` and ``task_index``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robodual_core.errors import RobodualError
from robodual_envs.lerobot import stats as lstats

CHUNKS_SIZE = 1000
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"
CODEC_CHOICES = ("auto", "h264", "av1")  # or an FFmpeg video encoder name
BOOKKEEPING_FEATURES = {"timestamp": "float32", "frame_index": "int64", "episode_index": "int64", "index": "int64",
                        "task_index": "int64"}


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


def source_codec(ds: Any, feature: str) -> str | None:
    """The codec of ``feature``'s videos in the LeRobot dataset the store came from, if it did."""
    lerobot = dict(ds.attrs.get("lerobot") or {})
    recorded = (lerobot.get("video_codecs") or {}).get(feature)
    if recorded:
        return str(recorded)
    declared = (lerobot.get("declarations") or {}).get(feature) or {}
    codec = (declared.get("info") or declared.get("video_info") or {}).get("video.codec")
    return str(codec) if codec else None


def _is_video_encoder(name: str) -> bool:
    import av

    try:
        return av.codec.Codec(name, "w").type == "video"
    except Exception:  # UnknownCodecError, or a codec built without an encoder
        return False


def choose_encoders(ds: Any, videos: list[ExportFeature], codec: str | None) -> tuple[dict[str, str], list[str]]:
    """``({feature: encoder}, warnings)`` for ``--codec`` (None or ``auto``: each feature's source codec; a
    feature the source did not keep as video takes the codec most of its videos have)."""
    from robodual_envs.common.video import ALIASES, ENCODERS, codec_name, pick_encoder

    codec = (codec or "auto").strip()
    if codec not in CODEC_CHOICES and codec not in ENCODERS and not _is_video_encoder(codec):
        raise RobodualError(f"--codec '{codec}' is not a codec this export knows; expected one of "
                            f"{', '.join(CODEC_CHOICES)} or an FFmpeg video encoder name "
                            f"({', '.join(ENCODERS)})")
    if not videos:
        return {}, []
    if codec != "auto":
        encoder = pick_encoder(codec)  # refuses, naming the encoders there are, when PyAV lacks it
        return {p.feature: encoder for p in videos}, []
    encoders: dict[str, str] = {}
    warnings: list[str] = []
    known = {p.feature: source_codec(ds, p.feature) for p in videos}
    # a LeRobot dataset encodes every video with one codec: a feature the source kept as images follows it
    counts = [c for c in known.values() if c]
    common = max(counts, key=counts.count) if counts else None
    for p in videos:
        wanted = known[p.feature] or common
        if wanted is None:
            encoders[p.feature] = pick_encoder("h264")
            continue
        try:
            encoders[p.feature] = pick_encoder(wanted)
        except RobodualError:
            fallback = pick_encoder("h264")
            encoders[p.feature] = fallback
            names = ", ".join(ALIASES.get(wanted, (wanted,)))
            warnings.append(f"'{p.feature}': the source's videos are {wanted}, but the installed PyAV has no "
                            f"{wanted} encoder ({names} not in av.codecs_available); wrote "
                            f"{codec_name(fallback)} ({fallback}) instead, which LeRobot's merge will not "
                            f"combine with {wanted} datasets. Install a PyAV whose FFmpeg has {names}, or "
                            "pass --codec to choose")
    return encoders, warnings


CRF_MAX = {"libx264": 51, "libsvtav1": 63, "libaom-av1": 63}  # the encoders' constant rate factor ranges


def export_lerobot(src: str | Path, dst: str | Path, codec: str | None = None, crf: int | None = None,
                   gop: int = 2, data_file_mb: float = 100, video_file_mb: float = 200, overwrite: bool = False,
                   progress: bool = True) -> dict[str, Any]:
    """Write the store ``src`` as a LeRobot v3.0 folder ``dst``; returns a report.

    ``codec``: None or ``auto`` (the source's codec, H.264 for stores not from LeRobot), ``h264``,
    ``av1`` or an FFmpeg video encoder name.
    """
    from robodual_core.data import open_dataset
    from robodual_core.io import atomic_dir
    from robodual_core.outputs import check_output, mark_output
    from robodual_core.progress import counting

    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise RobodualError(f"'{dst}' already exists; pass --overwrite to replace it or choose another path")
    # never the store itself, inside it or holding it; --overwrite replaces only a folder robodual exported
    check_output(dst, flag="DST", expect="folder", inputs=[src], overwrite=overwrite)
    if gop < 1:
        raise RobodualError(f"--gop: expected a keyframe interval >= 1 frame, found {gop}")
    for flag, mb in (("--data-file-mb", data_file_mb), ("--video-file-mb", video_file_mb)):
        if not mb > 0 or mb == float("inf"):
            raise RobodualError(f"{flag}: expected a positive finite size in MB, found {mb}")
    ds = open_dataset(src)
    plan, skipped = plan_export(ds)
    videos = [p for p in plan if p.kind == "video"]
    encoders, warnings = choose_encoders(ds, videos, codec)
    if crf is not None:
        for key, encoder in encoders.items():
            top = CRF_MAX.get(encoder)
            if top is not None and not 0 <= crf <= top:
                raise RobodualError(f"--crf: expected 0..{top} for encoder {encoder} (feature '{key}'), found {crf}")
    steps = _step_instructions(ds)
    t0 = time.perf_counter()
    with atomic_dir(dst, overwrite=overwrite) as tmp, \
            counting(progress, ds.num_steps, f"{Path(src).name} -> LeRobot v3.0", "frames") as advance:
        writer = _Writer(tmp, ds, plan, encoders, crf, gop, data_file_mb, video_file_mb, steps)
        for ep in range(ds.num_episodes):
            writer.episode(ep)
            advance(int(ds.episode_ends[ep] - (ds.episode_ends[ep - 1] if ep else 0)))
        writer.close()
        mark_output(tmp, "lerobot-export")  # lets a later --overwrite recognise the folder as robodual's
        info = _info(ds, plan, writer, encoders, data_file_mb, video_file_mb)
        _write_json(tmp / "meta" / "info.json", info)
        _write_json(tmp / "meta" / "stats.json", writer.dataset_stats())
        _write_tasks(tmp / "meta" / "tasks.parquet", writer.tasks)
        _write_episodes(tmp / EPISODES_PATH, writer.episodes)
    seconds = time.perf_counter() - t0
    unique = sorted(set(encoders.values()))
    return {"path": str(dst), "episodes": ds.num_episodes, "frames": ds.num_steps,
            "encoder": unique[0] if len(unique) == 1 else (", ".join(unique) or None), "encoders": encoders,
            "warnings": warnings, "tasks": len(writer.tasks), "seconds": seconds,
            "frames_per_s": ds.num_steps / seconds if seconds > 0 else None,
            "features": {p.key: p.feature for p in plan}, "skipped": skipped}


def _step_instructions(ds: Any) -> list[str] | None:
    """Each step's instruction when the store keeps them per step (``meta/step_instruction_index``)."""
    return ds.step_instructions()


class _Writer:
    """Appends episodes to the current data parquet and video files; collects the episode table."""

    def __init__(self, root: Path, ds: Any, plan: list[ExportFeature], encoders: dict[str, str], crf: int | None,
                 gop: int, data_file_mb: float, video_file_mb: float, steps: list[str] | None = None):
        self.root, self.ds, self.plan = root, ds, plan
        self.encoders, self.crf, self.gop = encoders, crf, gop
        self.steps = steps
        self.instructions = ds.instructions
        self.stats: dict[str, list[dict[str, np.ndarray]]] = {}
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
        texts = self.steps[start:end] if self.steps is not None else [self.instructions[ep]] * length
        task_index = np.array([self.tasks.setdefault(t, len(self.tasks)) for t in texts], dtype=np.int64)
        episode_stats: dict[str, dict[str, np.ndarray]] = {}
        row: dict[str, Any] = {"episode_index": ep, "tasks": list(dict.fromkeys(texts)), "length": length}
        row.update(self._data(ep, start, end, task_index, episode_stats))
        for p in self.videos:
            row.update(self._video(p, start, end, episode_stats))
        row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
        for feature, st in episode_stats.items():
            self.stats.setdefault(feature, []).append(st)
            row.update({f"stats/{feature}/{k}": v.tolist() for k, v in st.items()})
        self.episodes.append(row)

    def dataset_stats(self) -> dict[str, Any]:
        """``meta/stats.json``: the episodes' statistics aggregated as LeRobot does."""
        return {feature: lstats.to_json(lstats.aggregate(eps)) for feature, eps in self.stats.items()}

    def _data(self, ep: int, start: int, end: int, task_index: np.ndarray,
              episode_stats: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
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
            episode_stats[p.feature] = lstats.numeric_stats(x, p.declaration["shape"])
        bookkeeping = {"timestamp": (frame_index / self.fps).astype(np.float32), "frame_index": frame_index,
                       "episode_index": np.full(length, ep, dtype=np.int64),
                       "index": np.arange(start, end, dtype=np.int64), "task_index": task_index}
        for name, values in bookkeeping.items():
            columns[name] = pa.array(values)
            episode_stats[name] = lstats.numeric_stats(values, [1])
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

    def _video(self, p: ExportFeature, start: int, end: int,
               episode_stats: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
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
            current = self.video_files[p.key] = VideoFile(path, self.fps, h, w, self.encoders[p.feature], self.gop,
                                                          self.crf)
            p.declaration.setdefault("info", {})["video.pix_fmt"] = current.pix_fmt
        first = current.frames
        arr = self.ds.array(p.key)
        wanted = np.asarray(lstats.sample_indices(end - start)) + start
        sampled = []
        for s in range(start, end, 256):
            batch = np.asarray(arr[s:min(end, s + 256)])
            current.write(batch)
            sampled.append(batch[wanted[(wanted >= s) & (wanted < s + len(batch))] - s])
        episode_stats[p.feature] = lstats.image_stats(np.concatenate(sampled))
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


def _info(ds: Any, plan: list[ExportFeature], writer: _Writer, encoders: dict[str, str], data_file_mb: float,
          video_file_mb: float) -> dict[str, Any]:
    from robodual_envs.common.video import codec_name

    fps = int(ds.fps) if float(ds.fps).is_integer() else ds.fps
    features: dict[str, Any] = {}
    for p in plan:
        decl = dict(p.declaration)
        if p.kind == "video":
            h, w, c = decl["shape"]
            decl["info"] = {"video.height": h, "video.width": w, "video.codec": codec_name(encoders[p.feature]),
                            "video.pix_fmt": decl.get("info", {}).get("video.pix_fmt", "yuv420p"),
                            "video.is_depth_map": False, "video.fps": fps, "video.channels": c, "has_audio": False}
        features[p.feature] = decl
    for name, dtype in BOOKKEEPING_FEATURES.items():
        features[name] = {"dtype": dtype, "shape": [1], "names": None}
    lerobot = dict(ds.attrs.get("lerobot") or {})
    return {"codebase_version": "v3.0", "robot_type": lerobot.get("robot_type"),
            "total_episodes": ds.num_episodes, "total_frames": ds.num_steps, "total_tasks": len(writer.tasks),
            "chunks_size": CHUNKS_SIZE, "data_files_size_in_mb": data_file_mb,
            "video_files_size_in_mb": video_file_mb, "fps": fps, "splits": {"train": f"0:{ds.num_episodes}"},
            "data_path": DATA_PATH, "video_path": VIDEO_PATH if writer.videos else None, "features": features}


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

    def column(name: str, values: list[Any]) -> Any:
        if name.startswith("stats/"):  # nested lists of floats (count: of ints), as LeRobot's from_pydict infers
            return pa.array(values)
        return pa.array(values, types.get(name, pa.float64() if name.endswith("timestamp") else pa.int64()))

    table = pa.table({name: column(name, values) for name, values in columns.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)

