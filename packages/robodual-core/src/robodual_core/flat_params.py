"""Trained parameters laid out in one contiguous buffer per optimizer parameter group.

Each trained parameter's data and gradient become views into its group's buffer, so the optimizer step, the
EMA update and gradient clipping each run over one tensor per group instead of one per parameter. On the
CPU the demo-size specialist has ~150 small trained tensors: the step after backward (clipping, AdamW, EMA)
took 5.8 ms per-tensor and 3.5 ms flat, of a ~37 ms step (``robodual bench generalist`` reports
``flat_params_speedup``, a per-tensor trainer stepping in the same rotation).

Semantics: gradients are zeroed between steps, not set to None, so a trained parameter that gets no
gradient in a step is still moved by AdamW's moments and weight decay, as under DDP's gradient buckets
(a per-tensor optimizer skips it).

Checkpoints keep the per-parameter format: :meth:`FlatParameters.param_state` splits the flat optimizer
state into the state a per-parameter optimizer over the same groups would have, and
:meth:`FlatParameters.flat_state` concatenates such a state back, so checkpoints written either way resume
either way.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from robodual_core.errors import RobodualError

SHARED = frozenset({"step"})  # AdamW state with one value per parameter, not one per element


class FlatParameters:
    """``groups``: lists of trained parameters (one device and dtype in all); ``flat``: one
    :class:`~torch.nn.Parameter` per group, with ``.grad`` set, to hand to the optimizer and the EMA."""

    def __init__(self, groups: list[list[nn.Parameter]]):
        ref = next(p for params in groups for p in params)
        self.groups = groups
        self.sizes = [[p.numel() for p in params] for params in groups]
        self.flat: list[nn.Parameter] = []
        for params, sizes in zip(groups, self.sizes, strict=True):
            with torch.no_grad():
                data = (torch.cat([p.detach().reshape(-1) for p in params]) if params
                        else torch.empty(0, dtype=ref.dtype, device=ref.device))
            grad = torch.zeros_like(data)
            for p, d, g in zip(params, data.split(sizes), grad.split(sizes), strict=True):
                p.data = d.view_as(p)
                p.grad = g.view_as(p)  # backward accumulates into it in place
            flat = nn.Parameter(data)
            flat.grad = grad
            self.flat.append(flat)

    @staticmethod
    def supported(params: list[nn.Parameter], distributed: bool) -> bool:
        """One device and floating dtype for all, and no DDP (which keeps its own gradient buckets)."""
        return (not distributed and len({(p.device, p.dtype) for p in params}) == 1
                and all(p.is_floating_point() for p in params))

    def zero_grad(self) -> None:
        for flat in self.flat:
            flat.grad.zero_()

    def check(self) -> None:
        """Raise when a parameter or its gradient no longer aliases its buffer (the model was moved or cast
        after the trainer was built, or something set gradients to None): optimizer steps would silently miss
        them. Checks the first and last parameter of each group (a whole-model move or cast replaces all)."""
        for params, flat in zip(self.groups, self.flat, strict=True):
            # the first parameter starts the buffer, the last one ends it
            for p, offset in ((params[0], 0), (params[-1], flat.numel() - params[-1].numel())) if params else ():
                at = offset * flat.element_size()
                if p.data_ptr() != flat.data_ptr() + at or p.grad is None or p.grad.data_ptr() != flat.grad.data_ptr() + at:
                    raise RobodualError("the model's trained parameters or their gradients were replaced after the "
                                        "Trainer was built (model.to(...), a cast, zero_grad(set_to_none=True)?); "
                                        "place and cast the model before building it, or set "
                                        "trainer.flat_params=false")

    def _views(self, g: int, t: torch.Tensor) -> list[torch.Tensor]:
        """Per-parameter views of ``t``, a tensor shaped like group ``g``'s buffer."""
        return [v.view_as(p) for v, p in zip(t.split(self.sizes[g]), self.groups[g], strict=True)]

    def split(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-parameter views, group after group, of tensors shaped like :attr:`flat` (e.g. EMA shadows)."""
        return [v for g, t in enumerate(tensors) for v in self._views(g, t)]

    def param_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """The flat optimizer's ``state_dict()`` as a per-parameter optimizer's over the same groups
        (parameters numbered group after group, as ``torch.optim`` numbers them)."""
        out: dict[int, dict[str, Any]] = {}
        groups, index = [], 0
        for g, group in enumerate(state["param_groups"]):
            flat_state = state["state"].get(group["params"][0], {})
            per_key = {k: self._views(g, v) for k, v in flat_state.items()
                       if isinstance(v, torch.Tensor) and k not in SHARED}
            ids = list(range(index, index + len(self.groups[g])))
            for j, i in enumerate(ids if flat_state else ()):
                out[i] = {k: per_key[k][j] if k in per_key else v.clone() if isinstance(v, torch.Tensor) else v
                          for k, v in flat_state.items()}
            groups.append({**group, "params": ids})
            index += len(ids)
        return {"state": out, "param_groups": groups}

    def flat_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """Inverse of :meth:`param_state`: a per-parameter optimizer state (a checkpoint's) for the flat
        optimizer. Parameters without state (never updated) start from zero moments."""
        if len(state["param_groups"]) != len(self.groups):
            raise RobodualError(f"optimizer state has {len(state['param_groups'])} parameter groups; this model's "
                                f"optimizer has {len(self.groups)}")
        out: dict[int, dict[str, Any]] = {}
        groups = []
        for g, (group, params) in enumerate(zip(state["param_groups"], self.groups, strict=True)):
            if len(group["params"]) != len(params):
                raise RobodualError(f"optimizer state group {g} has {len(group['params'])} parameters; this "
                                    f"model's has {len(params)} (a checkpoint of another model?)")
            per = [state["state"].get(i) for i in group["params"]]
            first = next((s for s in per if s), None)
            if first is not None:
                out[g] = {key: self._concat(key, [s[key] if s else None for s in per], g)
                          if isinstance(value, torch.Tensor) and key not in SHARED
                          else value.clone() if isinstance(value, torch.Tensor) else value
                          for key, value in first.items()}
            groups.append({**group, "params": [g]})
        return {"state": out, "param_groups": groups}

    def _concat(self, key: str, values: list[torch.Tensor | None], g: int) -> torch.Tensor:
        """One buffer of group ``g`` from per-parameter state ``values`` (None: zeros)."""
        flat = self.flat[g]
        parts = []
        for v, p in zip(values, self.groups[g], strict=True):
            if v is not None and v.numel() != p.numel():
                raise RobodualError(f"optimizer state '{key}' has {v.numel()} values for a parameter of {p.numel()}")
            parts.append(flat.new_zeros(p.numel()) if v is None else v.reshape(-1).to(flat.device))
        return torch.cat(parts) if parts else flat.detach().new_zeros(0)
