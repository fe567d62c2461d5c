"""Convert the raw CALVIN layout into a robodual Zarr store: one episode per language-annotated window.

Source layout (one folder per split, e.g. ``task_D_D/training``)::

    episode_%07d.npz                  one frame per file (np.savez_compressed)
    lang_annotations/auto_lang_ann.npy  pickled {'info': {'indx': [(start, end)]}, 'language': {'ann', 'task'}}
    ep_start_end_ids.npy              int [N, 2]: first and last frame id of each recorded sequence
    ep_lens.npy, scene_info.npy, statistics.yaml   (ep_lens is checked against ep_start_end_ids when present)

Annotation windows are inclusive ``(start, end)`` frame ids; windows may overlap, so a frame can be stored
in several episodes. Before anything is written the sequences of ``ep_start_end_ids.npy`` are checked
(integer pairs, sorted, not overlapping, their first and last frame files present) and every annotation
window must lie inside one sequence, so a window cannot run past the last frame or join two recordings. Output keys (contracts): ``rgb_static``, ``rgb_gripper``, ``depth_static``,
``depth_gripper``, ``tactile`` (CALVIN ``rgb_tactile``, the two DIGIT images side by side in channels),
``depth_tactile``; ``proprio`` = ``robot_obs[:6] + robot_obs[-1:]`` (tcp pose and gripper action, float32);
``action`` = ``rel_actions`` (or ``actions`` with ``action_key="actions"``) as float32; and the raw
``robot_obs``, ``scene_obs``, ``actions``, ``rel_actions`` bit-exact (float64 as in the files).
``keys`` chooses the camera/tactile keys; the low-dimensional keys are always written.

The pickled annotation file is read with a restricted unpickler (:mod:`.pickle_safe`). Frames are
decompressed by a thread pool (zlib releases the GIL) one window ahead of the writer.
"""

from __future__ import annotations

import os
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from robodual_core.errors import RobodualError
from robodual_core.interfaces import DatasetConverter
from robodual_core.outputs import describe_path
from robodual_envs.calvin.pickle_safe import load_npy

FPS = 30.0
# output key -> (source key in the npz, modality)
IMAGE_KEYS = {
    "rgb_static": ("rgb_static", "rgb"),
    "rgb_gripper": ("rgb_gripper", "rgb"),
    "depth_static": ("depth_static", "depth"),
    "depth_gripper": ("depth_gripper", "depth"),
    "tactile": ("rgb_tactile", "tactile"),
    "depth_tactile": ("depth_tactile", "depth"),
}
RAW_KEYS = ("robot_obs", "scene_obs", "actions", "rel_actions")
RESIZABLE = ("rgb_static", "rgb_gripper", "depth_static", "depth_gripper")
PROPRIO_INDEX = [0, 1, 2, 3, 4, 5, 14]  # tcp xyz, tcp euler xyz, gripper action
RAW_SHAPES = {"robot_obs": (15,), "scene_obs": (24,), "actions": (7,), "rel_actions": (7,)}  # per frame
ACTION_SPACES = {
    "rel_actions": {"type": "relative_ee", "source": "rel_actions", "dim": 7, "range": [-1.0, 1.0],
                    "components": ["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"],
                    "scale": {"position_m": 0.02, "orientation_rad": 0.05}, "gripper": "-1 close, +1 open"},
    "actions": {"type": "absolute_ee", "source": "actions", "dim": 7,
                "components": ["x", "y", "z", "roll", "pitch", "yaw", "gripper"], "gripper": "-1 close, +1 open"},
}


def _frame_path(split_dir: Path, frame: int) -> Path:
    return split_dir / f"episode_{frame:07d}.npz"


def _frame_ids(split_dir: Path) -> list[int]:
    """The ids of every ``episode_%07d.npz`` in a split folder, sorted (lists the folder)."""
    ids = []
    with os.scandir(split_dir) as it:
        for entry in it:
            name = entry.name
            if name.startswith("episode_") and name.endswith(".npz") and name[8:-4].isdigit():
                ids.append(int(name[8:-4]))
    return sorted(ids)


