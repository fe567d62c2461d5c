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
        self.flat: list[nn.Parameter] = []
        self.slices: list[list[tuple[int, int]]] = []
        for params in groups:
            total = sum(p.numel() for p in params)
            data = torch.empty(total, dtype=ref.dtype, device=ref.device)
            grad = torch.zeros_like(data)
            slices, offset = [], 0
            for p in params:
                n = p.numel()
                with torch.no_grad():
                    data[offset:offset + n].copy_(p.detach().reshape(-1))
                p.data = data[offset:offset + n].view_as(p)
                p.grad = grad[offset:offset + n].view_as(p)  # backward accumulates into it in place
                slices.append((offset, n))
                offset += n
            flat = nn.Parameter(data)
            flat.grad = grad
            self.flat.append(flat)
            self.slices.append(slices)

    @staticmethod
    def supported(params: list[nn.Parameter], distributed: bool) -> bool:
        """One device and floating dtype for all, and no DDP (which keeps its own gradient buckets)."""
        return (not distributed and len({(p.device, p.dtype) for p in params}) == 1
                and all(p.is_floating_point() for p in params))

    def params(self) -> list[nn.Parameter]:
        """The trained parameters in buffer order (group after group)."""
        return [p for params in self.groups for p in params]

    def zero_grad(self) -> None:
        for flat in self.flat:
            flat.grad.zero_()

    def check(self) -> None:
        """Raise when a parameter or its gradient no longer aliases its buffer (the model was moved or cast
        after the trainer was built, or something set gradients to None): optimizer steps would silently miss
        them. Checks the first and last parameter of each group (a whole-model move or cast replaces all)."""
        for params, slices, flat in zip(self.groups, self.slices, self.flat, strict=True):
            for i in {0, len(params) - 1} if params else ():
                p, (offset, _) = params[i], slices[i]
                if p.data_ptr() != flat.data_ptr() + offset * flat.element_size() or p.grad is None \
                        or p.grad.data_ptr() != flat.grad.data_ptr() + offset * flat.element_size():
                    raise RobodualError("the model's trained parameters or their gradients were replaced after the "
                                        "Trainer was built (model.to(...), a cast, zero_grad(set_to_none=True)?); "
                                        "place and cast the model before building it, or set "
                                        "trainer.flat_params=false")

    def split(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-parameter views (in :meth:`params` order) of tensors shaped like :attr:`flat` (e.g. EMA shadows)."""
        out = []
        for t, params, slices in zip(tensors, self.groups, self.slices, strict=True):
            out += [t[o:o + n].view_as(p) for p, (o, n) in zip(params, slices, strict=True)]
        return out

    def param_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """The flat optimizer's ``state_dict()`` as a per-parameter optimizer's over the same groups
        (parameters numbered group after group, as ``torch.optim`` numbers them)."""
        out: dict[int, dict[str, Any]] = {}
        groups, index = [], 0
        for group, params, slices in zip(state["param_groups"], self.groups, self.slices, strict=True):
            flat_state = state["state"].get(group["params"][0], {})
            ids = []
            for p, (o, n) in zip(params, slices, strict=True):
                if flat_state:
                    out[index] = {k: v.clone() if k in SHARED else v[o:o + n].view_as(p) if isinstance(v, torch.Tensor)
                                  else v for k, v in flat_state.items()}
                ids.append(index)
                index += 1
            groups.append({**group, "params": ids})
        return {"state": out, "param_groups": groups}

    def flat_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """Inverse of :meth:`param_state`: a per-parameter optimizer state (a checkpoint's) for the flat
        optimizer. Parameters without state (never updated) start from zero moments."""
        if len(state["param_groups"]) != len(self.groups):
            raise RobodualError(f"optimizer state has {len(state['param_groups'])} parameter groups; this model's "
                                f"optimizer has {len(self.groups)}")
        out: dict[int, dict[str, Any]] = {}
        groups = []
        for g, (group, params, flat) in enumerate(zip(state["param_groups"], self.groups, self.flat, strict=True)):
            if len(group["params"]) != len(params):
                raise RobodualError(f"optimizer state group {g} has {len(group['params'])} parameters; this "
                                    f"model's has {len(params)} (a checkpoint of another model?)")
            per = [state["state"].get(i) for i in group["params"]]
            first = next((s for s in per if s), None)
            if first is not None:
                entry: dict[str, Any] = {}
                for key, value in first.items():
                    if key in SHARED or not isinstance(value, torch.Tensor):
                        entry[key] = value.clone() if isinstance(value, torch.Tensor) else value
                    else:
                        parts = []
                        for s, p in zip(per, params, strict=True):
                            v = s[key] if s else torch.zeros(p.shape, dtype=value.dtype)
                            if v.numel() != p.numel():
                                raise RobodualError(f"optimizer state '{key}' has {v.numel()} values for a "
                                                    f"parameter of {p.numel()}")
                            parts.append(v.reshape(-1).to(flat.device))
                        entry[key] = torch.cat(parts) if parts else flat.detach().new_zeros(0)
                out[g] = entry
            groups.append({**group, "params": [g]})
        return {"state": out, "param_groups": groups}
