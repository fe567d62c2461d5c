"""Training the specialist on a robodual store, with or without cached generalist outputs."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from robodual_core.config import dump_config, load_config, read_config_file, to_dict
from robodual_core.data.generalist_cache import POOLINGS
from robodual_core.errors import ConfigError, RobodualError
from robodual_core.interfaces import GeneralistOutput
from robodual_specialist.config import SpecialistTrainConfig, saved_specialist


def resolve_generalist_cache(store: Path, spec: str) -> tuple[str, Any]:
    """``(checkpoint_hash, GeneralistCache)`` for ``--generalist-cache auto|HASH|FOLDER`` (a generalist run or
    checkpoint folder: the cache built from it; :func:`robodual_core.data.generalist_cache.resolve_cache`)."""
    from robodual_core.data.generalist_cache import GeneralistCache, resolve_cache

    spec = resolve_cache(store, spec, flag="--generalist-cache")
    return spec, GeneralistCache(store, spec)


def generalist_record(ckpt_hash: str, cache: Any) -> dict[str, Any]:
    """generalist.json: which generalist the specialist was trained with (the runtime loads ``checkpoint``)."""
    attrs = dict(getattr(cache, "attrs", {}) or {})
    record = {k: v for k, v in attrs.items() if isinstance(v, str | int | float | bool)}
    record["hash"] = ckpt_hash
    record["checkpoint"] = attrs.get("checkpoint") or attrs.get("source") or None
    return record


class AttachGeneralist:
    """batch_transform: ``batch["generalist"] = cache.get(batch["gen_index"])`` on the batch's device."""

    def __init__(self, cache: Any):
        self.cache = cache

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        idx = batch["gen_index"]
        out: GeneralistOutput = self.cache.get(idx.cpu())
        batch["generalist"] = out.to(idx.device)
        return batch


class OnlineGeneralist:
    """batch_transform: runs the generalist now on the frames at ``gen_index`` (free-running, as ``robodual
    generalist cache`` would have, same pooling and precision) instead of reading a cache.

    Slow by design: it is the baseline the cache is measured against, and what a user without disk for a
    cache can still train with.
    """

    def __init__(self, runner: Any, store: Any):
        import numpy as np

        self.runner = runner
        if runner.image_key not in store.keys:
            raise RobodualError(f"the generalist reads key '{runner.image_key}', which the dataset lacks; keys: "
                                f"{', '.join(store.keys)}")
        from robodual_core.data import sampler

        # held in memory when small, as WindowDataset holds its images: a zarr read costs ~1 ms a frame, ~7 ms of
        # every batch of 8 (the rest of the online step is the generalist's own work)
        self.images = sampler.in_memory_if_small(store.array(runner.image_key), sampler.IMAGE_CACHE_BYTES)
        self.episode_ends = np.asarray(store.episode_ends)
        self.instructions = store.instructions

    def outputs(self, steps: Any) -> GeneralistOutput:
        import numpy as np

        steps = np.asarray(steps, dtype=np.int64).reshape(-1)
        frames = np.stack([self.images[int(t)] for t in steps])
        episodes = np.searchsorted(self.episode_ends, steps, side="right")
        return self.runner.predict_batch(frames, [self.instructions[int(e)] for e in episodes])

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        idx = batch["gen_index"]
        batch["generalist"] = self.outputs(idx.cpu().numpy()).to(idx.device)
        return batch


def online_generalist(store: Any, checkpoint: str | Path, pooling: str) -> tuple[OnlineGeneralist, dict[str, Any]]:
    """The online transform and its generalist.json record (the runtime reproduces the same conditioning)."""
    from robodual_core.checkpoint import check_kind, pin_checkpoint, read_json
    from robodual_core.data.generalist_cache import checkpoint_hash
    from robodual_core.runtime import load_runner

    checkpoint = pin_checkpoint(checkpoint)  # the run's latest checkpoint now, fixed for the whole run
    if (checkpoint / "model_config.json").is_file():  # a checkpoint (a merged model folder has none)
        check_kind(checkpoint, read_json(checkpoint, "model_config", expect=dict), "generalist")
    runner = load_runner("generalist", checkpoint, pooling=pooling, latent_dtype="float32")
    record = {"hash": checkpoint_hash(checkpoint), "checkpoint": str(checkpoint),
              "pooling": pooling, "dtype": "float32", "online": True}
    return OnlineGeneralist(runner, store), record


