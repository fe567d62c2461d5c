"""Where a command may write: the one check every ``--out`` / ``--overwrite`` goes through.

Rules (issue 28):

- An output is never an input, never lies inside one and never holds one (a store split into its own
  folder, a run folder holding its ``--dataset``). ``hosts`` are inputs whose sub-folders are legitimate
  outputs (``RUN/eval/offline`` inside the policy's run folder) but which an output may still not be or hold.
- A folder is expected where a folder is written and a file where a file is written; the refusal says what
  the path is instead (a file, a folder, a FIFO, a device).
- ``--overwrite`` replaces only what robodual wrote: a robodual Zarr store (its root attributes are the
  marker), a folder holding the marker file :data:`MARKER` (written by :func:`mark_output`), an empty folder,
  or an output whose kind has its own recogniser (``legacy``: e.g. a run folder written before the marker).

Every refusal is one :class:`~robodual_core.errors.RobodualError` line naming the flag and the path.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

from robodual_core.errors import RobodualError

MARKER = ".robodual"  # a small JSON file in every output folder robodual creates: {"written_by": "robodual", ...}
EXPECT = ("folder", "store", "file")


def describe_path(path: str | Path) -> str:
    """What is at ``path``, in words: 'nothing', 'a folder', 'a file', 'a FIFO', 'a character device', ..."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "nothing (it does not exist)"
    except NotADirectoryError:
        return "nothing (a parent is a file, not a folder)"
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISREG(mode):
        return "a file"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file or folder"


def require_regular_file(path: str | Path, what: str) -> Path:
    """``path`` if it is a regular file, else a one-line error saying what it is instead (missing, a folder,
    a FIFO, a device): reading a FIFO blocks and a device never ends."""
    path = Path(path)
    found = describe_path(path)
    if found != "a file":
        raise RobodualError(f"{what} '{path}' is {found}; expected a regular file")
    return path


def _real(path: str | Path) -> Path:
    return Path(os.path.realpath(os.path.abspath(path)))


def _relation(out: Path, inp: Path) -> str | None:
    if out == inp:
        return "is"
    if inp in out.parents:
        return "lies inside"
    if out in inp.parents:
        return "holds"
    return None


def is_robodual_store(path: str | Path) -> bool:
    """A folder whose ``zarr.json`` carries robodual's root attributes (``schema_version`` and ``modalities``)."""
    try:
        meta = json.loads((Path(path) / "zarr.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    attrs = meta.get("attributes") if isinstance(meta, dict) else None
    return isinstance(attrs, dict) and "schema_version" in attrs and isinstance(attrs.get("modalities"), dict)


def marker_of(path: str | Path) -> dict | None:
    """The marker robodual left in folder ``path`` (:func:`mark_output`), or None."""
    try:
        data = json.loads((Path(path) / MARKER).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("written_by") == "robodual" else None


def written_by_robodual(path: str | Path, legacy: Callable[[Path], bool] | None = None) -> bool:
    """Whether ``path`` is something robodual wrote (and so ``--overwrite`` may replace it)."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        return False
    if not any(path.iterdir()):
        return True  # an empty folder: nothing to lose
    return is_robodual_store(path) or marker_of(path) is not None or bool(legacy and legacy(path))


def mark_output(folder: str | Path, kind: str) -> None:
    """Leave the marker that lets a later ``--overwrite`` recognise ``folder`` as robodual's."""
    from robodual_core.io import atomic_write_json

    atomic_write_json(Path(folder) / MARKER, {"written_by": "robodual", "kind": kind})


def check_output(path: str | Path, *, flag: str = "--out", expect: str = "folder", inputs: Iterable = (),
                 hosts: Iterable = (), overwrite: bool = False, legacy: Callable[[Path], bool] | None = None,
                 what: str | None = None) -> Path:
    """Refuse (one line) an output ``path`` that is, lies inside or holds one of ``inputs`` (or is or holds one
    of ``hosts``); that is not the kind ``expect`` says ("folder", "store" or "file"); or that ``overwrite``
    would replace while robodual did not write it (``what`` names the kind of output in that refusal, e.g.
    "a run folder"). Returns ``path`` unchanged."""
    if expect not in EXPECT:
        raise ValueError(f"expect must be one of {EXPECT}")
    path = Path(path)
    out = _real(path)
    for inp, inside_ok in [*((p, False) for p in inputs if p is not None),
                           *((p, True) for p in hosts if p is not None)]:
        rel = _relation(out, _real(inp))
        if rel is not None and not (inside_ok and rel == "lies inside"):
            raise RobodualError(f"{flag} '{path}' {rel} the input '{inp}'; expected an output apart from the inputs "
                                "(choose another path)")
    for parent in out.parents:  # a file where the output's folder must go
        if parent.exists():
            if not parent.is_dir():
                raise RobodualError(f"{flag} '{path}': '{parent}' is {describe_path(parent)}; expected a folder")
            break
    if not os.path.lexists(path):
        return path
    found = describe_path(path)
    if expect == "file":
        if found != "a file":
            raise RobodualError(f"{flag} '{path}' is {found}; expected a file path to write")
        return path
    if found != "a folder":
        raise RobodualError(f"{flag} '{path}' is {found}; expected a folder{' (a Zarr store)' if expect == 'store' else ''}")
    if overwrite and not written_by_robodual(path, legacy):
        what = what or ("a zarr store" if expect == "store" else "an output folder")
        raise RobodualError(f"--overwrite refuses to delete '{path}': it is not {what} robodual wrote; remove it "
                            f"yourself or choose another {flag}")
    return path


def is_run_folder(path: Path) -> bool:
    """A training run folder written before the marker: its config.json is a resolved robodual training config."""
    try:
        config = json.loads((Path(path) / "config.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(config, dict) and isinstance(config.get("model"), dict) and isinstance(config.get("trainer"), dict)


def prepare_run_dir(out: str | Path, *, inputs: Iterable = (), overwrite: bool = False, flag: str = "--out") -> Path:
    """The run folder of ``robodual train ...``: never an input (the ``--dataset``), inside one or holding one;
    with ``overwrite``, an existing run robodual wrote is deleted (anything else is refused). Call
    :func:`mark_output` (kind "run") once the folder is created."""
    out = Path(out)
    check_output(out, flag=flag, expect="folder", inputs=inputs, overwrite=overwrite, legacy=is_run_folder,
                 what="a run folder")
    if overwrite and os.path.lexists(out):
        shutil.rmtree(out)
    return out


def remove_output(path: str | Path, *, flag: str = "--out", legacy: Callable[[Path], bool] | None = None,
                  what: str | None = None) -> None:
    """Delete output folder ``path`` for ``--overwrite``, only if robodual wrote it (see :func:`check_output`)."""
    path = Path(path)
    if not os.path.lexists(path):
        return
    check_output(path, flag=flag, overwrite=True, legacy=legacy, what=what)
    shutil.rmtree(path)