def read_sequences(split_dir: Path) -> np.ndarray:
    """``ep_start_end_ids.npy`` as int64 ``[N, 2]`` (inclusive first and last frame of each recorded
    sequence), checked: integer pairs, start <= end, sorted and not overlapping, the first and last frame
    files present, and equal to ``ep_lens.npy`` where that file exists."""
    path = split_dir / "ep_start_end_ids.npy"
    if not path.is_file():
        raise RobodualError(f"'{path}' does not exist; expected CALVIN's sequence boundaries (int [N, 2] first and "
                            f"last frame ids) in the split folder '{split_dir}'")
    ids = load_npy(path)
    if not isinstance(ids, np.ndarray) or ids.dtype.kind not in "iu" or ids.ndim != 2 or ids.shape[1] != 2:
        found = (f"an array of shape {ids.shape} and dtype {ids.dtype}" if isinstance(ids, np.ndarray)
                 else type(ids).__name__)
        raise RobodualError(f"'{path}' holds {found}; expected an integer array [N, 2] of (first, last) frame ids")
    ids = ids.astype(np.int64)
    if len(ids) == 0:
        raise RobodualError(f"'{path}' lists no sequences; expected at least one (first, last) pair")
    bad = np.flatnonzero((ids[:, 0] < 0) | (ids[:, 1] < ids[:, 0]))
    if bad.size:
        i = int(bad[0])
        raise RobodualError(f"'{path}': sequence {i} is {tuple(ids[i].tolist())}; expected 0 <= first <= last")
    order = np.argsort(ids[:, 0], kind="stable")
    sorted_ids = ids[order]
    overlap = np.flatnonzero(sorted_ids[1:, 0] <= sorted_ids[:-1, 1])
    if overlap.size:
        a, b = sorted_ids[int(overlap[0])], sorted_ids[int(overlap[0]) + 1]
        raise RobodualError(f"'{path}': sequences {tuple(a.tolist())} and {tuple(b.tolist())} overlap; expected "
                            "disjoint (first, last) frame ranges")
    missing = [int(f) for f in ids.ravel() if not _frame_path(split_dir, int(f)).is_file()]
    if missing:
        frames = _frame_ids(split_dir)
        have = f"frames {frames[0]}..{frames[-1]} ({len(frames)} files)" if frames else "no episode_*.npz files"
        raise RobodualError(f"'{path}' refers to frame id(s) {missing[:5]}{' ...' if len(missing) > 5 else ''} "
                            f"whose files do not exist; the folder holds {have}")
    lens_path = split_dir / "ep_lens.npy"
    if lens_path.is_file():
        lens = load_npy(lens_path)
        want = ids[:, 1] - ids[:, 0] + 1
        if not isinstance(lens, np.ndarray) or lens.shape != want.shape or lens.dtype.kind not in "iu" \
                or not np.array_equal(lens.astype(np.int64), want):
            found = lens.tolist()[:5] if isinstance(lens, np.ndarray) else type(lens).__name__
            raise RobodualError(f"'{lens_path}' is {found}; expected the lengths of the sequences in "
                                f"'{path}': {want.tolist()[:5]}")
    return sorted_ids


def check_windows(split_dir: Path, windows: list[tuple[int, int, str, str]], sequences: np.ndarray) -> None:
    """Every annotation window lies inside one recorded sequence (so inside the frames that exist)."""
    starts, ends = sequences[:, 0], sequences[:, 1]
    w = np.asarray([(a, b) for a, b, _, _ in windows], dtype=np.int64)
    seq = np.searchsorted(starts, w[:, 0], side="right") - 1
    inside = (seq >= 0) & (w[:, 1] <= ends[np.maximum(seq, 0)])
    if not inside.all():
        i = int(np.flatnonzero(~inside)[0])
        a, b = int(w[i, 0]), int(w[i, 1])
        where = ("past the last frame" if a > ends.max() or b > ends.max()
                 else "before the first frame" if a < starts.min() else "across sequence boundaries")
        raise RobodualError(f"'{split_dir / 'lang_annotations' / 'auto_lang_ann.npy'}': info.indx[{i}] is ({a}, {b}), "
                            f"{where} of the sequences in '{split_dir / 'ep_start_end_ids.npy'}' (frames "
                            f"{int(starts.min())}..{int(ends.max())}); expected every window inside one sequence")


