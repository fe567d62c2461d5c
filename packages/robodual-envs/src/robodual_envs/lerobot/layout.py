"""Read a LeRobot dataset folder's metadata (v3.0, v2.1, v2.0) into one :class:`LeRobotSource`.

v3.0::

    meta/info.json                                  codebase_version, fps, features, data_path, video_path
    meta/tasks.parquet                              task string (pandas index) -> task_index
    meta/episodes/chunk-XXX/file-YYY.parquet        per episode: length, tasks, data/{chunk,file}_index,
                                                    videos/<key>/{chunk_index,file_index,from_timestamp,to_timestamp}
    data/chunk-XXX/file-YYY.parquet                 many episodes per file (column episode_index)
    videos/<key>/chunk-XXX/file-YYY.mp4             many episodes per file, one after the other in time

v2.1 / v2.0::

    meta/info.json, meta/tasks.jsonl, meta/episodes.jsonl
    data/chunk-XXX/episode_NNNNNN.parquet           one episode per file
    videos/chunk-XXX/<key>/episode_NNNNNN.mp4       one episode per file, starting at time 0

The chunk of an episode in v2 is ``episode_index // chunks_size``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robodual_core.errors import RobodualError

SUPPORTED_VERSIONS = ("v2.0", "v2.1", "v3.0")
# columns LeRobot adds to every dataset; they describe the frame, not the robot
BOOKKEEPING = ("timestamp", "frame_index", "episode_index", "index", "task_index")
DEFAULT_TOLERANCE_S = 1e-4  # LeRobotDataset(tolerance_s=1e-4)


@dataclass
class EpisodeRef:
    """Where one LeRobot episode lives.

    ``videos`` maps a video feature to ``(mp4 path, from_timestamp)``: the episode's frame with
    timestamp ``t`` is the video frame at ``from_timestamp + t`` (``from_timestamp`` is 0 in v2).
    """

    index: int
    length: int
    tasks: list[str]
    data_file: Path
    videos: dict[str, tuple[Path, float]] = field(default_factory=dict)


@dataclass
class LeRobotSource:
    root: Path
    version: str
    fps: float
    features: dict[str, dict[str, Any]]
    tasks: dict[int, str]
    episodes: list[EpisodeRef]
    info: dict[str, Any]

    @property
    def video_keys(self) -> list[str]:
        return [k for k, ft in self.features.items() if ft.get("dtype") == "video"]

    @property
    def num_frames(self) -> int:
        return sum(ep.length for ep in self.episodes)


def parquet(read: Any, path: Path, **kwargs: Any) -> Any:
    """``read(path, **kwargs)`` (a pyarrow.parquet reader); a truncated or corrupt file is one line naming it."""
    try:
        return read(path, **kwargs)
    except Exception as exc:  # pyarrow raises several types (ArrowInvalid, OSError, ...) for a damaged file
        detail = " ".join(str(exc).split())[:200]
        raise RobodualError(f"parquet file '{path}' cannot be read (truncated or corrupt?): {type(exc).__name__}: "
                            f"{detail}") from None


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise RobodualError(f"'{path}' does not exist; expected a LeRobot dataset folder holding meta/info.json, "
                            "data/ and (for video features) videos/")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RobodualError(f"'{path}' is not valid JSON: {exc}") from None


def _load_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise RobodualError(f"'{path}' does not exist; a LeRobot v2 dataset keeps its episodes and tasks in "
                            "meta/episodes.jsonl and meta/tasks.jsonl")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise RobodualError(f"'{path}' line {n} is not valid JSON: {exc}") from None
    return rows


def _field(row: dict[str, Any], name: str, where: str) -> Any:
    if name not in row or row[name] is None:
        raise RobodualError(f"{where} has no '{name}'; expected it in every episode record")
    return row[name]


def read_source(root: str | Path) -> LeRobotSource:
    """Metadata of the LeRobot dataset in ``root``; checks the version and that every file exists."""
    root = Path(root)
    if not root.is_dir():
        raise RobodualError(f"LeRobot source '{root}' is not a folder; expected a local LeRobot dataset "
                            "(meta/info.json, data/, videos/)")
    info_path = root / "meta" / "info.json"
    info = _load_json(info_path)
    version = str(info.get("codebase_version", "<missing>"))
    if version not in SUPPORTED_VERSIONS:
        raise RobodualError(f"'{info_path}' has codebase_version '{version}'; expected one of "
                            f"{', '.join(SUPPORTED_VERSIONS)} (convert older datasets with LeRobot's own "
                            "conversion scripts first)")
    for name in ("fps", "features", "data_path"):
        if name not in info:
            raise RobodualError(f"'{info_path}' has no '{name}'; expected it in a LeRobot {version} info.json")
    fps = float(info["fps"])
    if fps <= 0:
        raise RobodualError(f"'{info_path}': fps is {info['fps']}; expected a positive number")
    features = dict(info["features"])
    video_keys = [k for k, ft in features.items() if ft.get("dtype") == "video"]
    if video_keys and "video_path" not in info:
        raise RobodualError(f"'{info_path}' declares video features {video_keys} but no 'video_path' template")
    if version == "v3.0":
        tasks = _tasks_v3(root)
        episodes = _episodes_v3(root, info, video_keys)
    else:
        tasks = {int(_field(r, "task_index", "meta/tasks.jsonl")): str(_field(r, "task", "meta/tasks.jsonl"))
                 for r in _load_jsonl(root / "meta" / "tasks.jsonl")}
        episodes = _episodes_v2(root, info, video_keys)
    if not episodes:
        raise RobodualError(f"'{root}' lists no episodes; nothing to convert")
    source = LeRobotSource(root=root, version=version, fps=fps, features=features, tasks=tasks,
                           episodes=episodes, info=info)
    _check_files(source)
    return source


def _tasks_v3(root: Path) -> dict[int, str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = root / "meta" / "tasks.parquet"
    if not path.is_file():
        raise RobodualError(f"'{path}' does not exist; a LeRobot v3.0 dataset keeps its task strings there")
    table = parquet(pq.read_table, path)
    if "task_index" not in table.column_names:
        raise RobodualError(f"'{path}' has no column 'task_index'; found {table.column_names}")
    # LeRobot writes the task strings as the pandas index: a column named 'task' or '__index_level_0__'
    names = [n for n in ("task", "__index_level_0__") if n in table.column_names]
    names += [n for n in table.column_names
              if n not in names and n != "task_index" and pa.types.is_string(table.schema.field(n).type)]
    if not names:
        raise RobodualError(f"'{path}' has no column of task strings; expected 'task' or the pandas index "
                            f"next to 'task_index', found {table.column_names}")
    strings = table.column(names[0]).to_pylist()
    return {int(i): str(s) for i, s in zip(table.column("task_index").to_pylist(), strings, strict=True)}


def _episodes_v3(root: Path, info: dict[str, Any], video_keys: list[str]) -> list[EpisodeRef]:
    import pyarrow.parquet as pq

    files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not files:
        raise RobodualError(f"'{root / 'meta' / 'episodes'}' holds no chunk-*/file-*.parquet; expected the "
                            "episode table of a LeRobot v3.0 dataset")
    wanted = ["episode_index", "tasks", "length", "data/chunk_index", "data/file_index"]
    for key in video_keys:
        wanted += [f"videos/{key}/chunk_index", f"videos/{key}/file_index", f"videos/{key}/from_timestamp"]
    episodes = []
    for path in files:
        schema = parquet(pq.read_schema, path)
        missing = [c for c in wanted if c not in schema.names]
        if missing:
            raise RobodualError(f"'{path}' has no column(s) {missing}; expected the episode table of a LeRobot "
                                "v3.0 dataset")
        for row in parquet(pq.read_table, path, columns=wanted).to_pylist():
            where = f"'{path}' episode {row.get('episode_index')}"
            data_file = root / _template(info, "data_path", chunk_index=int(_field(row, "data/chunk_index", where)),
                                         file_index=int(_field(row, "data/file_index", where)))
            videos = {}
            for key in video_keys:
                rel = _template(info, "video_path", video_key=key,
                                chunk_index=int(_field(row, f"videos/{key}/chunk_index", where)),
                                file_index=int(_field(row, f"videos/{key}/file_index", where)))
                videos[key] = (root / rel, float(_field(row, f"videos/{key}/from_timestamp", where)))
            episodes.append(EpisodeRef(index=int(row["episode_index"]), length=int(_field(row, "length", where)),
                                       tasks=[str(t) for t in (row.get("tasks") or [])], data_file=data_file,
                                       videos=videos))
    return sorted(episodes, key=lambda e: e.index)


def _episodes_v2(root: Path, info: dict[str, Any], video_keys: list[str]) -> list[EpisodeRef]:
    chunks_size = int(info.get("chunks_size", 1000))
    episodes = []
    for row in _load_jsonl(root / "meta" / "episodes.jsonl"):
        index = int(_field(row, "episode_index", "meta/episodes.jsonl"))
        where = f"meta/episodes.jsonl episode {index}"
        chunk = index // chunks_size
        data_file = root / _template(info, "data_path", episode_chunk=chunk, episode_index=index)
        videos = {key: (root / _template(info, "video_path", episode_chunk=chunk, video_key=key, episode_index=index),
                        0.0) for key in video_keys}
        tasks = row.get("tasks") or []
        episodes.append(EpisodeRef(index=index, length=int(_field(row, "length", where)),
                                   tasks=[str(t) for t in (tasks if isinstance(tasks, list) else [tasks])],
                                   data_file=data_file, videos=videos))
    return sorted(episodes, key=lambda e: e.index)


def _template(info: dict[str, Any], name: str, **fields: Any) -> str:
    """``info[name]`` (a path template such as data_path) filled in, or a one-line error naming it."""
    template = info[name]
    try:
        if not isinstance(template, str):
            raise TypeError(f"a {type(template).__name__}")
        return template.format(**fields)
    except (KeyError, IndexError, ValueError, TypeError, AttributeError) as exc:
        raise RobodualError(f"meta/info.json '{name}' is {str(template)[:120]!r}; expected a path template using "
                            f"only {{{'}, {'.join(fields)}}} ({type(exc).__name__}: {exc})") from None


def _check_files(source: LeRobotSource) -> None:
    """Fail before any decoding when a data or video file is missing, is not a regular file, or lies outside
    the dataset folder (a template holding '..' or an absolute path must not make the converter read elsewhere)."""
    from robodual_core.outputs import describe_path

    root = source.root.resolve()
    info = source.root / "meta" / "info.json"

    def check(path: Path, what: str, template: str) -> None:
        if root not in path.resolve().parents:
            raise RobodualError(f"{what} '{path}' lies outside the dataset folder '{source.root}'; expected the "
                                f"{template} template of '{info}' to name a file inside it")
        found = describe_path(path)
        if found != "a file":
            raise RobodualError(f"{what} '{path}' is {found}; expected a regular file per the {template} template "
                                f"of '{info}'")

    for ep in source.episodes:
        if ep.length <= 0:
            raise RobodualError(f"'{source.root}' episode {ep.index} has length {ep.length}; expected at least 1 frame")
        check(ep.data_file, f"data file of episode {ep.index}", "data_path")
        for key, (path, _) in ep.videos.items():
            check(path, f"video file of feature '{key}' (episode {ep.index})", "video_path")
