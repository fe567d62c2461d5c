"""Chunk integrity of a store: every chunk present, every shard index whole, every chunk decodable.

zarr answers a read of a chunk that is not stored with the array's fill value (zeros here): a deleted
``action`` chunk or RGB shard would read as zeros and black frames. :class:`DatasetWriter` writes every
chunk (``write_empty_chunks``), also all-zero ones, so in a robodual store a chunk that is not there is
lost data. This module finds such chunks:

- :class:`ChunkLayout` maps steps to the files (storage chunks: a shard, or a plain chunk) of one array
  and checks one file: it exists, is not empty and, for a shard, its index (at the start or end of the
  file, ``bytes`` + ``crc32c``) is whole and points at every inner chunk inside the array's shape.
- :func:`missing_files`: the storage chunks that are not on disk (a ``stat`` per file: cheap, done
  whenever a store is opened).
- :func:`scan_array`: the full scan (``robodual dataset validate``): every file checked and every chunk
  decoded.
- :class:`CheckedArray`: what :meth:`ZarrDataset.array` returns: reads check each file they touch once per
  process (the shard index: a few kB) and refuse, naming the array and chunk, instead of serving fill
  values; decoding errors name the array and chunk too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from robodual_core.errors import RobodualError

EMPTY = np.uint64(2**64 - 1)
# A layout of more files than this is checked against the files on disk before its chunks are visited one by one;
# a store written before every chunk was stored may lack all-zero chunks, but not SPARSE_RATIO times its files
SCAN_FILES = 100_000
SPARSE_RATIO = 1000


def _local_root(arr: Any) -> Path | None:
    """The folder of a zarr array on the local file system, or None (another kind of store)."""
    store_path = getattr(arr, "store_path", None)
    root = getattr(getattr(store_path, "store", None), "root", None)
    if root is None:
        return None
    return Path(root) / store_path.path if store_path.path else Path(root)


class ChunkLayout:
    """Files and chunks of one zarr v3 array (``name`` is its path in the store, e.g. ``data/action``)."""

    def __init__(self, arr: Any, name: str):
        from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec

        self.arr, self.name = arr, name
        self.folder = _local_root(arr)
        md = arr.metadata
        self.shape = tuple(int(s) for s in arr.shape)
        self.outer = tuple(int(c) for c in md.chunk_grid.chunk_shape)
        self.grid = tuple(-(-s // c) if s else 0 for s, c in zip(self.shape, self.outer, strict=True))
        self.encode = md.encode_chunk_key
        codec = md.codecs[0] if len(md.codecs) == 1 else None
        self.sharded = isinstance(codec, ShardingCodec)
        self.index_ok = False
        if self.sharded:
            self.inner = tuple(int(c) for c in codec.chunk_shape)
            self.per_shard = tuple(o // i for o, i in zip(self.outer, self.inner, strict=True))
            index_codecs = list(codec.index_codecs)
            self.crc = bool(index_codecs) and isinstance(index_codecs[-1], Crc32cCodec)
            plain = index_codecs[:-1] if self.crc else index_codecs
            little = (len(plain) == 1 and isinstance(plain[0], BytesCodec)
                      and getattr(getattr(plain[0], "endian", None), "value", "little") == "little")
            self.index_ok = little
            self.at_end = getattr(codec.index_location, "value", str(codec.index_location)) == "end"
            self.index_bytes = 16 * int(np.prod(self.per_shard, dtype=np.int64)) + (4 if self.crc else 0)

    # -- files -------------------------------------------------------------------------------------
    @property
    def steps_per_file(self) -> int:
        return self.outer[0] if self.outer else 1

    def files_of_steps(self, lo: int, hi: int) -> range:
        """Indices (along time) of the files holding steps ``lo .. hi - 1``."""
        if not self.grid or self.grid[0] == 0 or hi <= lo:
            return range(0)
        return range(max(0, lo) // self.steps_per_file, min(self.grid[0], -(-hi // self.steps_per_file)))

    @property
    def num_files(self) -> int:
        """Storage chunk files the declared shape implies (a Python int: no overflow)."""
        n = 1
        for g in self.grid:
            n *= int(g)
        return n

    def files_on_disk(self, stop: int) -> int:
        """Files in the array's folder other than its metadata, counted up to ``stop``."""
        if self.folder is None:
            return stop
        count = 0
        for _, _, files in os.walk(self.folder):
            count += sum(1 for f in files if f != "zarr.json")
            if count >= stop:
                break
        return count

    def size_problem(self, strict: bool = True) -> str | None:
        """A declared shape far beyond what is stored (a hostile or damaged ``zarr.json``: ``[10**13, 3]``, or
        frames of 100000 x 100000), reported without visiting its chunks one by one, which would take hours or
        exhaust memory; None when the files on disk can account for it."""
        n = self.num_files
        if n <= SCAN_FILES:
            return None
        on_disk = self.files_on_disk(n if strict else n // SPARSE_RATIO + 1)
        if (strict and on_disk >= n) or (not strict and on_disk * SPARSE_RATIO >= n):
            return None
        return (f"{self.name}: its metadata declares shape {list(self.shape)}, {n} chunk files, but {on_disk} are on "
                "disk; expected the shape the store was written with (a damaged or hostile zarr.json)")

    def all_coords(self) -> list[tuple[int, ...]]:
        if any(g == 0 for g in self.grid):
            return []
        return [tuple(int(c) for c in idx) for idx in np.ndindex(*self.grid)]

    def coords_of_file(self, i: int) -> list[tuple[int, ...]]:
        """Every file coordinate whose first index is ``i`` (one, for robodual's layouts)."""
        if any(g == 0 for g in self.grid[1:]):
            return []
        return [(i, *(int(c) for c in rest)) for rest in np.ndindex(*self.grid[1:])]

    def key(self, coords: tuple[int, ...]) -> str:
        return self.encode(coords)

    def describe(self, coords: tuple[int, ...]) -> str:
        lo = coords[0] * self.steps_per_file
        hi = min(self.shape[0], lo + self.steps_per_file) - 1 if self.shape else lo
        kind = "shard" if self.sharded else "chunk"
        where = str(coords[0]) if not any(coords[1:]) else "(" + ", ".join(map(str, coords)) + ")"
        return f"{self.name}: {kind} {where} (file '{self.name}/{self.key(coords)}', steps {lo}..{hi})"

    def _index(self, path: Path, size: int) -> tuple[np.ndarray | None, str | None]:
        """The shard index ``[*per_shard, 2]`` (offset, nbytes) of one file, or a problem."""
        if size < self.index_bytes:
            return None, f"is truncated: {size} bytes, less than its {self.index_bytes}-byte shard index"
        with open(path, "rb") as f:
            if self.at_end:
                f.seek(size - self.index_bytes)
            raw = f.read(self.index_bytes)
        body = raw[:-4] if self.crc else raw
        if self.crc:
            import google_crc32c

            if np.uint32(google_crc32c.value(body)).tobytes() != raw[-4:]:
                return None, f"is truncated or corrupt: its shard index fails its crc32c checksum ({size} bytes on disk)"
        return np.frombuffer(body, dtype="<u8").reshape(*self.per_shard, 2), None

    def _inner_in_shape(self, coords: tuple[int, ...]) -> np.ndarray:
        """Mask ``[*per_shard]`` of the inner chunks of one shard that lie inside the array's shape."""
        mask = np.ones(self.per_shard, dtype=bool)
        for d, (c, p, n, s) in enumerate(zip(coords, self.per_shard, self.inner, self.shape, strict=True)):
            inside = (c * p + np.arange(p)) * n < s
            mask &= inside.reshape([-1 if i == d else 1 for i in range(len(self.per_shard))])
        return mask

    def inspect(self, coords: tuple[int, ...]) -> tuple[str | None, list[tuple[int, int]]]:
        """``(problem, missing)`` of one storage chunk's file: ``problem`` names a missing or empty file, a
        broken shard index or an inner chunk lying outside the file (else None); ``missing`` lists the step
        ranges ``(lo, hi)`` whose chunks are not stored (the whole file's, or inner chunks of a shard) and is
        empty when the file is broken otherwise."""
        if self.folder is None:
            return None, []
        path = self.folder / self.key(coords)
        lo = coords[0] * self.steps_per_file
        whole = [(lo, min(self.shape[0], lo + self.steps_per_file))]
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            return f"{self.describe(coords)} is missing: its steps would read as zeros", whole
        except OSError as exc:
            return f"{self.describe(coords)} cannot be read ({type(exc).__name__}: {exc})", []
        if size == 0:
            return f"{self.describe(coords)} is empty (0 bytes): truncated", []
        if not self.sharded or not self.index_ok:
            return None, []
        index, problem = self._index(path, size)
        if index is None:
            return f"{self.describe(coords)} {problem}", []
        inside = self._inner_in_shape(coords)
        offset, nbytes = index[..., 0], index[..., 1]
        empty = (offset == EMPTY) & (nbytes == EMPTY) & inside
        data_lo = 0 if self.at_end else self.index_bytes
        data_hi = size - self.index_bytes if self.at_end else size
        stored = inside & ~((offset == EMPTY) & (nbytes == EMPTY))
        outside = stored & ((offset < data_lo) | (offset > data_hi) | (nbytes > data_hi - np.minimum(offset, data_hi)))
        if outside.any():  # broken: reported before any missing chunk
            inner = tuple(int(i) for i in np.argwhere(outside)[0])
            chunk = coords[0] * self.per_shard[0] + inner[0]
            lo_b, n_b = int(offset[inner]), int(nbytes[inner])
            return (f"{self.describe(coords)}: chunk {chunk} (step {chunk * self.inner[0]}) lies outside the file "
                    f"(bytes {lo_b}..{lo_b + n_b} of {size}): truncated or corrupt"), []
        missing = []
        for inner in np.argwhere(empty):
            first = (coords[0] * self.per_shard[0] + int(inner[0])) * self.inner[0]
            missing.append((first, min(self.shape[0], first + self.inner[0])))
        if not missing:
            return None, []
        chunk = missing[0][0] // self.inner[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        return (f"{self.describe(coords)}: chunk {chunk} (step {missing[0][0]}) is missing from the shard{more}: it "
                "would read as zeros"), missing

    def check_file(self, coords: tuple[int, ...], strict: bool = True) -> str | None:
        """A problem of one storage chunk's file, or None; ``strict=False`` accepts chunks that are not
        stored (zarr's fill value: a store whose writer skipped chunks equal to it)."""
        problem, missing = self.inspect(coords)
        return None if missing and not strict else problem