def _fit_default_sensors(cfg: SpecialistTrainConfig, keys: list[str], dataset: Path, rank: int) -> SpecialistTrainConfig:
    """The paper's default sensors, less those whose key the store lacks (Meta-World has no depth).
    Sensors a user configured are kept as they are: a missing key is then an error."""
    from robodual_specialist.config import _paper_sensors

    if [dataclasses.asdict(s) for s in cfg.model.sensors] != [dataclasses.asdict(s) for s in _paper_sensors()]:
        return cfg
    kept = [s for s in cfg.model.sensors if s.name in keys]
    dropped = [s.name for s in cfg.model.sensors if s.name not in keys]
    if not kept:
        raise RobodualError(f"dataset '{dataset}' has none of the default sensor keys "
                            f"({', '.join(s.name for s in cfg.model.sensors)}); set model.sensors in --config")
    if dropped and rank == 0:
        from rich.console import Console

        Console(stderr=True).print(f"default sensors: dataset has no {', '.join(dropped)}; using "
                                   f"{', '.join(s.name for s in kept)}")
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, sensors=kept))


def _check_image_sizes(model: Any, image_size: int | None) -> None:
    """The loader (and the runtime, through the same kernel preprocessing) resizes every image to
    ``data.image_size``; an image sensor of another size would resize it again: two interpolations where one
    would do, detail lost for nothing."""
    if image_size is None:
        return
    for name, enc in model.sensors.items():
        hw = getattr(getattr(enc, "cfg", None), "hw", None)
        if hw is not None and tuple(hw) != (image_size, image_size):
            raise RobodualError(f"sensor '{name}' encodes {hw[0]}x{hw[1]} frames but data.image_size is {image_size}: "
                                "every frame would be resized twice; set data.image_size to null (each "
                                "sensor resizes its own frames) or to the sensors' size")


def _generalist_source(record: dict[str, Any] | None) -> str:
    if record is None:
        return "no generalist (specialist-only)"
    return ("generalist online " if record.get("online") else "generalist cache ") + str(record["hash"])


def _prepare_run_dir(out: Path, resume: bool, overwrite: bool, rank: int, dataset: Path | None = None) -> None:
    from robodual_core.outputs import prepare_run_dir

    if resume and overwrite:
        raise RobodualError("--resume and --overwrite contradict each other; pass one")
    if rank == 0:  # never the --dataset, inside it or holding it; --overwrite deletes only a run robodual wrote
        prepare_run_dir(out, inputs=[dataset], overwrite=overwrite)
    if resume and not (out / "checkpoints").is_dir():
        raise RobodualError(f"--resume: run folder '{out}' has no checkpoints/ to continue from")


def train(dataset: Path, out: Path, config: Path | None = None, overrides: list[str] | None = None,
          generalist_cache: str | None = None, resume: bool = False, overwrite: bool = False,
          show_progress: bool = True, generalist: str | Path | None = None,
          generalist_pooling: str = "none", log: list[str] | None = None) -> dict[str, float]:
    """``robodual train specialist``: build the run (:func:`build_trainer`) and train it to the end (``log``: the
    experiment trackers fed its metrics, robodual_core.tracking)."""
    from robodual_core.tracking import fit_tracked

    trainer = build_trainer(dataset, out, config, overrides, generalist_cache=generalist_cache, resume=resume,
                            overwrite=overwrite, show_progress=show_progress, generalist=generalist,
                            generalist_pooling=generalist_pooling)
    return fit_tracked(trainer, list(log or []), "train specialist", resume=resume)


