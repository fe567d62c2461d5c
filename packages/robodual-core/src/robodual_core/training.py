"""The training loop shared by the generalist and the specialist.

``Trainer`` drives any ``nn.Module`` with ``loss(batch) -> (loss, metrics)`` and ``robodual_config()``.
It is deliberately plain: AdamW, a diffusers LR schedule stepped once per optimizer step, gradient
clipping after backward (the reference code clipped before it), EMA updated after the optimizer step
(diffusers ``EMAModel``), gradient accumulation, DDP when launched with torchrun, safetensors
checkpoints, and exact resume (model, optimizer, scheduler, EMA, RNG, data position).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from robodual_core.checkpoint import (
    DamagedCheckpointError,
    check_state_fits,
    checkpoint_steps,
    flatten_optimizer,
    load_tensors,
    save_checkpoint,
    unflatten_optimizer,
)
from robodual_core.config import Check, check_config, ranged
from robodual_core.errors import RobodualError
from robodual_core.flat_params import FlatParameters
from robodual_core.io import atomic_write_text

SEED_MAX = 2**32 - 1  # numpy's seed range


@dataclass
class TrainerConfig:
    """Every numeric key declares its range (``ranged``), checked when the config is loaded and again when
    a :class:`Trainer` is built from it (robodual_core.config.check_config)."""

    steps: int = ranged(1000, ge=1)
    batch_size: int = ranged(64, ge=1)
    # loader worker processes, or "auto": timed side by side at start-up (robodual_core.data.loader), the choice
    # logged in metrics.jsonl (num_workers) and loader.json
    num_workers: int | str = "auto"
    lr: float = ranged(1e-4, gt=0)
    weight_decay: float = ranged(1e-3, ge=0)
    betas: tuple[float, float] = ranged((0.9, 0.999), ge=0, lt=1)
    warmup_steps: int = ranged(1000, ge=0)
    scheduler: str = "cosine"  # any diffusers.optimization scheduler name: cosine, constant_with_warmup, linear, ...
    grad_clip: float = ranged(1.0, ge=0)  # 0: no clipping
    grad_accum: int = ranged(1, ge=1)
    ema: bool = True
    ema_decay: float = ranged(0.999, ge=0, le=1)
    log_every: int = ranged(10, ge=1)
    ckpt_every: int = ranged(500, ge=1)
    keep_checkpoints: int = ranged(2, ge=0)  # the newest N checkpoints are kept; 0 keeps all
    seed: int = ranged(0, ge=0, le=SEED_MAX)
    device: str = "auto"
    # bf16 autocast of the forward and backward: None (auto) = on CUDA devices with native bf16, true/false force
    amp: bool | None = None
    # torch.compile the model's compute modules (``model.compile_targets()``, the specialist's) before training:
    # the first steps pay the compilation (tens of seconds on a CPU), later steps run fused kernels
    compile: bool = False
    # trained parameters and gradients as views into one buffer per optimizer group (robodual_core.flat_params):
    # AdamW, EMA and clipping run over 2 tensors instead of one per parameter; off under DDP and mixed dtypes
    flat_params: bool = True

    __config_checks__ = (
        Check("num_workers", "'auto' or an integer in [0, 256]",
              lambda c: c.num_workers == "auto" or (type(c.num_workers) is int and 0 <= c.num_workers <= 256)),
    )

    def __post_init__(self) -> None:
        # --set trainer.num_workers=2 arrives as text (the key also takes "auto"); other values are left for
        # the check above to refuse, naming the key
        value = self.num_workers
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            self.num_workers = int(value)
        elif isinstance(value, str) and value.strip().lower() == "auto":
            self.num_workers = "auto"


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``; anything else, or CUDA on a machine
    without it, is refused with one line naming the value."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RobodualError(f"device '{name}' is not one of auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RobodualError(f"device '{name}' asked for, but CUDA is not available here; use cpu or auto")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class SeededBatch(list):
    """A batch's sample indices with the seed of the batch's random draws (``seed``): a dataset that draws per
    sample (WindowDataset's tau) uses it, so the draws depend on the batch's place in the run, not on which
    loader worker reads it or how far that worker's RNG has advanced (a run resumed mid-epoch gets them equal)."""

    def __init__(self, indices: list[int], seed: int):
        super().__init__(indices)
        self.seed = seed


class ResumableBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Shuffled batches that depend only on (seed, epoch), so a resumed run sees the same data.

    With ``world_size > 1`` each rank takes its slice of every global batch.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if n < batch_size * world_size:
            batch_size = max(1, n // world_size)
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.offset = 0, 0

    def batches_per_epoch(self) -> int:
        return self.n // (self.batch_size * self.world_size)

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.offset

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        global_bs = self.batch_size * self.world_size
        for b in range(self.offset, self.batches_per_epoch()):
            chunk = perm[b * global_bs:(b + 1) * global_bs]
            seed = ((self.seed * 1_000_003 + self.epoch) * 1_000_003 + b) * 4099 + self.rank
            yield SeededBatch(chunk[self.rank * self.batch_size:(self.rank + 1) * self.batch_size], seed % 2**63)


class _LossModule(nn.Module):
    """Routes ``forward`` to ``model.loss`` so DDP's gradient sync sees the call."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        return self.model.loss(batch)


def move_to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple) and batch and isinstance(batch[0], torch.Tensor):
        return type(batch)(move_to(v, device) for v in batch)
    return batch


class Trainer:
    """Train ``model`` on ``dataset`` for ``cfg.steps`` optimizer steps, writing into ``run_dir``.

    ``batch_transform(batch) -> batch`` runs in the main process after collation and device transfer
    (e.g. attaching cached generalist outputs). ``extra_json`` is copied into every checkpoint
    (normalizer.json, generalist.json, ...).
    """

    def __init__(
        self,
        model: nn.Module,
        dataset: torch.utils.data.Dataset,
        cfg: TrainerConfig,
        run_dir: str | Path,
        extra_json: dict[str, Any] | None = None,
        batch_transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        collate_fn: Callable | None = None,
        show_progress: bool = True,
        metric_sinks: list[Any] | None = None,
    ):
        check_config(cfg, "trainer.")  # a config built in code, not loaded: the same ranges
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.model = model
        self.dataset = dataset
        self.extra_json = extra_json or {}
        self.batch_transform = batch_transform
        self.collate_fn = collate_fn
        self.show_progress = show_progress
        # robodual_core.tracking.MetricSink objects (TensorBoard, W&B): fed every metrics.jsonl record on rank 0
        self.metric_sinks = list(metric_sinks or [])
        self.distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.rank = torch.distributed.get_rank() if self.distributed else 0
        self.world_size = torch.distributed.get_world_size() if self.distributed else 1
        self.device = resolve_device(cfg.device)
        self.step = 0
        self._build()

    # -- setup -----------------------------------------------------------------------------------
    def _build(self) -> None:
        from diffusers.optimization import get_scheduler

        cfg = self.cfg
        seed_everything(cfg.seed + self.rank)
        self.model.to(self.device)
        if cfg.compile:
            if not hasattr(self.model, "compile_targets"):
                raise RobodualError(f"trainer.compile is true, but {type(self.model).__name__} names no modules to "
                                    "compile (compile_targets); set trainer.compile=false")
            for module in self.model.compile_targets():
                module.compile(dynamic=False)  # in place: parameter names (checkpoints) do not change
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise RobodualError("the model has no trainable parameters")
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        # one buffer per group (flat_params.py): AdamW, EMA and clipping then walk 2 tensors, not ~150
        self._flat = (FlatParameters([decay, no_decay])
                      if cfg.flat_params and FlatParameters.supported(params, self.distributed) else None)
        groups = [[t] for t in self._flat.flat] if self._flat is not None else [decay, no_decay]
        # the fused kernel updates every tensor in one call: the per-tensor loop cost ~12 ms of a 75 ms CPU step
        # of the demo-size specialist (hundreds of small tensors)
        fused = self.device.type in ("cpu", "cuda") and all(p.is_floating_point() for p in params)
        self.optimizer = torch.optim.AdamW(
            [{"params": groups[0], "weight_decay": cfg.weight_decay}, {"params": groups[1], "weight_decay": 0.0}],
            lr=cfg.lr, betas=tuple(cfg.betas), fused=fused or None,
        )
        # what the optimizer, the EMA and clipping see (the flat buffers, or the parameters themselves)
        self._params = [t for g in groups for t in g]
        ordered = decay + no_decay  # the parameters behind self._params, in its order
        self._param_groups = [decay, no_decay]  # the checkpoint format's optimizer groups
        try:
            self.scheduler = get_scheduler(cfg.scheduler, self.optimizer, num_warmup_steps=cfg.warmup_steps,
                                           num_training_steps=cfg.steps)
        except (ValueError, TypeError, KeyError) as exc:
            from diffusers.optimization import SchedulerType

            names = ", ".join(t.value for t in SchedulerType)
            raise RobodualError(f"config key 'trainer.scheduler' is {cfg.scheduler!r}, which diffusers cannot build "
                                f"from steps and warmup_steps alone ({' '.join(str(exc).split())}); expected one "
                                f"of {names}") from None
        self.ema = None
        if cfg.ema:
            names = {id(p): n for n, p in self.model.named_parameters()}
            self._ema_names = [names[id(p)] for p in ordered]
            self.ema = _lerp_ema(self._params, decay=cfg.ema_decay, use_ema_warmup=True, inv_gamma=1.0,
                                 power=2 / 3, foreach=True)
        self._foreach_clip = all(p.device.type in ("cpu", "cuda") for p in params) or None
        wrapped = _LossModule(self.model)
        if self.distributed:
            wrapped = nn.parallel.DistributedDataParallel(wrapped)
        self.forward = wrapped
        self._data_loader: torch.utils.data.DataLoader | None = None
        self.loader_record: dict[str, Any] | None = None  # the worker count chosen, and why (see _loader)
        self.sampler = ResumableBatchSampler(len(self.dataset), self.cfg.batch_size, cfg.seed, self.rank,
                                             self.world_size)
        if self.sampler.batches_per_epoch() == 0:
            raise RobodualError(f"the training set has {len(self.dataset)} samples: too few for one batch")

    def _loader(self) -> torch.utils.data.DataLoader:
        """One DataLoader for the whole run. Its worker processes persist across epochs: new workers per epoch
        each rebuilt the dataset's in-memory frame cache (1.4-2.0 s of first batch per epoch, issue 20), which
        made 2 workers slower than none on small stores. The batch sampler runs in this process and reads the
        epoch and offset when each epoch's iterator starts; batches carry their own seed (SeededBatch), so worker
        seeds never reach the data.

        The worker count is ``trainer.num_workers`` or, for ``auto``, timed side by side on this dataset
        (robodual_core.data.loader.choose_num_workers; the global RNG states are restored after it); the frames are
        read into shared memory before workers start, each worker runs one thread, and this process keeps at
        most ``cores - workers`` torch threads. The choice is kept in ``self.loader_record``."""
        if self._data_loader is not None:
            return self._data_loader
        from robodual_core.data.loader import build_loader, limit_threads, resolve_num_workers

        pin = self.device.type == "cuda"
        with _rng_kept():
            self.loader_record = resolve_num_workers(self.cfg.num_workers, self.dataset, self.sampler.batch_size,
                                                     self.collate_fn, pin_memory=pin, seed=self.cfg.seed)
        if self.loader_record["main_threads"] != torch.get_num_threads():
            limit_threads(self.loader_record["main_threads"])
        # its own generator: creating an iterator must not draw from the global RNG, which resume restores
        # (otherwise a resumed run's noise/tau draws shift by one and it departs from the uninterrupted run)
        gen = torch.Generator().manual_seed(hash((self.cfg.seed, self.rank)) % 2**63)
        self._data_loader = build_loader(self.dataset, self.loader_record["num_workers"], batch_sampler=self.sampler,
                                         collate_fn=self.collate_fn, pin_memory=pin, generator=gen)
        return self._data_loader

    def batches(self) -> Iterator[dict[str, Any]]:
        """Training batches from the current data position on, epoch after epoch (resume-exact)."""
        while True:
            for batch in self._loader():
                self.sampler.offset += 1
                yield batch
            self.sampler.epoch += 1
            self.sampler.offset = 0

    # -- checkpoints -----------------------------------------------------------------------------
    def _ema_state(self) -> dict[str, torch.Tensor] | None:
        if self.ema is None:
            return None
        names = set(self._ema_names)
        return dict(zip(self._ema_names, self._ema_tensors(), strict=True)) | {
            k: v for k, v in self.model.state_dict().items() if k not in names
        }

    def _ema_tensors(self) -> list[torch.Tensor]:
        """The EMA weights of the trained parameters, one tensor per parameter (views of flat shadows)."""
        shadows = self.ema.shadow_params
        return self._flat.split(shadows) if self._flat is not None else shadows

    def _optimizer_state(self) -> dict[str, Any]:
        """The optimizer state per parameter (the checkpoint format, whether or not buffers are flat)."""
        state = self.optimizer.state_dict()
        return self._flat.param_state(state) if self._flat is not None else state

    def rng_states(self) -> list[tuple[dict[str, torch.Tensor], dict[str, Any]]]:
        """Every rank's RNG states, indexed by rank: (torch and CUDA state tensors, numpy and Python states as
        JSON). In a distributed run this is a collective: every rank calls it at the same step (``fit`` does, at
        each checkpoint), and each gets all of them; no object is pickled on the way."""
        local = _local_rng_state()
        if not self.distributed or self.world_size == 1:
            return [local]
        tensors, js = local
        device = (torch.device("cuda", torch.cuda.current_device())
                  if torch.distributed.get_backend() == "nccl" else torch.device("cpu"))
        payload = torch.frombuffer(bytearray(json.dumps(js).encode()), dtype=torch.uint8)
        gathered = {name: _all_gather_bytes(t, device) for name, t in
                    (("json", payload), *((k, tensors[k]) for k in ("torch", "cuda") if k in tensors))}
        out = []
        for r in range(self.world_size):
            rank_tensors = {k: v[r] for k, v in gathered.items() if k != "json"}
            out.append((rank_tensors, json.loads(gathered["json"][r].numpy().tobytes().decode())))
        return out

    def save(self, rng_states: list[tuple[dict[str, torch.Tensor], dict[str, Any]]] | None = None) -> Path:
        """Write a checkpoint of this step (rank 0). ``rng_states``: every rank's (:meth:`rng_states`, which a
        distributed run gathers on every rank first); rank 0's go where a single-process run keeps its own, each
        other rank's under ``rank<r>.`` in rng.safetensors and ``ranks_rng`` in training_state.json."""
        if rng_states is None:
            if self.world_size > 1:
                raise RobodualError("Trainer.save in a run of world size >1 needs every rank's RNG states: call "
                                    "Trainer.rng_states() on every rank and pass them (fit does)")
            rng_states = self.rng_states()
        if len(rng_states) != self.world_size:
            raise RobodualError(f"Trainer.save: expected the RNG states of {self.world_size} ranks, found "
                                f"{len(rng_states)}")
        opt_tensors, opt_meta = flatten_optimizer(self._optimizer_state())
        rng = dict(rng_states[0][0])
        for r, (tensors, _) in enumerate(rng_states[1:], start=1):
            rng.update({f"rank{r}.{k}": v for k, v in tensors.items()})
        state = {
            "step": self.step,
            "epoch": self.sampler.epoch,
            "batch_offset": self.sampler.offset,
            "scheduler": self.scheduler.state_dict(),
            "optimizer": opt_meta,
            **rng_states[0][1],  # numpy_rng, python_rng (rank 0's)
            "ranks_rng": {str(r): js for r, (_, js) in enumerate(rng_states[1:], start=1)},
            "ema": ({"optimization_step": int(self.ema.optimization_step), "decay": float(self.ema.cur_decay_value or 0)}
                    if self.ema is not None else None),
            "world_size": self.world_size,
            "batch_size": self.sampler.batch_size,
        }
        ckpt = self.run_dir / "checkpoints" / str(self.step)
        save_checkpoint(
            ckpt, self.model.state_dict(), state, self.model.robodual_config(), ema_state=self._ema_state(),
            optimizer_tensors=opt_tensors, rng_tensors=rng, extra_json=self.extra_json,
        )
        if self.cfg.keep_checkpoints > 0:  # 0 or less: keep every checkpoint
            for old in checkpoint_steps(self.run_dir)[: -self.cfg.keep_checkpoints]:
                shutil.rmtree(self.run_dir / "checkpoints" / str(old), ignore_errors=True)
        return ckpt

    def resume(self, ckpt: Path | None = None) -> bool:
        """Restore the latest checkpoint of ``run_dir`` (or ``ckpt``); False when there is none.

        Every file is read and checked against this run before anything is restored. A latest checkpoint
        that is damaged (a truncated or garbled file: :class:`DamagedCheckpointError`) is not used: the run
        resumes from the newest earlier checkpoint that reads whole, says so in one line on stderr, and keeps
        the damaged folder as ``checkpoints/<step>.damaged`` (never deleted; the resumed run is exact, so it
        writes that step again). With no such earlier checkpoint, or an explicit ``ckpt``, the error names the
        damaged file. A checkpoint of another model or batch size is refused, never skipped."""
        if ckpt is not None:
            self._restore(self._read(Path(ckpt)))
            return True
        steps = checkpoint_steps(self.run_dir)
        if not steps:
            return False
        damaged: list[tuple[Path, DamagedCheckpointError]] = []
        for step in reversed(steps):
            path = self.run_dir / "checkpoints" / str(step)
            try:
                data = self._read(path)
                break
            except DamagedCheckpointError as exc:
                damaged.append((path, exc))
        else:
            earlier = f"; the earlier checkpoints ({', '.join(str(s) for s in steps[:-1])}) are damaged too" \
                if len(steps) > 1 else "; there is no earlier checkpoint"
            raise DamagedCheckpointError(f"{damaged[0][1]}{earlier}: restore the file or start again with "
                                         "--overwrite", damaged[0][1].path) from None
        self._restore(data)
        if damaged:
            if self.distributed:
                torch.distributed.barrier()  # every rank has read its checkpoint before one is moved
            if self.rank == 0:
                self._set_aside(damaged, path)
        return True

    def _set_aside(self, damaged: list[tuple[Path, DamagedCheckpointError]], used: Path) -> None:
        from rich.console import Console

        kept = []
        for bad, _ in damaged:
            target = bad.with_name(f"{bad.name}.damaged")
            n = 1
            while target.exists():
                n += 1
                target = bad.with_name(f"{bad.name}.damaged{n}")
            os.replace(bad, target)
            kept.append(str(target))
        atomic_write_text(used.parent / "latest", used.name + "\n")
        Console(stderr=True, soft_wrap=True).print(
            f"warning: {damaged[0][1]}; resuming from step {used.name} instead (the damaged checkpoint is kept as "
            f"{', '.join(kept)})", markup=False, highlight=False)

    def _read(self, ckpt: Path) -> dict[str, Any]:
        """Every file of checkpoint ``ckpt``, read and checked against this run (nothing restored yet)."""
        from robodual_core.checkpoint import read_json

        state = read_json(ckpt, "training_state", expect=dict)
        # the data position is counted in batches of this size over this many ranks: another layout would
        # silently skip or repeat samples
        for key, now in (("world_size", self.world_size), ("batch_size", self.sampler.batch_size)):
            if key in state and state[key] != now:
                raise RobodualError(f"checkpoint '{ckpt}' was trained with {key} {state[key]}, this run has {now}; "
                                    f"resume with the same {key} (trainer.batch_size, torchrun --nproc-per-node)")
        saved_cfg = None
        if (ckpt / "model_config.json").is_file():
            saved_cfg = read_json(ckpt, "model_config", expect=dict)
        model_now = self.model.state_dict()
        current_cfg = self.model.robodual_config() if hasattr(self.model, "robodual_config") else None
        model = load_tensors(ckpt / "model.safetensors")
        check_state_fits(model_now, model, ckpt / "model.safetensors", saved_cfg, current_cfg)
        state_file = ckpt / "training_state.json"
        rank_js = self._rank_rng_json(state, ckpt, state_file)
        try:
            out: dict[str, Any] = {
                "model": model,
                "step": int(state["step"]), "epoch": int(state["epoch"]), "offset": int(state["batch_offset"]),
                "scheduler": dict(state["scheduler"]),
                "numpy_rng": _np_rng_from_json(rank_js["numpy_rng"]),
                "python_rng": _py_rng_from_json(rank_js["python_rng"]),
                "ema_step": int(state["ema"]["optimization_step"]) if self.ema is not None and state.get("ema") else None,
                "optimizer_meta": state["optimizer"],
            }
            meta = state["optimizer"]
            if not isinstance(meta["param_groups"], list) or not isinstance(meta["scalars"], dict):
                raise TypeError("optimizer.param_groups must be a list and optimizer.scalars an object")
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise DamagedCheckpointError(f"checkpoint file '{state_file}' is damaged: {type(exc).__name__} "
                                         f"{' '.join(str(exc).split())}", state_file) from None
        opt_path = ckpt / "optimizer.safetensors"
        if not opt_path.is_file() and out["step"] > 0:
            # a stepped AdamW always has tensor state: without the file the moments would silently restart
            raise DamagedCheckpointError(f"checkpoint file '{opt_path}' is missing (the optimizer state of step "
                                         f"{out['step']})", opt_path)
        opt_tensors = load_tensors(opt_path) if opt_path.is_file() else {}
        out["optimizer"] = self._check_optimizer(unflatten_optimizer(opt_tensors, meta), opt_path, state_file)
        out["ema"] = None
        if self.ema is not None and (ckpt / "ema.safetensors").is_file():
            ema = load_tensors(ckpt / "ema.safetensors")
            check_state_fits(model_now, ema, ckpt / "ema.safetensors", saved_cfg, current_cfg)
            if out["ema_step"] is None:
                raise DamagedCheckpointError(f"checkpoint file '{state_file}' is damaged: it has no ema step for "
                                             "ema.safetensors", state_file)
            out["ema"] = ema
        rng_path = ckpt / "rng.safetensors"
        # this rank's states: rank 0's at the top level, another rank's under rank<r>. (a checkpoint written
        # before every rank's were saved holds rank 0's only: _rank_rng_json said so, and they serve)
        prefix = f"rank{self.rank}." if self.rank and rank_js is not state else ""
        rng = load_tensors(rng_path, dtypes={f"{prefix}torch": torch.uint8, f"{prefix}cuda": torch.uint8})
        if f"{prefix}torch" not in rng or rng[f"{prefix}torch"].shape != torch.get_rng_state().shape:
            raise DamagedCheckpointError(f"checkpoint file '{rng_path}' is damaged: no torch RNG state of "
                                         f"{torch.get_rng_state().numel()} bytes for rank {self.rank}", rng_path)
        out["rng"] = {k: rng[f"{prefix}{k}"] for k in ("torch", "cuda") if f"{prefix}{k}" in rng}
        return out

    def _rank_rng_json(self, state: dict[str, Any], ckpt: Path, state_file: Path) -> dict[str, Any]:
        """This rank's numpy and Python RNG states in ``training_state.json`` (rank 0's: the file itself)."""
        if self.rank == 0:
            return state
        ranks = state.get("ranks_rng")
        if ranks is None:  # written before every rank's states were saved
            import warnings

            warnings.warn(f"checkpoint '{ckpt}' holds rank 0's RNG states only (written before every rank's were "
                          f"saved): rank {self.rank} resumes with them, so this resume is not exact", stacklevel=3)
            return state
        if not isinstance(ranks, dict) or not isinstance(ranks.get(str(self.rank)), dict):
            raise DamagedCheckpointError(f"checkpoint file '{state_file}' is damaged: 'ranks_rng' has no RNG state "
                                         f"for rank {self.rank} of {self.world_size}", state_file)
        return ranks[str(self.rank)]

    def _check_optimizer(self, opt_state: dict[str, Any], opt_path: Path, state_file: Path) -> dict[str, Any]:
        """The per-parameter optimizer state of a checkpoint, checked against this model's parameters (a
        truncated/garbled tensor or group list is damage naming the file; torch would load it and fail later)."""
        groups = opt_state["param_groups"]
        if len(groups) != len(self._param_groups) or any(
                not isinstance(g, dict) or len(g.get("params", ())) != len(params)
                for g, params in zip(groups, self._param_groups, strict=False)):
            raise DamagedCheckpointError(f"checkpoint file '{state_file}' is damaged: its optimizer parameter "
                                         f"groups do not match the model's {[len(p) for p in self._param_groups]} "
                                         "parameters", state_file)
        params = {i: p for i, p in enumerate(p for group in self._param_groups for p in group)}
        for idx, pstate in opt_state["state"].items():
            if idx not in params:
                raise DamagedCheckpointError(f"checkpoint file '{opt_path}' is damaged: state for parameter {idx}, "
                                             f"the model has {len(params)}", opt_path)
            for name, value in pstate.items():
                if isinstance(value, torch.Tensor) and name != "step" and (
                        value.numel() != params[idx].numel() or value.dtype != params[idx].dtype):
                    raise DamagedCheckpointError(
                        f"checkpoint file '{opt_path}' is damaged: '{idx}.{name}' is {_dtype_name(value.dtype)} "
                        f"{list(value.shape)}, its parameter {params[idx].dtype} {list(params[idx].shape)}", opt_path)
        return opt_state

    def _restore(self, data: dict[str, Any]) -> None:
        """Apply what :meth:`_read` read and checked."""
        self.model.load_state_dict(data["model"], strict=True)
        opt_state = data["optimizer"]
        self.optimizer.load_state_dict(self._flat.flat_state(opt_state) if self._flat is not None else opt_state)
        self.scheduler.load_state_dict(data["scheduler"])
        if data["ema"] is not None:
            for shadow, name in zip(self._ema_tensors(), self._ema_names, strict=True):
                shadow.detach().copy_(data["ema"][name].to(shadow.device))
            self.ema.optimization_step = data["ema_step"]
        rng = data["rng"]
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
        np.random.set_state(data["numpy_rng"])
        random.setstate(data["python_rng"])
        self.step = data["step"]
        self.sampler.epoch, self.sampler.offset = data["epoch"], data["offset"]

    def _trim_metrics(self) -> None:
        """Drop metrics.jsonl lines logged after the checkpoint a run resumes from: training repeats those
        steps and logs them again (plots would show them twice)."""
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return
        lines = path.read_text().splitlines(keepends=True)
        kept = []
        for line in lines:
            try:
                step = json.loads(line).get("step", 0)
            except (json.JSONDecodeError, AttributeError):
                continue  # a line cut by the interruption
            if step <= self.step:
                kept.append(line if line.endswith("\n") else line + "\n")
        if kept != lines:
            atomic_write_text(path, "".join(kept))

    # -- loop ------------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict[str, float]:
        """Train until ``cfg.steps``; returns the last logged metrics."""
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            if self.resume() and self.rank == 0:
                self._trim_metrics()
        elif checkpoint_steps(self.run_dir):
            raise RobodualError(f"run folder '{self.run_dir}' already has checkpoints; pass --resume to continue "
                                "it or --overwrite to start again")
        # the RNG states training starts from (seeded, or a checkpoint's): what start-up does next (lazy imports
        # such as rich's, which draws from Python's RNG, metric sinks, the loader) must not shift them, or a
        # resumed run would draw differently from the uninterrupted one
        start_rng = _local_rng_state()
        self.model.train()
        sinks = self.metric_sinks if self.rank == 0 else []
        for sink in sinks:
            sink.start(self.step)
        batches = self.batches()
        self._loader()  # the worker count (auto: timed) and the frames read before the first interval's clock starts
        if self.rank == 0:
            atomic_write_text(self.run_dir / "loader.json", json.dumps(self.loader_record, indent=2) + "\n")
        last: dict[str, float] = {}
        progress = _progress(self.show_progress and self.rank == 0)
        task = progress.add_task("training", total=cfg.steps, completed=self.step)
        t_last, samples = time.perf_counter(), 0
        with progress, open(self.run_dir / "metrics.jsonl", "a") as log:
            _set_local_rng_state(*start_rng)
            while self.step < cfg.steps:
                metrics_acc, grad_norm, n = self.train_step(batches)
                samples += n
                progress.update(task, completed=self.step,
                                description=f"training loss {metrics_acc['loss']:.4f}")
                if self.rank == 0 and (self.step % cfg.log_every == 0 or self.step == cfg.steps):
                    now = time.perf_counter()
                    last = {"step": self.step, **metrics_acc, "grad_norm": float(grad_norm),
                            "lr": self.scheduler.get_last_lr()[0],
                            "samples_per_s": samples * self.world_size / max(now - t_last, 1e-9),
                            "num_workers": self.loader_record["num_workers"]}
                    log.write(json.dumps(last) + "\n")
                    log.flush()
                    for sink in sinks:
                        sink.write(last)
                    t_last, samples = now, 0
                if self.step % cfg.ckpt_every == 0 or self.step == cfg.steps:
                    rng_states = self.rng_states()  # every rank takes part: each rank's RNG goes in the checkpoint
                    if self.rank == 0:
                        self.save(rng_states)
        return last

    def amp_enabled(self) -> bool:
        """``trainer.amp`` on this device: bf16 autocast only on CUDA (auto: where the card computes bf16)."""
        if self.device.type != "cuda":
            return False
        if self.cfg.amp is None:
            return torch.cuda.is_bf16_supported()
        return bool(self.cfg.amp)

    def train_step(self, batches: Iterator[dict[str, Any]]) -> tuple[dict[str, float], torch.Tensor, int]:
        """One optimizer step on ``grad_accum`` batches from ``batches`` (``self.batches()``): the metrics
        averaged over them, the gradient norm before clipping, and the samples seen."""
        cfg = self.cfg
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if self.amp_enabled() else _nullcontext())
        if self._flat is not None:
            self._flat.zero_grad()
        else:
            self.optimizer.zero_grad(set_to_none=True)
        metrics_acc: dict[str, float] = {}
        samples = 0
        for _ in range(cfg.grad_accum):
            batch = move_to(next(batches), self.device)
            if self.batch_transform is not None:
                batch = self.batch_transform(batch)
            with autocast:
                loss, metrics = self.forward(batch)
            if not torch.isfinite(loss):
                raise RobodualError(f"loss became {loss.item()} at step {self.step}; lower the learning rate "
                                    "or check the data for NaN/Inf (robodual dataset validate)")
            (loss / cfg.grad_accum).backward()
            samples += _batch_size(batch)
            for k, v in {"loss": float(loss.detach()), **metrics}.items():
                metrics_acc[k] = metrics_acc.get(k, 0.0) + float(v) / cfg.grad_accum
        if self._flat is not None:
            self._flat.check()  # after backward: also catches gradients set to None or replaced mid-step
        grad_norm = self._clip_gradients()
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.step(self._params)
        self.step += 1
        return metrics_acc, grad_norm, samples

    def _clip_gradients(self) -> torch.Tensor:
        """Global gradient norm of the trained parameters (logged); gradients are scaled down to
        ``grad_clip`` when it is above (``clip_grad_norm_`` in two parts, on the trained-parameter list
        built once: no walk over frozen parameters, and no scaling pass at all without clipping).

        On the CPU, where reading the norm costs no device sync, the scaling pass is also skipped when the
        norm is within the limit: ``clip_grads_with_norm_`` would multiply every gradient by exactly 1.0
        then (its coefficient ``max / (norm + 1e-6)`` clamped to 1), a pass over ~150 tensors per step."""
        grads = [p.grad for p in self._params if p.grad is not None]
        total = torch.nn.utils.get_total_norm(grads, foreach=self._foreach_clip)
        if self.cfg.grad_clip > 0:
            if total.device.type == "cpu" and float(total) + 1e-6 <= self.cfg.grad_clip:
                return total
            torch.nn.utils.clip_grads_with_norm_(self._params, self.cfg.grad_clip, total, foreach=self._foreach_clip)
        return total