def read_annotations(split_dir: Path) -> list[tuple[int, int, str, str]]:
    """``[(start, end_inclusive, instruction, task)]`` from ``lang_annotations/auto_lang_ann.npy``."""
    path = split_dir / "lang_annotations" / "auto_lang_ann.npy"
    if not path.is_file():
        raise RobodualError(f"'{path}' does not exist; expected CALVIN's language annotations in the split folder "
                            f"'{split_dir}' (is SRC the dataset root holding training/ and validation/?)")
    ann = load_npy(path)
    expected = "expected {'info': {'indx': [...]}, 'language': {'ann': [...], 'task': [...]}}"
    try:
        indx = ann["info"]["indx"]
        texts = ann["language"]["ann"]
        tasks = ann["language"]["task"]
    except (TypeError, KeyError, IndexError, ValueError) as exc:
        raise RobodualError(f"'{path}' lacks {exc}; {expected}") from None
    for name, value in (("info.indx", indx), ("language.ann", texts), ("language.task", tasks)):
        if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__len__"):
            raise RobodualError(f"'{path}': {name} is a {type(value).__name__}; {expected}")
    if not (len(indx) == len(texts) == len(tasks)):
        raise RobodualError(f"'{path}': info.indx has {len(indx)} windows but language.ann has {len(texts)} and "
                            f"language.task {len(tasks)}; expected equal counts")
    windows = []
    for i, (pair, text, task) in enumerate(zip(indx, texts, tasks, strict=True)):
        try:
            if len(pair) != 2 or any(isinstance(v, (float, np.floating, str, bytes)) for v in pair):
                raise TypeError
            start, end = int(pair[0]), int(pair[1])
        except (TypeError, ValueError, IndexError):
            raise RobodualError(f"'{path}': info.indx[{i}] is {pair!r}; expected a (start, end) pair of ints") from None
        if start < 0:
            raise RobodualError(f"'{path}': info.indx[{i}] is ({start}, {end}); expected frame ids >= 0")
        if not isinstance(text, str) or not isinstance(task, str):
            raise RobodualError(f"'{path}': language.ann[{i}] / language.task[{i}] are {type(text).__name__} / "
                                f"{type(task).__name__}; expected strings")
        if end < start:
            raise RobodualError(f"'{path}': info.indx[{i}] is ({start}, {end}); expected start <= end")
        windows.append((start, end, str(text), str(task)))
    if not windows:
        raise RobodualError(f"'{path}' has no annotated windows; nothing to convert")
    return windows


LANGUAGE_ID = "calvin-auto-lang-ann"


def read_embeddings(split_dir: Path, windows: list[tuple[int, int, str, str]]) -> np.ndarray | None:
    """CALVIN's instruction embeddings (``language.emb``) as float32 ``[windows, E]``, or None."""
    path = split_dir / "lang_annotations" / "auto_lang_ann.npy"
    ann = load_npy(path)
    emb = ann.get("language", {}).get("emb") if isinstance(ann, dict) else None
    if emb is None:
        return None
    try:
        emb = np.asarray(emb, dtype=np.float32).reshape(len(emb), -1)
    except (TypeError, ValueError) as exc:
        raise RobodualError(f"'{path}': language.emb is not a numeric array ({exc}); expected float [windows, 1, E]"
                            ) from None
    if len(emb) != len(windows) or emb.shape[1] == 0:
        raise RobodualError(f"'{path}': language.emb has shape {emb.shape} for {len(windows)} annotated windows; "
                            "expected one non-empty row per window")
    if not np.isfinite(emb).all():
        raise RobodualError(f"'{path}': language.emb contains NaN or Inf; expected finite embeddings")
    return emb


