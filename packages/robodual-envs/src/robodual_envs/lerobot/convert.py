"""``robodual dataset convert lerobot SRC DST``: a LeRobot dataset folder -> a robodual Zarr store.

Each LeRobot episode becomes one robodual episode. Tasks are read per frame (the ``task_index``
column): the first frame's task becomes the episode's instruction and task, and an episode whose frames
carry several tasks also keeps one instruction per frame (``meta/step_instruction_index``). A frame
whose ``task_index`` is not in the tasks table is refused, as is an episode listing several tasks
without a ``task_index`` column to place them. Features are mapped by their declared dtype and shape:

- ``video`` and ``image`` features -> ``rgb`` keys: ``observation.images.top`` -> ``rgb_top``,
  ``observation.image`` -> ``rgb_static``;
- ``observation.state`` -> ``proprio``; ``action`` -> ``action`` (both float32);
- other numeric features -> ``lowdim`` keys (``observation.`` dropped, ``.`` -> ``_``);
- ``timestamp``, ``frame_index``, ``episode_index``, ``index``, ``task_index`` and non-numeric features
  are not copied.

``--map key=name`` renames a feature (``--map observation.images.wrist=rgb_gripper``) and ``--map key=``
drops it. The store's ``lerobot`` attribute keeps fps, the version, per robodual key the LeRobot
feature name and declaration, and per video feature the codec its mp4 files hold (``video_codecs``,
read from the first episode's file): ``robodual dataset export lerobot`` uses them to restore the
names and to encode with the source's codec.

Worker processes (``--workers``) read parquet and decode videos, one episode each; the main process
writes episodes in order through :class:`~robodual_core.data.DatasetWriter`, so an interrupted
conversion continues with ``--resume`` after its last whole episode.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from robodual_core.errors import RobodualError
from robodual_core.interfaces import DatasetConverter
from robodual_envs.lerobot.decode import TASK_INDEX
from robodual_envs.lerobot.layout import BOOKKEEPING, DEFAULT_TOLERANCE_S, LeRobotSource, read_source

NUMERIC_DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16",
                  "uint32", "uint64", "bool")


@dataclass
class FeatureMap:
    """One LeRobot feature written as one robodual key."""

    feature: str
    key: str
    modality: str
    kind: str  # "video" | "image" | "numeric"
    shape: tuple[int, ...]


def default_key(feature: str, dtype: str) -> str:
    if dtype in ("video", "image"):
        if feature == "observation.image":
            return "rgb_static"
        name = feature.removeprefix("observation.images.").removeprefix("observation.image.")
        return "rgb_" + name.replace(".", "_")
    if feature == "observation.state":
        return "proprio"
    if feature == "action":
        return "action"
    return feature.removeprefix("observation.").replace(".", "_")


def parse_map(items: list[str]) -> dict[str, str]:
    """``["a=b", "c="]`` -> ``{"a": "b", "c": ""}``."""
    out: dict[str, str] = {}
    for item in items:
        feature, sep, name = item.partition("=")
        if not sep or not feature:
            raise RobodualError(f"--map '{item}': expected FEATURE=NAME (or FEATURE= to drop the feature)")
        out[feature.strip()] = name.strip()
    return out


def plan_features(features: dict[str, dict[str, Any]], mapping: dict[str, str],
                  where: str = "meta/info.json") -> tuple[list[FeatureMap], dict[str, str]]:
    """The features to write and ``{feature: why}`` for those left out."""
    unknown = sorted(set(mapping) - set(features))
    if unknown:
        raise RobodualError(f"--map names feature(s) {unknown} that {where} does not declare; its features are "
                            f"{', '.join(k for k in features if k not in BOOKKEEPING)}")
    plan: list[FeatureMap] = []
    dropped: dict[str, str] = {}
    for feature, ft in features.items():
        if feature in BOOKKEEPING and feature not in mapping:
            continue
        dtype = str(ft.get("dtype", ""))
        shape = tuple(int(s) for s in ft.get("shape") or ())
        key = mapping.get(feature, default_key(feature, dtype))
        if key == "":
            dropped[feature] = "dropped by --map"
            continue
        if dtype in ("video", "image"):
            if len(shape) != 3:
                raise RobodualError(f"{where}: feature '{feature}' ({dtype}) has shape {list(shape)}; expected "
                                    "[height, width, channels]")
            if (ft.get("info") or {}).get("video.is_depth_map"):
                dropped[feature] = "depth videos are not converted"
                continue
            plan.append(FeatureMap(feature, key, "rgb", dtype, shape))
        elif dtype in NUMERIC_DTYPES:
            modality = {"proprio": "proprio", "action": "action"}.get(key, "lowdim")
            if len(shape) > 1 and modality != "lowdim":
                raise RobodualError(f"{where}: feature '{feature}' has shape {list(shape)}; '{key}' needs a vector")
            plan.append(FeatureMap(feature, key, modality, "numeric", shape))
        else:
            dropped[feature] = f"dtype '{dtype}' has no robodual modality"
    keys = [m.key for m in plan]
    clash = sorted({k for k in keys if keys.count(k) > 1})
    if clash:
        names = [m.feature for m in plan if m.key in clash]
        raise RobodualError(f"features {names} all map to key(s) {clash}; give each its own name with --map "
                            "FEATURE=NAME or drop one with --map FEATURE=")
    bad = [k for k in keys if "/" in k or k.startswith(".")]
    if bad:
        raise RobodualError(f"robodual key(s) {bad} are not valid names; expected names without '/' (use --map)")
    return plan, dropped


def _decoder_threads(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, workers))


class LeRobotConverter(DatasetConverter):
    """LeRobot dataset folder (v3.0, v2.1, v2.0) -> robodual Zarr store (see the module docstring)."""

    name = "lerobot"

    @staticmethod
    def add_command(convert_group: Any, name: str = "lerobot") -> None:
        """CLI hook used by ``robodual dataset convert`` (see ``robodual_cli.commands.dataset``)."""
        add_command(convert_group, name)

    def __init__(self) -> None:
        self.report: dict[str, Any] = {}

    def convert(self, src: Path, dst: Path, mapping: dict[str, str] | None = None, workers: int = 2,
                tolerance_s: float = DEFAULT_TOLERANCE_S, overwrite: bool = False, resume: bool = False,
                progress: bool = True, **options: Any) -> Path:
        """Convert ``src`` into the store ``dst``; ``workers`` 0 decodes in this process."""
        from robodual_core.data import DatasetWriter
        from robodual_core.progress import counting

        if options:
            raise RobodualError(f"unknown LeRobot converter options: {', '.join(sorted(options))}")
        if workers < 0:
            raise RobodualError(f"--workers is {workers}; expected 0 (decode in this process) or more")
        if tolerance_s <= 0:
            raise RobodualError(f"--tolerance-s is {tolerance_s}; expected a positive number of seconds")
        source = read_source(src)
        plan, dropped = plan_features(source.features, mapping or {}, f"'{source.root / 'meta' / 'info.json'}'")
        if not plan:
            raise RobodualError(f"'{source.root}': no feature left to convert (dropped: {dropped})")
        writer = DatasetWriter(dst, fps=source.fps, modalities={m.key: m.modality for m in plan},
                               action_space=self._action_space(source, plan), overwrite=overwrite, resume=resume,
                               inputs=[src],
                               attrs={"source": {"format": "lerobot", "path": str(source.root.resolve())},
                                      "lerobot": self._attrs(source, plan, dropped, tolerance_s)})
        done = writer.num_episodes
        if done > len(source.episodes):
            raise RobodualError(f"cannot resume: '{dst}' already holds {done} episodes but '{src}' has only "
                                f"{len(source.episodes)}")
        todo = source.episodes[done:]
        frames_total = sum(ep.length for ep in todo)
        t0 = time.perf_counter()
        multi_task: list[int] = []
        with counting(progress, frames_total, f"LeRobot {source.version} -> {Path(dst).name}", "frames") as advance:
            jobs = [self._job(source, ep, plan, tolerance_s, workers) for ep in todo]
            for ep, (loaded, release) in zip(todo, _run(jobs, workers), strict=True):
                try:
                    arrays = {m.key: self._array(m, loaded[m.feature], ep.index) for m in plan}
                    text, steps = self._tasks(source, ep, loaded.get(TASK_INDEX))
                    writer.add_episode(arrays, instruction=text, task=text, step_instructions=steps)
                    if steps is not None:
                        multi_task.append(ep.index)
                finally:
                    release()
                advance(ep.length)
        convert_s = time.perf_counter() - t0
        path = writer.finalize()
        self.report = {"version": source.version, "episodes": writer.num_episodes, "steps": writer.num_steps,
                       "frames_converted": frames_total, "workers": workers, "convert_seconds": convert_s,
                       "seconds": time.perf_counter() - t0,
                       "frames_per_s": frames_total / convert_s if convert_s > 0 else None,
                       "resumed_from_episode": done, "keys": {m.key: m.feature for m in plan}, "dropped": dropped,
                       "multi_task_episodes": multi_task}
        return path

    # -- pieces ----------------------------------------------------------------------------------
    @staticmethod
    def _attrs(source: LeRobotSource, plan: list[FeatureMap], dropped: dict[str, str],
               tolerance_s: float) -> dict[str, Any]:
        return {"codebase_version": source.version, "fps": source.info["fps"],
                "robot_type": source.info.get("robot_type"), "tolerance_s": tolerance_s,
                "features": {m.key: m.feature for m in plan},
                "declarations": {m.feature: source.features[m.feature] for m in plan}, "dropped": dropped,
                "video_codecs": {m.feature: video_codec(source, m.feature) for m in plan if m.kind == "video"}}

    @staticmethod
    def _action_space(source: LeRobotSource, plan: list[FeatureMap]) -> dict[str, Any]:
        action = next((m for m in plan if m.key == "action"), None)
        if action is None:
            return {}
        ft = source.features[action.feature]
        space: dict[str, Any] = {"type": "lerobot", "source": action.feature,
                                 "dim": int(np.prod(action.shape)) if action.shape else 1}
        names = ft.get("names")
        if isinstance(names, dict):  # older datasets: {"motors": [...]}
            names = next(iter(names.values()), None)
        if isinstance(names, list) and all(isinstance(n, str) for n in names):
            space["components"] = names
        return space

    @staticmethod
    def _job(source: LeRobotSource, ep: Any, plan: list[FeatureMap], tolerance_s: float, workers: int) -> Any:
        from robodual_envs.lerobot.decode import EpisodeJob

        return EpisodeJob(episode=ep, root=source.root, fps=source.fps, tolerance_s=tolerance_s,
                          numeric={m.feature: m.shape for m in plan if m.kind == "numeric"},
                          images=[m.feature for m in plan if m.kind == "image"],
                          videos=[m.feature for m in plan if m.kind == "video"],
                          decoder_threads=_decoder_threads(workers))

    @staticmethod
    def _array(m: FeatureMap, x: np.ndarray, episode: int) -> np.ndarray:
        if m.kind in ("video", "image"):
            if x.shape[1:] not in (m.shape, (*m.shape[1:], m.shape[0])):  # older datasets declare [C, H, W]
                raise RobodualError(f"episode {episode}: feature '{m.feature}' decodes to frames of shape "
                                    f"{list(x.shape[1:])}; meta/info.json declares {list(m.shape)}")
            return x
        if m.modality in ("proprio", "action"):
            return x.reshape(len(x), -1).astype(np.float32, copy=False)
        return x.reshape(len(x), -1) if x.ndim > 2 else x

    @staticmethod
    def _tasks(source: LeRobotSource, ep: Any, task_index: np.ndarray | None) -> tuple[str, list[str] | None]:
        """``(episode instruction, per-frame instructions or None)``: the first frame's task, and every
        frame's task when they are not all the same."""
        where = f"data file '{ep.data_file}' episode {ep.index}"
        if task_index is None:
            if len(ep.tasks) > 1:
                raise RobodualError(f"{where}: the episode lists tasks {ep.tasks} but its frames have no "
                                    "'task_index' column, so which frame follows which task is unknown; expected "
                                    "a task_index column (as LeRobot writes) or one task per episode")
            return (ep.tasks[0] if ep.tasks else ""), None
        index = np.asarray(task_index)
        if index.dtype.kind not in "iu":
            if index.dtype.kind != "f" or not np.isfinite(index).all() or (index != np.round(index)).any():
                raise RobodualError(f"{where}: column 'task_index' holds {index.dtype} values that are not all "
                                    "whole numbers (a null?); expected an int64 task index on every frame")
            index = index.astype(np.int64)
        unknown = sorted({int(i) for i in np.unique(index)} - set(source.tasks))
        if unknown:
            frame = int(np.flatnonzero(np.isin(index, unknown))[0])
            raise RobodualError(f"{where}: frame {frame} has task_index {unknown[0]}, which the tasks table "
                                f"({'meta/tasks.parquet' if source.version == 'v3.0' else 'meta/tasks.jsonl'}) "
                                f"does not list (unknown: {unknown}; known: {sorted(source.tasks)[:20]})")
        first = source.tasks[int(index[0])]
        if (index == index[0]).all():
            return first, None
        return first, [source.tasks[int(i)] for i in index]


