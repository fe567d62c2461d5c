"""Per-key normalizers built from dataset statistics; JSON-able so they travel with every checkpoint.

Modes (chosen per key in config):

- ``min_max``: ``2 (x - min) / (max - min) - 1`` into [-1, 1]; dimensions with ``max == min`` map to 0.
- ``mean_std``: ``(x - mean) / std``; dimensions with ``std == 0`` are only centred.
- ``q99``: OpenVLA's BOUNDS_Q99, ``clip(2 (x - q01) / (q99 - q01 + 1e-8) - 1, -1, 1)``; back with OpenVLA's
  ``0.5 (a + 1) (q99 - q01) + q01``.
- ``none``: identity.

An optional boolean ``mask`` per dimension (OpenVLA's ``norm_stats[...]["action"]["mask"]``) leaves the
dimensions where it is False as they are, both ways: OpenVLA keeps such a dimension (e.g. the gripper) in
its normalized units, ``np.where(mask, 0.5 (a + 1) (q99 - q01) + q01, a)``. Without one every dimension is
normalized.

Statistics keep the precision they are given in (``from_stats`` stores float32 unless told otherwise,
``from_dict`` float64) and arithmetic runs in the input's float dtype: a float64 input with float64
statistics gives OpenVLA's float64 result bit for bit.

``normalize`` / ``unnormalize`` accept numpy arrays or torch tensors (any leading dims; the statistics
broadcast over the last dimension, or over everything for scalar depth statistics).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from robodual_core.errors import RobodualError

MODES = ("min_max", "mean_std", "q99", "none")
EPS = 1e-8
_FIELDS = {"min_max": ("min", "max"), "mean_std": ("mean", "std"), "q99": ("q01", "q99"), "none": ()}


class Normalizer:
    """``{key: (mode, params)}``; build with :meth:`from_stats` or :meth:`from_dict`."""

    def __init__(self, entries: dict[str, tuple[str, dict[str, np.ndarray]]]):
        self.entries = entries

    @classmethod
    def from_stats(cls, stats: dict[str, Any], modes: dict[str, str], dtype: Any = np.float32) -> Normalizer:
        """``stats[key]`` holds the fields of ``modes[key]`` (and optionally ``mask``); ``dtype`` of the stored
        statistics (float64 keeps JSON statistics exact)."""
        entries: dict[str, tuple[str, dict[str, np.ndarray]]] = {}
        for key, mode in modes.items():
            if mode not in MODES:
                raise RobodualError(f"normalization mode for '{key}' is '{mode}'; expected one of {', '.join(MODES)}")
            if mode != "none" and key not in stats:
                raise RobodualError(f"cannot normalize '{key}' with '{mode}': the dataset has no statistics for it "
                                    f"(keys with statistics: {', '.join(sorted(stats)) or 'none'}); run "
                                    "`robodual dataset stats PATH --recompute`")
            params = {}
            for field in _FIELDS[mode]:
                if field not in stats[key]:
                    raise RobodualError(f"statistics of '{key}' have no '{field}' (needed by mode '{mode}')")
                params[field] = np.asarray(stats[key][field], dtype=dtype)
            if mode != "none" and stats[key].get("mask") is not None:
                params["mask"] = _mask(stats[key]["mask"], params, f"statistics of '{key}'")
            entries[key] = (mode, params)
        return cls(entries)

    def to_dict(self) -> dict[str, Any]:
        return {key: {"mode": mode, **{f: v.tolist() for f, v in params.items()}}
                for key, (mode, params) in self.entries.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalizer:
        entries = {}
        for key, spec in d.items():
            mode = spec.get("mode")
            if mode not in MODES:
                raise RobodualError(f"normalizer entry '{key}' has mode {mode!r}; expected one of {', '.join(MODES)}")
            missing = [f for f in _FIELDS[mode] if f not in spec]
            if missing:
                raise RobodualError(f"normalizer entry '{key}' (mode {mode}) lacks {', '.join(missing)}")
            params = {f: np.asarray(spec[f], dtype=np.float64) for f in _FIELDS[mode]}
            if mode != "none" and spec.get("mask") is not None:
                params["mask"] = _mask(spec["mask"], params, f"normalizer entry '{key}'")
            entries[key] = (mode, params)
        return cls(entries)

    @property
    def keys(self) -> list[str]:
        return sorted(self.entries)

    def mode(self, key: str) -> str:
        return self._entry(key)[0]

    def mask(self, key: str) -> np.ndarray | None:
        """The dimensions of ``key`` that are normalized (None: all of them)."""
        return self._entry(key)[1].get("mask")

    def _entry(self, key: str) -> tuple[str, dict[str, np.ndarray]]:
        if key not in self.entries:
            raise RobodualError(f"the normalizer has no key '{key}'; it normalizes: {', '.join(self.keys) or 'nothing'}")
        return self.entries[key]

    @staticmethod
    def _like(x: Any, v: np.ndarray) -> Any:
        if isinstance(x, np.ndarray):
            return v.astype(x.dtype if x.dtype.kind == "f" else np.float32, copy=False)
        import torch

        return torch.as_tensor(v, dtype=x.dtype if x.is_floating_point() else torch.float32, device=x.device)

    @staticmethod
    def _mask_like(x: Any, m: np.ndarray) -> Any:
        if isinstance(x, np.ndarray):
            return m
        import torch

        return torch.as_tensor(m, dtype=torch.bool, device=x.device)

    def _masked(self, p: dict[str, np.ndarray], x: Any, y: Any) -> Any:
        """``y`` where the mask is True, ``x`` (unchanged) elsewhere."""
        m = p.get("mask")
        return y if m is None else self._where(self._mask_like(x, m), y, x)

    @staticmethod
    def _clip(x: Any) -> Any:
        return np.clip(x, -1.0, 1.0) if isinstance(x, np.ndarray) else x.clamp(-1.0, 1.0)

    @staticmethod
    def _where(cond: Any, a: Any, b: Any) -> Any:
        if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
            return np.where(cond, a, b)
        import torch

        return torch.where(cond, a, b)

    def normalize(self, key: str, x: Any) -> Any:
        mode, p = self._entry(key)
        if mode == "none":
            return x
        if isinstance(x, np.ndarray) and x.dtype.kind != "f":
            x = x.astype(np.float32)
        elif not isinstance(x, np.ndarray) and not x.is_floating_point():
            x = x.float()
        if mode == "min_max":
            lo, hi = self._like(x, p["min"]), self._like(x, p["max"])
            span = hi - lo
            safe = self._where(span > EPS, span, span * 0 + 1)
            return self._masked(p, x, self._where(span > EPS, 2 * (x - lo) / safe - 1, x * 0))
        if mode == "mean_std":
            mean, std = self._like(x, p["mean"]), self._like(x, p["std"])
            return self._masked(p, x, (x - mean) / self._where(std > EPS, std, std * 0 + 1))
        lo, hi = self._like(x, p["q01"]), self._like(x, p["q99"])
        return self._masked(p, x, self._clip(2 * (x - lo) / (hi - lo + EPS) - 1))

    def unnormalize(self, key: str, x: Any) -> Any:
        mode, p = self._entry(key)
        if mode == "none":
            return x
        if mode == "min_max":
            lo, hi = self._like(x, p["min"]), self._like(x, p["max"])
            return self._masked(p, x, (x + 1) / 2 * (hi - lo) + lo)
        if mode == "mean_std":
            mean, std = self._like(x, p["mean"]), self._like(x, p["std"])
            return self._masked(p, x, x * self._where(std > EPS, std, std * 0 + 1) + mean)
        lo, hi = self._like(x, p["q01"]), self._like(x, p["q99"])
        return self._masked(p, x, (x + 1) / 2 * (hi - lo) + lo)  # OpenVLA's inverse: 0.5 (a + 1) (q99 - q01) + q01

    def __repr__(self) -> str:
        return f"Normalizer({', '.join(f'{k}: {m}' for k, (m, _) in sorted(self.entries.items()))})"


def _mask(value: Any, params: dict[str, np.ndarray], where: str) -> np.ndarray:
    """A boolean mask as long as the statistics' last dimension (one line naming ``where`` otherwise)."""
    m = np.asarray(value)
    if m.dtype != np.bool_ and not (m.dtype.kind in "iu" and set(np.unique(m).tolist()) <= {0, 1}):
        raise RobodualError(f"{where}: 'mask' must be booleans (true = normalized), found {m.dtype} values")
    m = m.astype(bool)
    dims = {v.shape[-1] for v in params.values() if v.ndim}
    if m.ndim != 1 or (dims and dims != {m.shape[0]}):
        raise RobodualError(f"{where}: 'mask' has shape {list(m.shape)}; expected one entry per dimension "
                            f"({', '.join(map(str, sorted(dims))) or '?'})")
    return m
