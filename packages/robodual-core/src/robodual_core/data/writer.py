"""Writing a robodual Zarr store episode by episode: :class:`DatasetWriter`.

    with DatasetWriter("out.zarr", fps=30, modalities={"rgb_static": "rgb", "action": "action"}) as w:
        for ep in episodes:
            w.add_episode({"rgb_static": frames, "action": actions}, instruction="open the drawer",
                          task="open_drawer")
    # leaving the block finalizes: statistics, ``complete: true``, rename into place

The store is written in ``<path>.partial`` and renamed into place by :meth:`finalize`. Each episode
commits when its ``meta/episode_ends`` entry is written (after its data), so after a crash the partial
store holds every whole episode plus, perhaps, the tail of one that is cut off; ``resume=True`` drops
that tail and continues from :attr:`num_episodes`. An existing store at ``path`` is kept until the new one
is complete (``overwrite=True`` replaces it then).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from robodual_core.data.schema import (
    ALL_CHUNKS_ATTR,
    MODALITIES,
    PARTIAL_SUFFIX,
    SCHEMA_VERSION,
    STEP_INSTRUCTIONS,
    array_layout,
    dtype_ok,
    frame_shape_ok,
    storage_dtype,
)
from robodual_core.errors import RobodualError
from robodual_core.io import replace_dir
from robodual_core.outputs import check_output

META_CHUNK = 16384
# Every chunk the writer touches holds real data, so zarr's check of whether a chunk equals the fill value
# (a full comparison per chunk) is skipped: it took about 45% of the time of writing image frames. The
# zarrs pipeline skips chunks equal to the fill value whatever this says; :meth:`DatasetWriter._append`
# stores those again (a robodual store holds every chunk, so that a missing one is known to be lost).
WRITE_CONFIG = {"write_empty_chunks": True}


class DatasetWriter:
    """Append episodes to a new store; ``finalize()`` computes statistics and marks it complete.

    Args:
        path: the store folder to create (e.g. ``data/calvin_debug.zarr``).
        fps: control frequency of the recorded steps.
        modalities: ``{key: "rgb"|"depth"|"tactile"|"proprio"|"action"|"lowdim"}``; every episode must
            provide exactly these keys. ``proprio`` and ``action`` keys are stored as float32; others keep
            the dtype of the first episode.
        action_space: a JSON-able description of the ``action`` key (type, dim, components, range).
        overwrite: replace an existing store at ``path`` (when the new one is complete) and discard an
            interrupted ``<path>.partial``.
        resume: continue an interrupted ``<path>.partial`` after its last whole episode.
        attrs: extra JSON-able root attributes (e.g. ``source``); checked for equality on resume.
        inputs: the files/folders the store is made from (a converter's source): the store may not be one,
            lie inside one or hold one (:func:`robodual_core.outputs.check_output`).
    """

    def __init__(self, path: str | Path, fps: float, modalities: dict[str, str],
                 action_space: dict[str, Any] | None = None, overwrite: bool = False, resume: bool = False,
                 attrs: dict[str, Any] | None = None, inputs: Sequence[str | Path] = ()):
        self.path = Path(path)
        # the store is never one of the inputs it is made from, inside one or holding one
        check_output(self.path, flag="output store", expect="store", inputs=inputs)
        self.partial = self.path.with_name(self.path.name + PARTIAL_SUFFIX)
        self.fps = float(fps)
        self.modalities = dict(modalities)
        self.action_space = dict(action_space or {})
        self.overwrite = overwrite
        self.extra_attrs = dict(attrs or {})
        self._finalized = False
        self._check_modalities()
        if self.path.exists():
            if not overwrite:
                raise RobodualError(f"'{self.path}' already exists; pass --overwrite to replace it (the old "
                                    "store is kept until the new one is complete) or choose another path")
            # only a robodual store (its root attributes are the marker) or an empty folder is replaced
            check_output(self.path, flag="output store", expect="store", overwrite=True)
        if self.partial.exists():
            if resume:
                self._open_partial()
                return
            if not overwrite:
                raise RobodualError(f"'{self.partial}' was left by an interrupted write; pass --resume to "
                                    "continue after its last whole episode, or --overwrite to start again")
            shutil.rmtree(self.partial)
        self._create()

    # -- setup -----------------------------------------------------------------------------------
    def _check_modalities(self) -> None:
        if not self.modalities:
            raise RobodualError("DatasetWriter needs at least one key in 'modalities'")
        for key, modality in self.modalities.items():
            if modality not in MODALITIES:
                raise RobodualError(f"modality of key '{key}' is '{modality}'; expected one of {', '.join(MODALITIES)}")
            if not key or "/" in key:
                raise RobodualError(f"dataset key '{key}' is not a valid name; expected a non-empty name without '/'")

    def _root_attrs(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "fps": self.fps, "modalities": self.modalities,
                "action_space": self.action_space, **self.extra_attrs}

    def _create(self) -> None:
        from robodual_core.data.zarr_io import zarr_module

        zarr = zarr_module()

        self.root = zarr.open_group(str(self.partial), mode="w-")
        self.root.attrs.update({**self._root_attrs(), "complete": False, ALL_CHUNKS_ATTR: True})
        self.root.create_group("data")
        meta = self.root.create_group("meta")
        meta.attrs.update({"instructions": [], "tasks": []})
        meta.create_array("episode_ends", shape=(0,), dtype="int64", chunks=(META_CHUNK,))
        meta.create_array("instruction_index", shape=(0,), dtype="int32", chunks=(META_CHUNK,))
        meta.create_array("task_index", shape=(0,), dtype="int32", chunks=(META_CHUNK,))
        self._vocab: dict[str, list[str]] = {"instructions": [], "tasks": []}
        self._num_episodes = 0
        self._num_steps = 0

    def _open_partial(self) -> None:
        from robodual_core.data.zarr_io import zarr_module

        zarr = zarr_module()

        try:
            self.root = zarr.open_group(str(self.partial), mode="r+")
            ends = np.asarray(self.root["meta/episode_ends"][:], dtype=np.int64)
        except Exception as exc:
            raise RobodualError(f"cannot resume '{self.partial}': it is not a readable robodual store ({exc}); "
                                "pass --overwrite to start again") from exc
        found = dict(self.root.attrs)
        for name, want in self._root_attrs().items():
            if found.get(name) != want:
                raise RobodualError(f"cannot resume '{self.partial}': its attribute '{name}' is {found.get(name)!r} "
                                    f"but this run writes {want!r}; rerun with the same options or pass --overwrite")
        self._num_episodes = int(ends.shape[0])
        self._num_steps = int(ends[-1]) if self._num_episodes else 0
        meta = self.root["meta"]
        self._vocab = {name: list(meta.attrs.get(name, [])) for name in ("instructions", "tasks")}
        # drop whatever an interrupted add_episode wrote past the last committed episode
        for key in self.root["data"].array_keys():
            arr = self.root["data"][key]
            if arr.shape[0] != self._num_steps:
                arr.resize((self._num_steps, *arr.shape[1:]))
        for name in ("instruction_index", "task_index"):
            arr = meta[name]
            if arr.shape[0] != self._num_episodes:
                arr.resize((self._num_episodes,))
        if STEP_INSTRUCTIONS in meta:
            self._repair_step_instructions()

    def _episode_instruction_steps(self) -> np.ndarray:
        """Per step of the committed episodes, the index of its episode's instruction."""
        meta = self.root["meta"]
        ends = np.asarray(meta["episode_ends"][: self._num_episodes], dtype=np.int64)
        index = np.asarray(meta["instruction_index"][: self._num_episodes], dtype=np.int32)
        return np.repeat(index, np.diff(ends, prepend=0))

    def _repair_step_instructions(self) -> None:
        """After a crash: cut ``meta/step_instruction_index`` to the committed steps and fill steps an
        interrupted creation left unwritten (-1, or missing) with their episode's instruction; an episode
        that has per-step instructions wrote them before it committed."""
        arr = self.root["meta"][STEP_INSTRUCTIONS]
        values = np.full(self._num_steps, -1, dtype=np.int32)
        have = min(int(arr.shape[0]), self._num_steps)
        values[:have] = np.asarray(arr[:have], dtype=np.int32)
        unset = values < 0
        if have != arr.shape[0] or have != self._num_steps or unset.any():
            values[unset] = self._episode_instruction_steps()[unset]
            arr.resize((self._num_steps,))
            if self._num_steps:
                arr.with_config(WRITE_CONFIG)[:] = values
                store_skipped_chunks(arr, 0, self._num_steps)

    # -- writing ---------------------------------------------------------------------------------
    @property
    def num_episodes(self) -> int:
        """Episodes committed so far (after a resume: those already in the partial store)."""
        return self._num_episodes

    @property
    def num_steps(self) -> int:
        return self._num_steps

    def _checked(self, arrays: dict[str, Any]) -> tuple[dict[str, np.ndarray], int]:
        missing = sorted(set(self.modalities) - set(arrays))
        extra = sorted(set(arrays) - set(self.modalities))
        if missing or extra:
            raise RobodualError(f"episode {self._num_episodes}: keys do not match the writer's modalities; "
                                f"missing: {missing or 'none'}, unexpected: {extra or 'none'}")
        out: dict[str, np.ndarray] = {}
        length = None
        data = self.root["data"]
        for key, modality in self.modalities.items():
            x = np.asarray(arrays[key])
            where = f"episode {self._num_episodes}, key '{key}'"
            if x.ndim == 0:
                raise RobodualError(f"{where}: expected an array [T, ...], found a scalar")
            if length is None:
                length = x.shape[0]
            if x.shape[0] != length or length == 0:
                raise RobodualError(f"{where}: has {x.shape[0]} steps; expected the same non-zero length as the "
                                    f"other keys ({length})")
            problem = frame_shape_ok(modality, x.shape[1:]) or dtype_ok(modality, x.dtype)
            if problem:
                raise RobodualError(f"{where} ({modality}): expected {problem}; found shape {x.shape[1:]} per "
                                    f"step, dtype {x.dtype}")
            dim = self.action_space.get("dim")
            if key == "action" and isinstance(dim, int) and not isinstance(dim, bool) and \
                    int(np.prod(x.shape[1:], dtype=np.int64)) != dim:
                raise RobodualError(f"{where}: has {int(np.prod(x.shape[1:], dtype=np.int64))} values per step but "
                                    f"action_space says dim {dim}; expected them to agree")
            target = storage_dtype(modality, x.dtype)
            if key in data:
                arr = data[key]
                if tuple(arr.shape[1:]) != x.shape[1:]:
                    raise RobodualError(f"{where}: per-step shape {x.shape[1:]} differs from the store's "
                                        f"{tuple(arr.shape[1:])}")
                if np.dtype(arr.dtype) != target:
                    raise RobodualError(f"{where}: dtype {x.dtype} differs from the store's {arr.dtype}")
            if x.dtype.kind == "f" and not np.isfinite(x).all():
                step = int(np.argwhere(~np.isfinite(x.reshape(length, -1)))[0][0])
                raise RobodualError(f"{where}: NaN or Inf at step {step}; expected finite values")
            out[key] = x.astype(target, copy=False)
        assert length is not None
        return out, int(length)

    def _index_of(self, name: str, value: str) -> int:
        vocab = self._vocab[name]
        if not hasattr(self, "_lookup"):
            self._lookup: dict[str, dict[str, int]] = {}
        lookup = self._lookup.setdefault(name, {})
        if len(lookup) != len(vocab):
            lookup.clear()
            lookup.update({v: i for i, v in enumerate(vocab)})
        if value not in lookup:
            vocab.append(value)
            lookup[value] = len(vocab) - 1
            self.root["meta"].attrs[name] = vocab
        return lookup[value]

    @staticmethod
    def _append(arr: Any, values: np.ndarray, at: int) -> None:
        arr.resize((at + values.shape[0], *arr.shape[1:]))
        arr.with_config(WRITE_CONFIG)[at:] = values
        store_skipped_chunks(arr, at, at + values.shape[0])

    def add_episode(self, arrays: dict[str, Any], instruction: str = "", task: str = "",
                    step_instructions: Sequence[str] | None = None) -> int:
        """Append one episode (``{key: [T, ...]}``, every key of ``modalities``); returns its index.

        ``step_instructions`` (T strings) keeps an instruction per step when they differ within the episode
        (``meta/step_instruction_index``, see :mod:`robodual_core.data.schema`); ``instruction`` stays the
        episode's own (give the first step's).
        """
        if self._finalized:
            raise RobodualError(f"'{self.path}' is already finalized; create a new DatasetWriter to write more")
        if not isinstance(instruction, str) or not isinstance(task, str):
            raise RobodualError(f"episode {self._num_episodes}: instruction and task must be strings; found "
                                f"{type(instruction).__name__} and {type(task).__name__}")
        checked, length = self._checked(arrays)
        steps = None
        if step_instructions is not None:
            steps = list(step_instructions)
            if len(steps) != length or not all(isinstance(t, str) for t in steps):
                raise RobodualError(f"episode {self._num_episodes}: step_instructions has {len(steps)} entries; "
                                    f"expected one string per step ({length})")
        data = self.root["data"]
        for key, x in checked.items():
            if key not in data:
                layout = array_layout(self.modalities[key], x.shape[1:], x.dtype)
                data.create_array(key, shape=(0, *x.shape[1:]), dtype=x.dtype, fill_value=0, config=WRITE_CONFIG,
                                  **layout)
            self._append(data[key], x, self._num_steps)
        meta = self.root["meta"]
        ep = self._num_episodes
        self._append(meta["instruction_index"], np.array([self._index_of("instructions", instruction)], np.int32), ep)
        self._append(meta["task_index"], np.array([self._index_of("tasks", task)], np.int32), ep)
        self._write_step_instructions(instruction, steps, length)
        # the commit point: written last
        self._append(meta["episode_ends"], np.array([self._num_steps + length], np.int64), ep)
        self._num_steps += length
        self._num_episodes += 1
        return ep

    def _write_step_instructions(self, instruction: str, steps: list[str] | None, length: int) -> None:
        meta = self.root["meta"]
        if steps is None and STEP_INSTRUCTIONS not in meta:
            return
        if STEP_INSTRUCTIONS not in meta:  # the first episode with per-step instructions: earlier steps repeat
            arr = meta.create_array(STEP_INSTRUCTIONS, shape=(0,), dtype="int32", chunks=(META_CHUNK,),
                                    fill_value=-1, config=WRITE_CONFIG)
            if self._num_steps:
                self._append(arr, self._episode_instruction_steps(), 0)
        if steps is None:
            values = np.full(length, self._index_of("instructions", instruction), dtype=np.int32)
        else:
            values = np.array([self._index_of("instructions", t) for t in steps], dtype=np.int32)
        self._append(meta[STEP_INSTRUCTIONS], values, self._num_steps)

    def set_attrs(self, **attrs: Any) -> None:
        """Set extra root attributes (JSON-able) before finalizing."""
        self.root.attrs.update(attrs)

    def finalize(self, depth_frames: int = 256) -> Path:
        """Compute statistics, write ``complete: true`` last and move the store into place."""
        from robodual_core.data.stats import compute_stats

        if self._finalized:
            return self.path
        if self._num_episodes == 0:
            raise RobodualError(f"no episodes were written to '{self.partial}'; nothing to finalize")
        stats, info = compute_stats(self.root, self.modalities, depth_frames=depth_frames)
        self.root.attrs.update({"stats": stats, "stats_info": info})
        self.root.attrs["complete"] = True
        _move_into_place(self.partial, self.path, self.overwrite)
        self._finalized = True
        return self.path

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # on an error the partial store stays for --resume; on success the store is finalized
        if exc_type is None and not self._finalized:
            self.finalize()


def store_skipped_chunks(arr: Any, lo: int, hi: int) -> None:
    """Store the chunks of steps ``lo .. hi - 1`` (and of the rest of their files) that a write skipped
    because they equal the fill value, through zarr-python's own pipeline, which honours
    ``write_empty_chunks`` (zarrs does not)."""
    from robodual_core.data.integrity import layout_of
    from robodual_core.data.zarr_io import DEFAULT_PIPELINE, zarr_module

    layout = layout_of(arr, str(getattr(arr, "path", "?")))
    if layout is None or layout.folder is None:
        return
    missing = [r for i in layout.files_of_steps(lo, hi) for coords in layout.coords_of_file(i)
               for r in layout.inspect(coords)[1]]
    if not missing:
        return
    zarr = zarr_module()
    with zarr.config.set({"codec_pipeline.path": DEFAULT_PIPELINE}):
        plain = arr.with_config(WRITE_CONFIG)
    for a, b in missing:
        plain[a:b] = np.asarray(arr[a:b])


def _move_into_place(src: Path, dst: Path, overwrite: bool) -> None:
    if dst.exists() and not overwrite:
        raise RobodualError(f"'{dst}' appeared while writing; the new store is kept at '{src}'")
    if dst.exists():  # checked again here: what is there now may not be what was there when the write began
        check_output(dst, flag="output store", expect="store", overwrite=True)
    replace_dir(src, dst)