def video_codec(source: LeRobotSource, feature: str) -> str | None:
    """The codec (``av1``, ``h264``, ...) of ``feature``'s video in the first episode, as PyAV names it;
    the codec ``meta/info.json`` declares when the file cannot be probed."""
    declared = (source.features[feature].get("info") or source.features[feature].get("video_info") or {})
    declared_codec = declared.get("video.codec")
    path = source.episodes[0].videos.get(feature, (None,))[0]
    if path is None:
        return declared_codec
    try:
        import av

        with av.open(str(path)) as container:
            if container.streams.video:
                codec = container.streams.video[0].codec_context.codec
                return str(getattr(codec, "canonical_name", None) or codec.name)
    except Exception:  # PyAV missing or an unreadable file: decoding reports that file later
        pass
    return declared_codec


def _run(jobs: list[Any], workers: int) -> Iterator[tuple[dict[str, Any], Any]]:
    """``(loaded episode, release)`` in order; call ``release()`` when done with the arrays.

    With ``workers`` > 0, processes decode up to ``2 * workers`` episodes ahead and hand frames over in
    shared memory (a pipe would copy every frame twice more, in the main process).
    """
    from robodual_envs.lerobot import decode

    if workers == 0:
        for job in jobs:
            yield decode.load_episode(job), lambda: None
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn: the parent holds zarr/blosc threads, which fork would copy in an undefined state
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending: deque = deque()
        queue = iter(jobs)
        try:
            for job in queue:
                pending.append(pool.submit(decode.load_episode_shared, job))
                if len(pending) >= 2 * workers:
                    break
            while pending:
                loaded, handles = decode.attach_shared(pending.popleft().result())
                nxt = next(queue, None)
                if nxt is not None:
                    pending.append(pool.submit(decode.load_episode_shared, nxt))
                yield loaded, lambda h=handles: decode.release_shared(h)
        finally:
            for f in pending:
                if not f.cancel() and not f.exception():
                    decode.release_shared(decode.attach_shared(f.result())[1])


