"""Load pickled ``.npy`` files (CALVIN's annotation and scene files) without running code.

``np.load(allow_pickle=True)`` would import and call anything a crafted file names. Here the pickle
stream is read by an ``Unpickler`` whose ``find_class`` admits only what a numpy array needs to be rebuilt
(``numpy.ndarray``, ``numpy.dtype``, ``_reconstruct``, numpy scalars) and a few inert builtins; plain
containers, strings and numbers need no globals at all. Anything else is refused with the name it asked for.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from robodual_core.errors import RobodualError

ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),  # how protocol-2 pickles spell bytes
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "complex"),
    ("collections", "OrderedDict"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only plain containers, strings, numbers and numpy arrays."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global '{module}.{name}': only plain containers, strings, "
                                     "numbers and numpy arrays are allowed")


def safe_loads(data: bytes) -> Any:
    return RestrictedUnpickler(io.BytesIO(data)).load()


def load_npy(path: str | Path) -> Any:
    """Load a ``.npy`` file; object arrays go through :class:`RestrictedUnpickler`.

    Returns the array, or the Python object for a 0-d object array (what ``np.load(...).item()`` gives).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            if not dtype.hasobject:
                f.seek(0)
                return np.load(f, allow_pickle=False)
            obj = safe_loads(f.read())
    except FileNotFoundError:
        raise RobodualError(f"'{path}' does not exist") from None
    except pickle.UnpicklingError as exc:
        if str(exc).startswith("refusing"):
            raise RobodualError(f"'{path}': {exc}") from exc
        raise RobodualError(f"'{path}' is not a readable .npy file (truncated or corrupted?): {exc}") from exc
    except Exception as exc:
        raise RobodualError(f"'{path}' is not a readable .npy file ({type(exc).__name__}: {exc})") from exc
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject and obj.shape == ():
        return obj.item()
    return obj