def layout_of(arr: Any, name: str) -> ChunkLayout | None:
    """The :class:`ChunkLayout` of a zarr v3 array, or None when its metadata is of another kind."""
    try:
        return ChunkLayout(arr, name)
    except (AttributeError, TypeError, ValueError):
        return None


def missing_files(arr: Any, name: str, limit: int = 3, strict: bool = True) -> list[str]:
    """Up to ``limit`` storage chunks of ``arr`` that are missing (``strict``) or empty (no shard index is
    read)."""
    layout = layout_of(arr, name)
    if layout is None or layout.folder is None:
        return []
    too_big = layout.size_problem(strict)
    if too_big:
        return [too_big]
    problems = []
    for coords in layout.all_coords():
        path = layout.folder / layout.key(coords)
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            if strict:
                problems.append(f"{layout.describe(coords)} is missing: its steps would read as zeros")
        else:
            if size == 0:
                problems.append(f"{layout.describe(coords)} is empty (0 bytes): truncated")
        if len(problems) >= limit:
            break
    return problems


def scan_array(arr: Any, name: str, strict: bool = True, limit: int = 5) -> list[str]:
    """Every file of ``arr`` checked and every chunk decoded; up to ``limit`` problems.

    ``strict=False`` (arrays outside ``data/`` and ``meta/``, which other writers may leave sparse, and
    stores written before every chunk was stored) reports only files that exist but are broken.
    """
    layout = layout_of(arr, name)
    problems: list[str] = []
    if layout is None:
        try:
            np.asarray(arr[...])
        except Exception as exc:
            problems.append(f"{name}: cannot be decoded ({type(exc).__name__}: {exc})")
        return problems
    too_big = layout.size_problem(strict)
    if too_big:
        return [too_big]
    for coords in layout.all_coords():
        problem = layout.check_file(coords, strict=strict)
        if problem is None:
            region = tuple(slice(c * o, min(s, (c + 1) * o)) for c, o, s in zip(coords, layout.outer, layout.shape,
                                                                                strict=True))
            try:
                np.asarray(arr[region])
            except Exception as exc:
                problem = f"{layout.describe(coords)} cannot be decoded ({type(exc).__name__}: {exc})"
        if problem:
            problems.append(problem)
            if len(problems) >= limit:
                problems.append(f"{name}: stopped after {limit} damaged chunks")
                break
    return problems