def add_command(convert_group: Any, name: str = "lerobot") -> None:
    """Add ``robodual dataset convert lerobot SRC DST`` to the ``convert`` Typer group."""
    import typer

    @convert_group.command(name)
    def lerobot(
        src: Path = typer.Argument(..., help="Local LeRobot dataset folder (meta/info.json, data/, videos/)."),
        dst: Path = typer.Argument(..., help="Output Zarr store (a folder, e.g. pusht.zarr)."),
        maps: list[str] = typer.Option([], "--map", help="FEATURE=NAME renames a feature, FEATURE= drops it "
                                       "(repeatable), e.g. --map observation.images.wrist=rgb_gripper."),
        workers: int = typer.Option(2, "--workers", help="Processes reading parquet and decoding videos "
                                    "(0: in this process)."),
        tolerance_s: float = typer.Option(DEFAULT_TOLERANCE_S, "--tolerance-s",
                                          help="Timestamp tolerance in seconds (LeRobot's tolerance_s)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace DST (kept until the new store is complete)."),
        resume: bool = typer.Option(False, "--resume", help="Continue an interrupted conversion (DST.partial)."),
        json_out: bool = typer.Option(False, "--json", help="Print the conversion report as JSON on stdout."),
    ) -> None:
        """Convert a LeRobot dataset (v3.0 or v2.1) into a Zarr store, one episode per LeRobot episode."""
        import json

        from rich.console import Console

        conv = LeRobotConverter()
        path = conv.convert(src, dst, mapping=parse_map(maps), workers=workers, tolerance_s=tolerance_s,
                            overwrite=overwrite, resume=resume, progress=not json_out)
        r = conv.report
        if json_out:
            print(json.dumps({"path": str(path), **r}))
            return
        fps = f"{r['frames_per_s']:.0f}" if r["frames_per_s"] else "-"
        console = Console()
        console.print(f"wrote [bold]{path}[/]: {r['episodes']} episodes, {r['steps']} steps "
                      f"({r['frames_converted']} frames converted at {fps} frames/s, {r['seconds']:.1f} s)")
        console.print("keys: " + ", ".join(f"{k} <- {f}" for k, f in r["keys"].items()), markup=False)
        for feature, why in r["dropped"].items():
            console.print(f"not converted: {feature} ({why})", markup=False)