def keep_language_embeddings(store: Path, split_dir: Path, windows: list[tuple[int, int, str, str]],
                             emb: np.ndarray | None = None) -> None:
    """Keep CALVIN's own 384-d MiniLM instruction embeddings (``language.emb``) in the store.

    They go to ``language/calvin-auto-lang-ann/`` in the layout the ``language`` sensor reads
    (``embeddings [U, E]``, ``episode_index``, attrs ``instructions`` and ``complete`` last), so a
    specialist can use them with ``{"name": "language", "options": {"model": "calvin-auto-lang-ann"}}``
    without a text model, for every instruction in the store.
    """
    import zarr

    if emb is None:
        emb = read_embeddings(split_dir, windows)
    if emb is None:
        return
    texts = [text for _, _, text, _ in windows]
    unique = sorted(set(texts))
    first = {t: texts.index(t) for t in unique}
    group = zarr.open_group(str(store), mode="a").require_group("language").create_group(LANGUAGE_ID, overwrite=True)
    group.create_array("embeddings", data=np.stack([emb[first[t]] for t in unique]))
    group.create_array("episode_index", data=np.asarray([unique.index(t) for t in texts], dtype=np.int64))
    group.attrs.update({"model": LANGUAGE_ID, "model_id": LANGUAGE_ID, "dim": int(emb.shape[1]),
                        "instructions": unique, "source": "CALVIN auto_lang_ann.npy language.emb"})
    group.attrs["complete"] = True


class FrameReader:
    """Reads ``episode_%07d.npz`` frames and checks them against the first frame's shapes and dtypes."""

    def __init__(self, split_dir: Path, source_keys: list[str]):
        self.split_dir = split_dir
        self.source_keys = source_keys
        self.reference: dict[str, tuple[tuple[int, ...], np.dtype]] | None = None

    def path(self, frame: int) -> Path:
        return self.split_dir / f"episode_{frame:07d}.npz"

    def read(self, frame: int) -> dict[str, np.ndarray]:
        path = self.path(frame)
        found = describe_path(path)  # a FIFO would block the read, /dev/zero never end it
        if found != "a file":
            found = "does not exist" if not os.path.lexists(path) else f"is {found}"
            raise RobodualError(f"frame file '{path}' {found}; expected a regular npz file (an annotation window "
                                f"refers to frame {frame})")
        try:
            with np.load(path, allow_pickle=False) as npz:
                missing = [k for k in self.source_keys if k not in npz.files]
                if missing:
                    raise RobodualError(f"'{path}' has no key {missing[0]!r}; expected keys {self.source_keys}, "
                                        f"found {sorted(npz.files)}")
                out = {k: npz[k] for k in self.source_keys}
        except RobodualError:
            raise
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
            raise RobodualError(f"'{path}' is not a readable npz file (truncated or corrupted?): "
                                f"{type(exc).__name__}: {exc}") from None
        ref = self.reference
        if ref is None:
            for key, want in RAW_SHAPES.items():  # indexed by position (proprio = robot_obs[PROPRIO_INDEX])
                if key in out and out[key].shape != want:
                    raise RobodualError(f"'{path}' key '{key}' has shape {out[key].shape}; expected {want} as in "
                                        "CALVIN's frames")
            self.reference = ref = {k: (v.shape, v.dtype) for k, v in out.items()}
        for key, value in out.items():
            shape, dtype = ref[key]
            if value.shape != shape or value.dtype != dtype:
                raise RobodualError(f"'{path}' key '{key}' has shape {value.shape} and dtype {value.dtype}; expected "
                                    f"{shape} {dtype} like the first frame converted")
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                raise RobodualError(f"'{path}' key '{key}' contains NaN or Inf; expected finite values")
        return out


def _resize(x: np.ndarray, size: int, depth: bool) -> np.ndarray:
    """``[T, H, W(, C)]`` -> ``[T, size, size(, C)]``; bilinear (antialiased) for colour, nearest for depth."""
    import torch

    if x.shape[1:3] == (size, size):
        return x
    t = torch.from_numpy(x)
    squeeze = t.ndim == 3
    if squeeze:
        t = t.unsqueeze(-1)
    t = t.permute(0, 3, 1, 2).float()
    if depth:
        t = torch.nn.functional.interpolate(t, size=(size, size), mode="nearest")
    else:
        t = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        t = t.round_().clamp_(0, 255)
    t = t.permute(0, 2, 3, 1)
    if squeeze:
        t = t.squeeze(-1)
    return t.numpy().astype(x.dtype)