def _steps(sel: Any, n: int) -> np.ndarray | tuple[int, int] | None:
    """The first-axis steps a selection reads: ``(lo, hi)`` for a range, an index array, or None (all)."""
    first = sel[0] if isinstance(sel, tuple) and sel else sel
    if first is Ellipsis or (isinstance(sel, tuple) and not sel):
        return None
    if isinstance(first, slice):
        start, stop, step = first.indices(n)
        if step == 1:
            return (start, max(start, stop))
        return np.arange(start, stop, step)
    if isinstance(first, (int, np.integer)):
        i = int(first) + (n if int(first) < 0 else 0)
        return (i, i + 1)
    idx = np.asarray(first)
    if idx.dtype == bool:
        return np.flatnonzero(idx)
    return np.where(idx < 0, idx + n, idx).astype(np.int64).ravel()


class CheckedArray:
    """A read-only zarr array that refuses missing or broken chunks (see the module docstring).

    Attributes (``shape``, ``dtype``, ``chunks``, ``shards``, ...) are the zarr array's. Each storage
    chunk a read touches is checked once per process.
    """

    def __init__(self, arr: Any, name: str, strict: bool = True, store: str | Path | None = None):
        self._arr = arr
        self._name = name
        self._store = f"dataset '{store}': " if store is not None else ""
        self._strict = strict
        self._layout = layout_of(arr, name)
        self._checked: set[int] = set()
        self._pid = os.getpid()

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._arr, attr)

    def __len__(self) -> int:
        return int(self._arr.shape[0])

    def __array__(self, dtype=None, copy=None):
        x = self[...]
        return x.astype(dtype) if dtype is not None else x

    def _verify(self, files: Any) -> None:
        layout = self._layout
        if layout is None:
            return
        if self._pid != os.getpid():
            self._checked, self._pid = set(), os.getpid()
        for i in files:
            i = int(i)
            if i in self._checked:
                continue
            for coords in layout.coords_of_file(i):
                problem = layout.check_file(coords, strict=self._strict)
                if problem:
                    raise RobodualError(f"{self._store}{problem}; refusing to read it (run `robodual dataset "
                                        "validate` for every damaged chunk)")
            self._checked.add(i)

    def __getitem__(self, sel: Any) -> Any:
        n = int(self._arr.shape[0]) if self._arr.shape else 0
        layout = self._layout
        if layout is not None and self._arr.shape:
            steps = _steps(sel, n)
            if steps is None:
                self._verify(range(layout.grid[0]))
            elif isinstance(steps, tuple):
                self._verify(layout.files_of_steps(*steps))
            elif steps.size:
                valid = steps[(steps >= 0) & (steps < n)]
                self._verify(np.unique(valid // layout.steps_per_file))
        try:
            return self._arr[sel]
        except (IndexError, TypeError, RobodualError):
            raise
        except Exception as exc:
            where = self._where(sel, n)
            raise RobodualError(f"{self._store}{self._name}: {where} cannot be decoded ({type(exc).__name__}: {exc}); the "
                                "store is damaged (run `robodual dataset validate` for every damaged chunk)") from exc

    def _where(self, sel: Any, n: int) -> str:
        """The storage chunk a failed read could not decode (each touched one is tried alone)."""
        layout = self._layout
        steps = _steps(sel, n)
        if layout is None:
            return "a chunk"
        if steps is None:
            steps = (0, n)
        lo, hi = steps if isinstance(steps, tuple) else (int(steps.min()), int(steps.max()) + 1)
        kind = "shard" if layout.sharded else "chunk"
        for i in layout.files_of_steps(lo, hi):
            for coords in layout.coords_of_file(i):
                region = tuple(slice(c * o, min(s, (c + 1) * o))
                               for c, o, s in zip(coords, layout.outer, layout.shape, strict=True))
                try:
                    self._arr[region]
                except Exception:
                    first, last = region[0].start, region[0].stop - 1
                    return f"{kind} {i} (file '{self._name}/{layout.key(coords)}', steps {first}..{last})"
        return f"steps {lo}..{hi - 1}"

    def __repr__(self) -> str:
        return f"CheckedArray({self._name!r}, shape={self._arr.shape}, dtype={self._arr.dtype})"
