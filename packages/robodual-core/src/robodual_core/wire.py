"""The wire format of ``robodual serve``: msgpack with numpy arrays as (dtype, shape, bytes).

Never pickle: an array is ``{"__ndarray__": true, "dtype": "<f4", "shape": [..], "data": bytes}`` and
object dtypes are refused both ways. Importable without torch (clients on a robot computer).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from robodual_core.errors import RobodualError, require

MAX_DIMS = 8


class WireError(RobodualError):
    """A message that does not follow the protocol; the reply names what is wrong."""


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise WireError("arrays of dtype object cannot be sent")
        arr = np.ascontiguousarray(obj)
        return {"__ndarray__": True, "dtype": arr.dtype.str, "shape": list(arr.shape), "data": arr.tobytes()}
    if isinstance(obj, np.generic):
        return obj.item()
    raise WireError(f"cannot encode a value of type {type(obj).__name__}")


def _hook(obj: dict) -> Any:
    if obj.get("__ndarray__") is True:
        try:
            dtype = np.dtype(obj["dtype"])
            shape = tuple(int(s) for s in obj["shape"])
            data = obj["data"]
        except (KeyError, TypeError, ValueError) as exc:
            raise WireError(f"malformed array: {exc}") from None
        if dtype.hasobject or dtype.kind not in "biufc":
            raise WireError(f"array dtype {obj['dtype']!r} is not allowed (numeric dtypes only)")
        if len(shape) > MAX_DIMS or any(s < 0 for s in shape):
            raise WireError(f"array shape {list(shape)} is not allowed")
        if not isinstance(data, bytes) or len(data) != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise WireError(f"array of dtype {dtype} and shape {list(shape)} needs "
                            f"{int(np.prod(shape, dtype=np.int64)) * dtype.itemsize} bytes, found "
                            f"{len(data) if isinstance(data, bytes) else type(data).__name__}")
        return np.frombuffer(data, dtype=dtype).reshape(shape).copy()  # writable, owning its memory
    return obj


def pack(message: dict[str, Any]) -> bytes:
    msgpack = require("msgpack", "pip install 'robodual-core[serve]'")
    return msgpack.packb(message, default=_default, use_bin_type=True)


def unpack(data: bytes | str) -> dict[str, Any]:
    msgpack = require("msgpack", "pip install 'robodual-core[serve]'")
    if isinstance(data, str):
        raise WireError("text frames are not accepted; send msgpack in binary frames")
    try:
        message = msgpack.unpackb(data, object_hook=_hook, raw=False, strict_map_key=True)
    except WireError:
        raise
    except Exception as exc:
        raise WireError(f"not a msgpack message ({type(exc).__name__}: {exc})") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise WireError("a message must be a map with a string 'type'")
    return message