class CalvinConverter(DatasetConverter):
    """Raw CALVIN split folder -> robodual Zarr store (see the module docstring)."""

    name = "calvin"

    @staticmethod
    def add_command(convert_group: Any, name: str = "calvin") -> None:
        """CLI hook used by ``robodual dataset convert`` (see ``robodual_cli.commands.dataset``)."""
        add_command(convert_group, name)

    def __init__(self) -> None:
        self.report: dict[str, Any] = {}

    @staticmethod
    def split_dir(src: Path, split: str) -> Path:
        src = Path(src)
        if not src.is_dir():
            raise RobodualError(f"CALVIN source '{src}' is not a folder")
        if (src / "lang_annotations").exists():
            return src  # SRC is already a split folder
        if split not in ("training", "validation"):
            raise RobodualError(f"--split is '{split}'; expected 'training' or 'validation'")
        if not (src / split).is_dir() and _frame_ids(src):
            raise RobodualError(f"'{src}' holds CALVIN frame files (episode_*.npz) but no 'lang_annotations/' folder; "
                                f"expected '{src / 'lang_annotations' / 'auto_lang_ann.npy'}' beside the frames (the "
                                "language annotations define the episodes)")
        if not (src / split).is_dir():
            found = sorted(p.name for p in src.iterdir() if p.is_dir())
            raise RobodualError(f"'{src}' has no '{split}' folder; expected CALVIN's training/ and validation/ "
                                f"(found: {', '.join(found) or 'nothing'})")
        return src / split

    def convert(self, src: Path, dst: Path, split: str = "training", keys: list[str] | None = None,
                image_size: int | None = None, workers: int = 4, action_key: str = "rel_actions",
                overwrite: bool = False, resume: bool = False, progress: bool = True, **options: Any) -> Path:
        from robodual_core.data import DatasetWriter

        if options:
            raise RobodualError(f"unknown CALVIN converter options: {', '.join(sorted(options))}")
        keys = list(IMAGE_KEYS) if keys is None else list(keys)
        unknown = [k for k in keys if k not in IMAGE_KEYS]
        if unknown:
            raise RobodualError(f"--keys has unknown key(s) {unknown}; expected some of {', '.join(IMAGE_KEYS)} "
                                "(robot_obs, scene_obs, actions, rel_actions, proprio and action are always written)")
        if action_key not in ACTION_SPACES:
            raise RobodualError(f"action key is '{action_key}'; expected one of {', '.join(ACTION_SPACES)}")
        if image_size is not None and image_size < 1:
            raise RobodualError(f"--image-size is {image_size}; expected a positive size in pixels")
        split_path = self.split_dir(Path(src), split)
        windows = read_annotations(split_path)
        check_windows(split_path, windows, read_sequences(split_path))
        emb = read_embeddings(split_path, windows)
        modalities = {k: IMAGE_KEYS[k][1] for k in keys}
        modalities.update({"proprio": "proprio", "action": "action", **{k: "lowdim" for k in RAW_KEYS}})
        source = {"format": "calvin", "path": str(split_path.resolve()), "windows": len(windows),
                  "image_size": image_size, "keys": keys}
        writer = DatasetWriter(dst, fps=FPS, modalities=modalities, action_space=ACTION_SPACES[action_key],
                               overwrite=overwrite, resume=resume, attrs={"source": source}, inputs=[src])
        reader = FrameReader(split_path, [IMAGE_KEYS[k][0] for k in keys] + list(RAW_KEYS))
        if image_size:
            import torch  # noqa: F401  (imported before the clock starts: resizing uses it)
        todo = windows[writer.num_episodes:]
        frames_total = sum(end - start + 1 for start, end, _, _ in todo)
        t0 = time.perf_counter()
        from robodual_core.progress import counting

        with counting(progress, frames_total, f"CALVIN {split_path.name} -> {Path(dst).name}", "frames") as advance:
            for (_, _, text, task), frames in zip(todo, self._load_windows(reader, todo, workers), strict=True):
                writer.add_episode(self._episode(frames, keys, image_size, action_key), instruction=text, task=task)
                advance(len(frames["robot_obs"]))
        convert_s = time.perf_counter() - t0
        path = writer.finalize()
        keep_language_embeddings(path, split_path, windows, emb)
        total_s = time.perf_counter() - t0
        self.report = {"episodes": writer.num_episodes, "steps": writer.num_steps, "frames_converted": frames_total,
                       "seconds": total_s, "frames_per_s": frames_total / convert_s if convert_s > 0 else None,
                       "resumed_from_episode": len(windows) - len(todo)}
        return path

    @staticmethod
    def _load_windows(reader: FrameReader, windows: list, workers: int) -> Iterator[dict[str, np.ndarray]]:
        """Stacked frames of each window, decoded by ``workers`` threads, one window ahead of the caller."""

        def load(window: tuple) -> dict[str, np.ndarray]:
            ids = range(window[0], window[1] + 1)
            frames = list(pool.map(reader.read, ids)) if workers > 1 else [reader.read(i) for i in ids]
            return {k: np.stack([f[k] for f in frames]) for k in frames[0]}

        if not windows:
            return
        reader.read(windows[0][0])  # fixes the reference shapes before threads start
        with ThreadPoolExecutor(max(1, workers)) as pool, ThreadPoolExecutor(1) as ahead:
            pending = ahead.submit(load, windows[0])
            for nxt in [*windows[1:], None]:
                current = pending.result()
                if nxt is not None:
                    pending = ahead.submit(load, nxt)
                yield current

    @staticmethod
    def _episode(frames: dict[str, np.ndarray], keys: list[str], image_size: int | None,
                 action_key: str) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for key in keys:
            x = frames[IMAGE_KEYS[key][0]]
            if image_size and key in RESIZABLE:
                x = _resize(x, image_size, depth=IMAGE_KEYS[key][1] == "depth")
            out[key] = x
        for key in RAW_KEYS:
            out[key] = frames[key]
        out["proprio"] = frames["robot_obs"][:, PROPRIO_INDEX].astype(np.float32)
        out["action"] = frames[action_key].astype(np.float32)
        return out