class _rng_kept:
    """The global torch, numpy and Python RNG states as they were before the block (a start-up measurement
    that reads samples must not shift the draws a resumed run repeats)."""

    def __enter__(self) -> None:
        self.states = (torch.get_rng_state(), np.random.get_state(), random.getstate())

    def __exit__(self, *exc: object) -> None:
        torch.set_rng_state(self.states[0])
        np.random.set_state(self.states[1])
        random.setstate(self.states[2])


def _lerp_ema(*args: Any, **kwargs: Any) -> Any:
    """diffusers' ``EMAModel`` (decay warm-up, state) whose update of the trained parameters is one
    ``torch._foreach_lerp_`` instead of a foreach subtraction into a temporary and a second one: on CPU the
    two passes took 8 ms for 4.4M parameters in ~150 tensors, the lerp 1.8 ms."""
    from diffusers.training_utils import EMAModel

    class LerpEMAModel(EMAModel):
        @torch.no_grad()
        def step(self, parameters: Any) -> None:  # the trained parameters, as the trainer passes them
            self.optimization_step += 1
            decay = self.get_decay(self.optimization_step)
            self.cur_decay_value = decay
            torch._foreach_lerp_(self.shadow_params, list(parameters), 1 - decay)

    return LerpEMAModel(*args, **kwargs)