def _device_images(cfg: Any) -> bool:
    """``data.device_images``: convert and resize image frames on the training device (auto: on CUDA)."""
    from robodual_core.training import resolve_device

    setting = cfg.data.device_images
    return setting == "on" or (setting == "auto" and resolve_device(cfg.trainer.device).type == "cuda")


def _attach_feature_caches(model: Any, ds: Any, dataset: Path, cfg: Any, rank: int) -> None:
    """``data.feature_cache``: every frozen-backbone sensor trains on its backbone features computed once per
    stored frame (built into the store on first use, resumable; robodual_core.data.feature_cache)."""
    from robodual_core.data.feature_cache import build_feature_cache
    from robodual_core.training import resolve_device

    device = resolve_device(cfg.trainer.device)
    size = (cfg.data.image_size, cfg.data.image_size) if cfg.data.image_size else None
    cached: dict[str, str] = {}
    for name, enc in model.sensors.items():
        fingerprint = enc.feature_fingerprint(cfg.data.image_size) if hasattr(enc, "feature_fingerprint") else ""
        if not fingerprint:
            continue  # trainable (or a plugin without cached features): encoded from frames every step
        key = enc.keys[0]
        if rank == 0:
            from rich.console import Console

            Console(stderr=True).print(f"[bold]feature cache[/]: {name} ({key}) -> features/{fingerprint}")
            backbone = enc.to(device)
            build_feature_cache(dataset, key, ds.modalities[key], fingerprint,
                                lambda x, backbone=backbone: backbone.backbone_features(x.to(device)),
                                ds.normalizer, size, dtype=cfg.data.feature_dtype, sensor=name)
        cached[name] = fingerprint
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    still_read = {k for name, enc in model.sensors.items() if name not in cached for k in enc.keys}
    ds.attach_features(cached, drop_keys=[model.sensors[n].keys[0] for n in cached
                                          if model.sensors[n].keys[0] not in still_read])


def _chain(first: Any, then: Any) -> Any:
    if then is None:
        return first
    return lambda batch: then(first(batch))