def add_command(convert_group: Any, name: str = "calvin") -> None:
    """Add ``robodual dataset convert calvin SRC DST`` to the ``convert`` Typer group."""
    import typer

    @convert_group.command(name)
    def calvin(
        src: Path = typer.Argument(..., help="CALVIN dataset root (holding training/ and validation/) or a split folder."),
        dst: Path = typer.Argument(..., help="Output Zarr store (a folder, e.g. calvin_D.zarr)."),
        split: str = typer.Option("training", "--split", help="training | validation"),
        keys: str = typer.Option(",".join(IMAGE_KEYS), "--keys",
                                 help="Comma-separated camera/tactile keys to write (low-dim keys are always written)."),
        image_size: int = typer.Option(0, "--image-size", help="Resize static/gripper cameras to NxN (0: keep)."),
        action: str = typer.Option("rel_actions", "--action", help="Training action: rel_actions | actions."),
        workers: int = typer.Option(4, "--workers", help="Threads decoding frame files."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace DST (kept until the new store is complete)."),
        resume: bool = typer.Option(False, "--resume", help="Continue an interrupted conversion (DST.partial)."),
        json_out: bool = typer.Option(False, "--json", help="Print the conversion report as JSON on stdout."),
    ) -> None:
        """Convert raw CALVIN (episode_*.npz + auto_lang_ann.npy) into a Zarr store, one episode per annotation."""
        import json

        from rich.console import Console

        conv = CalvinConverter()
        key_list = [k.strip() for k in keys.split(",") if k.strip()]
        path = conv.convert(src, dst, split=split, keys=key_list, image_size=image_size or None, workers=workers,
                            action_key=action, overwrite=overwrite, resume=resume, progress=not json_out)
        if json_out:
            print(json.dumps({"path": str(path), **conv.report}))
            return
        r = conv.report
        fps = f"{r['frames_per_s']:.0f}" if r["frames_per_s"] else "-"
        Console(soft_wrap=True).print(f"wrote [bold]{path}[/]: {r['episodes']} episodes, {r['steps']} steps "
                        f"({r['frames_converted']} frames converted at {fps} frames/s, {r['seconds']:.1f} s)")
