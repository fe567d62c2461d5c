"""Load one LeRobot episode: parquet rows, inline images and video frames matched by timestamp.

Runs in the converter's worker processes (:func:`load_episode` is picklable by name); imports only
numpy, pyarrow, PyAV and Pillow.

Frame matching follows ``LeRobotDataset``: consecutive timestamps of an episode must differ by
``1/fps`` within ``tolerance_s``, and the frame shown at timestamp ``t`` is the decoded video frame
nearest to ``from_timestamp + t``, which must lie closer than ``tolerance_s``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from robodual_core.errors import RobodualError
from robodual_envs.lerobot.layout import EpisodeRef, parquet

TASK_INDEX = "__task_index__"  # the episode's task_index column in load_episode's result


@dataclass
class EpisodeJob:
    episode: EpisodeRef
    root: Path
    fps: float
    tolerance_s: float
    numeric: dict[str, tuple[int, ...]]  # feature -> declared per-frame shape
    images: list[str]  # image features stored inline in the parquet
    videos: list[str]  # video features (mp4)
    decoder_threads: int = 0  # 0: FFmpeg picks


def load_episode(job: EpisodeJob) -> dict[str, Any]:
    """``{feature: array [T, ...]}`` for every requested feature, plus :data:`TASK_INDEX` ([T] int64 or None)."""
    import pyarrow.parquet as pq

    ep = job.episode
    columns = list(dict.fromkeys(["timestamp", *job.numeric, *job.images]))
    schema = parquet(pq.read_schema, ep.data_file)
    extra = [c for c in ("episode_index", "frame_index", "task_index") if c in schema.names and c not in columns]
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise RobodualError(f"data file '{ep.data_file}' has no column(s) {missing}; expected every non-video "
                            f"feature of meta/info.json (found {schema.names})")
    try:
        table = pq.read_table(ep.data_file, columns=columns + extra,
                              filters=[("episode_index", "=", ep.index)] if "episode_index" in schema.names else None)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise RobodualError(f"data file '{ep.data_file}' cannot be read: {type(exc).__name__}: {exc}") from None
    if "frame_index" in table.column_names:
        table = table.sort_by("frame_index")
    if table.num_rows != ep.length:
        raise RobodualError(f"data file '{ep.data_file}' holds {table.num_rows} rows of episode {ep.index}; the "
                            f"episode metadata says its length is {ep.length}")
    timestamps = _column(table, "timestamp", (1,)).reshape(-1).astype(np.float64)
    check_timestamps(timestamps, job.fps, job.tolerance_s, f"data file '{ep.data_file}' episode {ep.index}")
    out: dict[str, Any] = {name: _column(table, name, shape) for name, shape in job.numeric.items()}
    for name in job.images:
        out[name] = _images(table.column(name).to_pylist(), job.root, f"'{ep.data_file}' column '{name}'")
    for name in job.videos:
        path, start = ep.videos[name]
        out[name] = decode_video(path, start + timestamps, job.tolerance_s, job.decoder_threads,
                                 f"episode {ep.index}")
    has_task = "task_index" in table.column_names
    out[TASK_INDEX] = _column(table, "task_index", (1,)).reshape(-1) if has_task else None
    return out


SHARED = "__shared_memory__"


def load_episode_shared(job: EpisodeJob) -> dict[str, Any]:
    """:func:`load_episode` for a worker process: arrays travel in shared memory, not through the pipe.

    Each non-empty array is replaced by ``(SHARED, name, shape, dtype)``; the
    receiver maps it with :func:`attach_shared` and unlinks it with :func:`release_shared`.
    """
    from multiprocessing import shared_memory

    out = load_episode(job)
    for key, x in out.items():
        if isinstance(x, np.ndarray) and x.nbytes > 0:
            shm = shared_memory.SharedMemory(create=True, size=x.nbytes)
            np.ndarray(x.shape, x.dtype, buffer=shm.buf)[...] = x
            out[key] = (SHARED, shm.name, x.shape, x.dtype.str)
            shm.close()
    return out


def attach_shared(loaded: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
    """Map the shared-memory arrays of a :func:`load_episode_shared` result; returns ``(arrays, handles)``."""
    from multiprocessing import shared_memory

    handles = []
    out = {}
    for key, x in loaded.items():
        if isinstance(x, tuple) and len(x) == 4 and x[0] == SHARED:
            shm = shared_memory.SharedMemory(name=x[1])
            handles.append(shm)
            out[key] = np.ndarray(x[2], np.dtype(x[3]), buffer=shm.buf)
        else:
            out[key] = x
    return out, handles


def release_shared(handles: list[Any]) -> None:
    for shm in handles:
        shm.close()
        shm.unlink()


def check_timestamps(ts: np.ndarray, fps: float, tolerance_s: float, where: str) -> None:
    """Consecutive timestamps must be ``1/fps`` apart within ``tolerance_s`` (LeRobot's check)."""
    if ts.size < 2:
        return
    gaps = np.diff(ts)
    bad = np.flatnonzero(np.abs(gaps - 1.0 / fps) > tolerance_s)
    if bad.size:
        i = int(bad[0])
        raise RobodualError(f"{where}: timestamps jump from {ts[i]:.6f} s to {ts[i + 1]:.6f} s between frames {i} "
                            f"and {i + 1} (gap {gaps[i]:.6f} s); expected 1/fps = {1.0 / fps:.6f} s within "
                            f"tolerance_s {tolerance_s:g} ({bad.size} such gap(s); a larger --tolerance-s accepts "
                            "them)")


def _column(table: Any, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A (possibly nested) list column as ``[T, *shape]``; a scalar column as ``[T, 1]`` when ``shape == (1,)``."""
    import pyarrow as pa

    arr = table.column(name).combine_chunks()
    rows = len(arr)
    while pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        arr = arr.flatten()
    values = arr.to_numpy(zero_copy_only=False)
    per_row = int(np.prod(shape)) if shape else 1
    if values.size != rows * per_row:
        raise RobodualError(f"column '{name}' has {values.size} values for {rows} rows; expected shape {list(shape)} "
                            "per row as declared in meta/info.json")
    return values.reshape(rows, *shape) if shape else values.reshape(rows)


def _images(cells: list[Any], root: Path, where: str) -> np.ndarray:
    """Decode HF ``Image`` cells (``{"bytes": png, "path": str}``) to ``[T, H, W, C]`` uint8."""
    from PIL import Image

    frames = []
    for i, cell in enumerate(cells):
        data = cell.get("bytes") if isinstance(cell, dict) else None
        try:
            if data:
                img = Image.open(io.BytesIO(data))
            elif isinstance(cell, dict) and cell.get("path"):
                path = Path(cell["path"])
                img = Image.open(path if path.is_absolute() else root / path)
            else:
                raise RobodualError(f"{where} row {i}: expected an image struct with 'bytes' or 'path', found {cell!r:.80}")
            x = np.asarray(img.convert("RGB") if img.mode not in ("RGB", "L") else img)
        except RobodualError:
            raise
        except Exception as exc:  # PIL raises several types for bad images
            raise RobodualError(f"{where} row {i}: cannot decode the image ({type(exc).__name__}: {exc})") from None
        frames.append(x[..., None] if x.ndim == 2 else x)
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise RobodualError(f"{where}: images of different sizes {sorted(shapes)}; expected one size per feature")
    return np.stack(frames).astype(np.uint8, copy=False)


def decode_video(path: Path, query: np.ndarray, tolerance_s: float, threads: int, where: str) -> np.ndarray:
    """Frames of ``path`` nearest to the times ``query`` [T] (seconds, sorted): ``[T, H, W, 3]`` uint8."""
    import av

    try:
        container = av.open(str(path))
    except (OSError, av.error.FFmpegError) as exc:
        raise RobodualError(f"video file '{path}' cannot be opened ({type(exc).__name__}: {exc})") from None
    times: list[float] = []
    frames: list[np.ndarray] = []
    first, last = float(query[0]) - tolerance_s, float(query[-1]) + tolerance_s
    try:
        with container:
            if not container.streams.video:
                raise RobodualError(f"video file '{path}' has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            stream.codec_context.thread_count = threads
            if first > 0:
                # the keyframe at or before the episode's first frame, in the stream's time base
                container.seek(int(first / stream.time_base), stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                t = float(frame.pts * frame.time_base)
                if t < first:
                    continue
                if t > last:
                    break
                times.append(t)
                frames.append(frame.to_ndarray(format="rgb24"))
    except RobodualError:
        raise
    except av.error.FFmpegError as exc:
        raise RobodualError(f"video file '{path}' cannot be decoded ({type(exc).__name__}: {exc})") from None
    if not frames:
        raise RobodualError(f"video file '{path}' ({where}) has no frame between {query[0]:.4f} s and "
                            f"{query[-1]:.4f} s; expected {len(query)} frames there")
    t = np.asarray(times)
    order = np.argsort(t, kind="stable")
    t = t[order]
    right = np.clip(np.searchsorted(t, query), 0, len(t) - 1)
    left = np.clip(right - 1, 0, len(t) - 1)
    nearest = np.where(np.abs(t[left] - query) <= np.abs(t[right] - query), left, right)
    dist = np.abs(t[nearest] - query)
    bad = np.flatnonzero(dist >= tolerance_s)
    if bad.size:
        i = int(bad[0])
        raise RobodualError(f"video file '{path}' ({where}): no frame within tolerance_s {tolerance_s:g} of "
                            f"{query[i]:.6f} s (frame {i}); the nearest decoded frame is at {t[nearest[i]]:.6f} s "
                            f"({bad.size} frame(s) unmatched; is the video shorter than the episode, or a larger "
                            "--tolerance-s needed?)")
    return np.stack([frames[order[j]] for j in nearest])