def build_trainer(dataset: Path, out: Path, config: Path | None = None, overrides: list[str] | None = None,
                  generalist_cache: str | None = None, resume: bool = False, overwrite: bool = False,
                  show_progress: bool = True, generalist: str | Path | None = None,
                  generalist_pooling: str = "none") -> Any:
    """The :class:`~robodual_core.training.Trainer` of a specialist run as ``robodual train specialist``
    sets it up (config, sensors fitted to the store, generalist cache or online generalist, run folder
    with config.json), not yet trained."""
    from robodual_core.data import WindowDataset, open_dataset
    from robodual_core.outputs import mark_output
    from robodual_core.plugins import registry
    from robodual_core.training import Trainer, init_distributed, seed_everything

    if generalist_cache and generalist:
        raise RobodualError("--generalist-cache and --generalist both give generalist outputs; pass one")
    if generalist and generalist_pooling not in POOLINGS:
        raise RobodualError(f"--generalist-pooling is {generalist_pooling!r}; expected one of {', '.join(POOLINGS)}")
    init_distributed()
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    dataset, out = Path(dataset), Path(out)
    _prepare_run_dir(out, resume, overwrite, rank, dataset)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()  # other ranks must not see a run folder that rank 0 is deleting
    base = None
    if resume and config is None and (out / "config.json").is_file():
        base = {k: v for k, v in read_config_file(out / "config.json").items() if k in ("model", "data", "trainer")}
        if isinstance(base.get("model"), dict):
            base["model"] = saved_specialist(base["model"])  # what an older run trained with
    cfg = load_config(SpecialistTrainConfig, config, overrides, base=base)

    store = open_dataset(dataset)
    if "action" not in store.keys:
        raise RobodualError(f"dataset '{dataset}' has no 'action' key; keys: {', '.join(store.keys)}")
    # data.normalization is keyed by the store's keys: a typo would otherwise leave its key at the default mode
    unknown = sorted(set(cfg.data.normalization) - set(store.keys))
    if unknown:
        raise ConfigError(f"unknown config key 'data.normalization.{unknown[0]}'; accepted keys under "
                          f"data.normalization (the keys of '{dataset}'): {', '.join(sorted(store.keys))}")
    cfg = _fit_default_sensors(cfg, store.keys, dataset, rank)
    model_cfg = dataclasses.replace(cfg.model, action_dim=int(store.array("action").shape[-1]),
                                    proprio_dim=int(store.array("proprio").shape[-1]) if "proprio" in store.keys else 0)
    transform, gen_meta = None, None
    if generalist:
        transform, gen_meta = online_generalist(store, generalist, generalist_pooling)
        probe = transform.outputs([0])
        model_cfg = dataclasses.replace(model_cfg, generalist_dim=int(probe.task_latents.shape[-1]),
                                        k_g=int(probe.actions.shape[1]))
    elif generalist_cache:
        ckpt_hash, cache = resolve_generalist_cache(dataset, generalist_cache)
        transform = AttachGeneralist(cache)
        probe = cache.get(torch.zeros(1, dtype=torch.long))
        model_cfg = dataclasses.replace(model_cfg, generalist_dim=int(probe.task_latents.shape[-1]),
                                        k_g=int(probe.actions.shape[1]))
        gen_meta = generalist_record(ckpt_hash, cache)
    elif model_cfg.generalist_dim:
        model_cfg = dataclasses.replace(model_cfg, generalist_dim=0)  # no generalist outputs to condition on
    cfg = dataclasses.replace(cfg, model=model_cfg)

    seed_everything(cfg.trainer.seed)  # the fresh weights follow the run's seed (same on every rank)
    model = registry("specialists").get(cfg.model.family)(cfg.model)  # the family the config names
    _check_image_sizes(model, cfg.data.image_size)
    image_keys = [k for k in model.obs_keys if k in store.keys]
    history = max([int(getattr(enc, "history", 0) or 0) for enc in model.sensors.values()] + [0])
    ds = WindowDataset(dataset, obs_keys=image_keys, horizon=cfg.model.k_s, k_g=cfg.model.k_g, history=history,
                       image_size=cfg.data.image_size, split="train", val_ratio=cfg.data.val_ratio,
                       seed=cfg.trainer.seed, normalization=cfg.data.normalization, augment_tau=cfg.data.augment_tau,
                       raw_images=_device_images(cfg), full_check=cfg.data.full_check)
    if cfg.data.feature_cache:
        _attach_feature_caches(model, ds, dataset, cfg, rank)
    if ds.raw_images:  # stored frames travel (pinned, uint8) and are converted on the device, then conditioned
        transform = _chain(ds.prepare_batch_images, transform)
    model.normalizer = ds.normalizer
    # how the loader prepares each observation key: the runtime applies the same (robodual_core.data.preprocess)
    from robodual_core.data.preprocess import PREPROCESSING_FILE, Preprocessing

    model.preprocessing = Preprocessing({k: ds.modalities[k] for k in image_keys if k in ds.modalities},
                                        cfg.data.image_size)
    extra_json: dict[str, Any] = {"normalizer": ds.normalizer.to_dict(),
                                  PREPROCESSING_FILE: model.preprocessing.to_dict()}
    if gen_meta is not None:
        extra_json["generalist"] = gen_meta
    trainer = Trainer(model, ds, cfg.trainer, out, extra_json=extra_json, batch_transform=transform,
                      show_progress=show_progress)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        mark_output(out, "run")  # a later --overwrite recognises the folder as a run robodual wrote
        # the store path travels with the run: evaluators read its image size, servers its observation spec
        dump_config({"dataset": str(Path(dataset).resolve()), **to_dict(cfg)}, out / "config.json")
        from rich.console import Console

        Console(stderr=True).print(
            f"specialist: {sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6:.2f}M trainable parameters, conditioner "
            f"'{cfg.model.conditioner}', sensors {[s.name for s in cfg.model.sensors]}, "
            f"{_generalist_source(gen_meta)}; "
            f"{len(ds)} training windows")
    return trainer
