"""The wire protocol of ``robodual serve``: msgpack with numpy arrays as (dtype, shape, bytes).

Never pickle: an array is ``{"__ndarray__": true, "dtype": "<f4", "shape": [..], "data": bytes}``; only
numeric dtypes travel, and a declared size is checked against the bytes present before anything is
allocated. Both sides use this module: the server to decode observations and encode actions, the robot
to do the reverse.

Messages (each a msgpack map with a string ``type``; requests carry ``protocol``):

- server -> client on connect: ``{"type": "metadata", "protocol": 1, "observation_spec": {key: {"shape",
  "dtype"}}, "action_dim", "action_horizon", "control_rate_hz", "mode", "policy", "max_message_bytes"}``;
- ``{"type": "reset"}`` -> ``{"type": "reset_ok"}``;
- ``{"type": "step", "observation": {key: array}, "instruction": str}`` ->
  ``{"type": "action", "action": float32 array, "timing": {"policy_s", "server_s"}}``;
- ``{"type": "metadata"}`` -> the metadata again;
- anything wrong -> ``{"type": "error", "error": "..."}``.

Request ids: a request may carry ``"id"`` (an integer in 0..2**53); the server echoes it in its reply (``action``,
``reset_ok``, ``metadata`` or ``error``) and announces this with ``"request_ids": true`` in its metadata. A
client that gave up waiting for a reply (a timeout) matches the next replies to their requests and drops the
late one, so a late action is never taken for the current step's. An ``id`` of another type is refused (an
error reply without an id). Requests without an id are answered without one, as before.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from robodual_client.errors import WireError

PROTOCOL_VERSION = 1
MAX_REQUEST_ID = 2**53  # exact in a double: any client language can count to it
MAX_DIMS = 8
MAX_OBSERVATION_KEYS = 64
NUMERIC_KINDS = "biufc"


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in NUMERIC_KINDS:
            raise WireError(f"arrays of dtype {obj.dtype} cannot be sent (numeric dtypes only; dtype object never)")
        arr = np.ascontiguousarray(obj)
        return {"__ndarray__": True, "dtype": arr.dtype.str, "shape": list(arr.shape), "data": arr.tobytes()}
    if isinstance(obj, np.generic):
        return obj.item()
    raise WireError(f"cannot encode a value of type {type(obj).__name__} (arrays, numbers, strings, lists, maps)")


def _decode_array(obj: dict, max_bytes: int | None) -> np.ndarray:
    dtype_name, shape, data = obj.get("dtype"), obj.get("shape"), obj.get("data")
    if not isinstance(dtype_name, str):
        raise WireError(f"array 'dtype' must be a string such as '<f4', found {type(dtype_name).__name__}")
    try:
        dtype = np.dtype(dtype_name)
    except Exception:
        raise WireError(f"array dtype {dtype_name[:40]!r} is not a numpy dtype") from None
    if dtype.kind not in NUMERIC_KINDS or dtype.hasobject:
        raise WireError(f"array dtype {dtype_name[:40]!r} is not allowed (numeric dtypes only)")
    if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape):
        raise WireError(f"array 'shape' must be a list of integers, found {str(shape)[:80]}")
    if len(shape) > MAX_DIMS or any(s < 0 for s in shape):
        raise WireError(f"array shape {shape[:MAX_DIMS + 1]} is not allowed (at most {MAX_DIMS} dimensions, "
                        "none negative)")
    need = math.prod(shape) * dtype.itemsize  # Python ints: a huge declared shape cannot overflow to 0
    if max_bytes is not None and need > max_bytes:
        raise WireError(f"array of dtype {dtype} and shape {shape} declares {need} bytes, more than the limit of "
                        f"{max_bytes} bytes")
    if not isinstance(data, bytes):
        raise WireError(f"array 'data' must be bytes, found {type(data).__name__}")
    if len(data) != need:
        raise WireError(f"array of dtype {dtype} and shape {shape} needs {need} bytes, found {len(data)}")
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()  # writable, owning its memory


def pack(message: dict[str, Any]) -> bytes:
    """Encode one message (a map); arrays become (dtype, shape, bytes)."""
    import msgpack

    if not isinstance(message, dict):
        raise WireError(f"a message must be a map, found {type(message).__name__}")
    return msgpack.packb(message, default=_default, use_bin_type=True)


def unpack(data: bytes | str, max_bytes: int | None = None) -> dict[str, Any]:
    """Decode one message; anything that is not a well-formed map with a string ``type`` is a WireError."""
    import msgpack

    if isinstance(data, str):
        raise WireError("text frames are not accepted; send msgpack in binary frames")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise WireError(f"a message must be bytes, found {type(data).__name__}")
    if max_bytes is not None and len(data) > max_bytes:
        raise WireError(f"message of {len(data)} bytes exceeds the limit of {max_bytes} bytes")

    def hook(obj: dict) -> Any:
        return _decode_array(obj, max_bytes) if obj.get("__ndarray__") is True else obj

    try:
        message = msgpack.unpackb(data, object_hook=hook, raw=False, strict_map_key=True)
    except WireError:
        raise
    except Exception as exc:
        raise WireError(f"not a msgpack message ({type(exc).__name__}: {str(exc)[:120]})") from None
    if not isinstance(message, dict):
        raise WireError(f"a message must be a map with a string 'type', found a {type(message).__name__}")
    if not isinstance(message.get("type"), str):
        found = "no 'type'" if "type" not in message else f"'type' of {type(message['type']).__name__}"
        raise WireError(f"a message must be a map with a string 'type', found {found}")
    return message


def check_protocol(message: dict[str, Any]) -> None:
    """Refuse a message of another protocol version (a missing version means this one)."""
    version = message.get("protocol", PROTOCOL_VERSION)
    if isinstance(version, bool) or version != PROTOCOL_VERSION:
        raise WireError(f"'protocol' is {str(version)[:40]}, but this side speaks robodual protocol "
                        f"{PROTOCOL_VERSION}: install matching versions of robodual-client and the server")


def _finite(name: str, value: np.ndarray, what: str) -> None:
    if value.dtype.kind in "fc" and not np.isfinite(value).all():
        nan, inf = int(np.isnan(value).sum()), int(np.isinf(value).sum())
        raise WireError(f"{name} contains {nan} NaN and {inf} Inf of {value.size} values; {what}")


def check_observation(observation: Any, spec: dict[str, dict[str, Any]] | None = None) -> dict[str, np.ndarray]:
    """Validate an observation (and against the policy's spec when given); the error names the key."""
    if not isinstance(observation, dict):
        raise WireError(f"'observation' must be a map of key -> array, found {type(observation).__name__}")
    if len(observation) > MAX_OBSERVATION_KEYS:
        raise WireError(f"'observation' has {len(observation)} keys; at most {MAX_OBSERVATION_KEYS} are accepted")
    for key, value in observation.items():
        if not isinstance(key, str):
            raise WireError(f"observation keys must be strings, found {type(key).__name__} {str(key)[:40]!r}")
        if not isinstance(value, np.ndarray):
            raise WireError(f"observation['{key}'] must be an array, found {type(value).__name__}")
    for key, want in (spec or {}).items():
        if key not in observation:
            raise WireError(f"observation is missing key '{key}' (expected {want['dtype']} {list(want['shape'])}); "
                            f"received keys: {sorted(observation)}")
        value = observation[key]
        if list(value.shape) != list(want["shape"]):
            raise WireError(f"observation['{key}'] has shape {list(value.shape)}, expected {list(want['shape'])}")
        if value.dtype != np.dtype(want["dtype"]):
            raise WireError(f"observation['{key}'] has dtype {value.dtype}, expected {want['dtype']}")
    for key, value in observation.items():
        _finite(f"observation['{key}']", value, "refused (a policy fed NaN/Inf returns NaN actions)")
    return observation


def check_action(action: Any, action_dim: int | None = None, source: str = "the policy") -> np.ndarray:
    """The action as a finite float32 array; anything else (NaN, Inf, garbage) is a WireError, never sent."""
    try:
        with np.errstate(over="ignore"):  # a value beyond float32 becomes Inf and is refused below
            arr = np.asarray(action, dtype=np.float32)
    except (TypeError, ValueError, OverflowError):
        raise WireError(f"{source} returned {type(action).__name__}, not a numeric action array") from None
    if arr.ndim == 0 or arr.size == 0:
        raise WireError(f"{source} returned an action of shape {list(arr.shape)}; expected a vector")
    if action_dim is not None and arr.shape[-1] != action_dim:
        raise WireError(f"{source} returned an action of shape {list(arr.shape)}; expected {action_dim} values")
    _finite(f"the action from {source}", arr, "it is not sent (a robot would execute it)")
    return arr


def check_request_id(message: dict[str, Any]) -> int | None:
    """The request's ``id`` (None when it has none); anything but an integer in 0..2**53 is a WireError."""
    if "id" not in message:
        return None
    rid = message["id"]
    if isinstance(rid, bool) or not isinstance(rid, int) or not 0 <= rid <= MAX_REQUEST_ID:
        shown = str(rid)[:40] if isinstance(rid, int | float | str) else type(rid).__name__
        raise WireError(f"request 'id' must be an integer in 0..{MAX_REQUEST_ID}, found {shown}")
    return rid


def encode_observation(observation: dict[str, Any]) -> dict[str, np.ndarray]:
    """Arrays ready for :func:`step_request` (keys must be strings)."""
    if not isinstance(observation, dict):
        raise WireError(f"an observation must be a dict of key -> array, found {type(observation).__name__}")
    out = {}
    for key, value in observation.items():
        if not isinstance(key, str):
            raise WireError(f"observation keys must be strings, found {type(key).__name__}")
        out[key] = np.asarray(value)
    return out


def _with_id(message: dict[str, Any], request_id: int | None) -> dict[str, Any]:
    return message if request_id is None else {**message, "id": request_id}


def reset_request(request_id: int | None = None) -> dict[str, Any]:
    return _with_id({"type": "reset", "protocol": PROTOCOL_VERSION}, request_id)


def step_request(observation: dict[str, Any], instruction: str, request_id: int | None = None) -> dict[str, Any]:
    if not isinstance(instruction, str):
        raise WireError(f"the instruction must be a string, found {type(instruction).__name__}")
    return _with_id({"type": "step", "protocol": PROTOCOL_VERSION, "observation": encode_observation(observation),
                     "instruction": instruction}, request_id)


def action_reply(action: np.ndarray, timing: dict[str, float]) -> dict[str, Any]:
    return {"type": "action", "action": action, "timing": timing}


def error_reply(text: str) -> dict[str, Any]:
    return {"type": "error", "error": text}