def _batch_size(batch: Any) -> int:
    if isinstance(batch, dict):
        for v in batch.values():
            n = _batch_size(v)
            if n:
                return n
    if isinstance(batch, torch.Tensor) and batch.ndim:
        return int(batch.shape[0])
    return 0


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _local_rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """This process's RNG states: torch (and CUDA, when present) as uint8 tensors, numpy and Python as JSON."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state()
    np_state = np.random.get_state()
    return tensors, {"numpy_rng": [np_state[0], np_state[1].tolist(), *np_state[2:]],
                     "python_rng": _py_rng_to_json(random.getstate())}


def _set_local_rng_state(tensors: dict[str, torch.Tensor], js: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"])
    np.random.set_state(_np_rng_from_json(js["numpy_rng"]))
    random.setstate(_py_rng_from_json(js["python_rng"]))


def _all_gather_bytes(t: torch.Tensor, device: torch.device) -> list[torch.Tensor]:
    """Every rank's 1-D uint8 tensor ``t`` (lengths may differ), on the CPU, indexed by rank."""
    t = t.reshape(-1).to(device)
    world = torch.distributed.get_world_size()
    n = torch.tensor([t.numel()], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    torch.distributed.all_gather(sizes, n)
    longest = max(int(s) for s in sizes)
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[: t.numel()] = t
    parts = [torch.empty_like(padded) for _ in range(world)]
    torch.distributed.all_gather(parts, padded)
    return [p[: int(s)].cpu() for p, s in zip(parts, sizes, strict=True)]


def _py_rng_to_json(state: tuple) -> list:
    return [state[0], list(state[1]), state[2]]


def _py_rng_from_json(state: list) -> tuple:
    out = (state[0], tuple(state[1]), state[2])
    random.Random().setstate(out)  # checks it (a damaged state raises here, not half-way through a restore)
    return out


def _np_rng_from_json(state: list) -> tuple:
    out = (state[0], np.array(state[1], dtype=np.uint32), *state[2:])
    np.random.RandomState().set_state(out)  # checks it
    return out


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def _progress(enabled: bool):
    from robodual_core.progress import progress_bar

    return progress_bar(enabled)


def init_distributed() -> bool:
    """Initialise torch.distributed when launched by torchrun (gloo on CPU, nccl on CUDA)."""
    if "RANK" not in os.environ or torch.distributed.is_initialized():
        return torch.distributed.is_initialized()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    torch.distributed.init_process_group(backend)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return True
