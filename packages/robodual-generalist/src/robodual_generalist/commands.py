"""CLI commands of the generalist: ``train generalist``, ``generalist merge``, ``generalist cache``,
``bench generalist``. Heavy libraries are imported inside the commands (``robodual --help`` stays light).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from robodual_core.errors import RobodualError
from robodual_core.tracking import LOG_HELP
from robodual_generalist.families import resolve_train_config

__all__ = ["bench_generalist", "cache", "merge", "resolve_train_config", "select_family", "train_generalist"]


def _console(stderr: bool = True) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, soft_wrap=True)


def _progress() -> Any:
    from robodual_core.progress import progress_bar

    return progress_bar()


def _clear_run_dir(out: Path, dataset: Path | None = None, overwrite: bool = True) -> None:
    """Never the --dataset, inside it or holding it; with ``overwrite``, delete a run robodual wrote (only)."""
    from robodual_core.outputs import prepare_run_dir

    prepare_run_dir(out, inputs=[dataset], overwrite=overwrite)


# -- train -----------------------------------------------------------------------------------------
def _requested(config: Path | None, overrides: list[str], prior: dict[str, Any], key: str, default: str) -> str:
    """``model.<key>`` as the run would resolve it (prior < --config < --set), read before any family's typed
    config exists: the family (and so the config class) depends on it."""
    from robodual_core.config import parse_override, read_config_file

    model = prior.get("model")
    value = model.get(key, default) if isinstance(model, dict) else default
    if config is not None:
        model = read_config_file(config).get("model")
        if isinstance(model, dict) and key in model:
            value = model[key]
    for item in overrides:
        k, v = parse_override(item)
        if k == f"model.{key}":
            value = v
    return str(value)


def select_family(config: Path | None, overrides: list[str], prior: dict[str, Any]) -> tuple[str, Any]:
    """``(name, GeneralistFamily)`` that ``model.family`` names (``auto``: openvla or hf_vlm by ``model.base``)."""
    from robodual_core.errors import RegistryError
    from robodual_core.families import generalist_family
    from robodual_core.plugins import registry
    from robodual_generalist.families import resolve_family

    name = _requested(config, overrides, prior, "family", "auto")
    if name == "auto":
        name = resolve_family(_requested(config, overrides, prior, "base", "tiny"))
    if name not in registry("generalists"):
        raise RegistryError(f"config key 'model.family' is {name!r}; expected auto or a registered generalist "
                            f"family: {', '.join(registry('generalists').names())}")
    return name, generalist_family(name)


def resolved_config(config: dict[str, Any], family: str) -> dict[str, Any]:
    """A built-in family's train config as the run's config.json shows it: ``model.family`` the family the run
    resolved (not ``auto``), and no ``model.tiny`` block unless the base is ``tiny`` (it sizes nothing else)."""
    from robodual_generalist.families import AUTO_FAMILIES

    model = config.get("model")
    if family not in AUTO_FAMILIES or not isinstance(model, dict):
        return config
    model = {**model, "family": family}
    if model.get("base") != "tiny":
        model.pop("tiny", None)
    return {**config, "model": model}


def train_generalist(
    dataset: Path = typer.Option(..., "--dataset", help="robodual Zarr store to train on."),
    out: Path = typer.Option(..., "--out", help="Run folder (config.json, metrics.jsonl, checkpoints/)."),
    config: Path | None = typer.Option(None, "--config", help="YAML/TOML/JSON config (model/data/trainer)."),
    sets: list[str] = typer.Option([], "--set", help="Config override key=value, e.g. trainer.lr=1e-4 (repeatable); "
                                   "model.family=NAME trains any registered generalist family."),
    base: str | None = typer.Option(None, "--base", help="'tiny' (CPU demo model), a local OpenVLA-format folder "
                                    "or a local Hugging Face VLM folder (AutoModelForImageTextToText), or a Hugging "
                                    "Face model id org/name[@revision] found in the local Hugging Face cache."),
    steps: int | None = typer.Option(None, "--steps", help="Optimizer steps (trainer.steps)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its latest checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete the run in --out and start again."),
    seed: int | None = typer.Option(None, "--seed", help="Trainer seed (trainer.seed)."),
    init: Path | None = typer.Option(None, "--init", help="Fine-tune a trained generalist: start from the weights "
                                     "of this run or checkpoint folder (its model config, a fresh optimizer and "
                                     "schedule, the normalization statistics of --dataset)."),
    revision: str | None = typer.Option(None, "--revision", help="Revision (branch, tag or commit) of a Hugging Face "
                                        "model id given as --base/model.base (same as org/name@REV)."),
    log: list[str] = typer.Option([], "--log", help=LOG_HELP),
) -> None:
    """Train a generalist of any registered family (default: OpenVLA-style action-chunk tokens; LoRA on a base,
    full training on 'tiny').

    With '--base tiny' the tiny defaults apply (full training, lr 1e-3, 300 steps) under --config/--set.
    '--set model.family=NAME' selects another registered family (`robodual plugins list`), with its own config.
    '--init RUN' fine-tunes a trained generalist on --dataset (e.g. a broad-corpus generalist on target tasks).
    """
    from robodual_core.config import dump_config, read_config_file, to_dict
    from robodual_core.data import WindowDataset
    from robodual_core.outputs import mark_output
    from robodual_core.tracking import fit_tracked, parse_log
    from robodual_core.training import Trainer, init_distributed, seed_everything
    from robodual_generalist.families import train_overrides

    if steps is not None and steps < 1:  # refused at the flag, before a run folder is touched
        from robodual_core.errors import ConfigError

        raise ConfigError(f"--steps {steps}: config key 'trainer.steps' must be an integer >= 1, found {steps}")
    if resume and overwrite:
        raise RobodualError("--resume and --overwrite contradict each other; pass one")
    trackers = parse_log(log)
    if resume and init is not None:
        raise RobodualError("--init and --resume contradict each other: --resume continues the run in --out (which "
                            "remembers its --init), --init starts a new run from another run's weights")
    _clear_run_dir(out, dataset, overwrite)
    overrides = train_overrides(sets, base, steps, seed)
    saved = out / "config.json"
    prior = read_config_file(saved) if resume and saved.is_file() else {}
    prior.pop("dataset", None)
    start = prior.pop("init", None)
    init_ckpt = Path(start["checkpoint"]) if isinstance(start, dict) and "checkpoint" in start else None
    if init is not None:
        init_ckpt, prior = init_source(init, base)
    base_source = prior.pop("base_source", None)
    hub_base = hub_base_override(config, overrides, prior, revision)
    if hub_base is not None:  # a Hugging Face id, resolved from the local cache: the run records the snapshot folder
        overrides.append(f"model.base={hub_base.path}")
        base_source = hub_base.source()
    name, family = select_family(config, overrides, prior)
    cfg = family.train_config(config, overrides, prior)
    init_distributed()
    m = cfg.model
    ds = WindowDataset(dataset, obs_keys=[m.image_key], horizon=m.k_g, k_g=m.k_g, image_size=None, split="train",
                       val_ratio=cfg.data.val_ratio, seed=cfg.data.split_seed, normalization={"action": "q99"},
                       augment_tau=False)
    seed_everything(cfg.trainer.seed)  # the model's fresh weights (LoRA adapters, a tiny base) follow the seed too
    model = family.build(m, action_dim=ds.action_dim)
    if init_ckpt is not None:  # before fit: a resumed run's own checkpoint replaces these weights
        load_init_weights(model, name, init_ckpt, ds.action_dim)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    out.mkdir(parents=True, exist_ok=True)
    mark_output(out, "run")  # a later --overwrite recognises the folder as a run robodual wrote
    started = {"init": {"checkpoint": str(init_ckpt)}} if init_ckpt is not None else {}
    if base_source is not None:
        started["base_source"] = base_source
    dump_config({"dataset": str(dataset), **started, **resolved_config(to_dict(cfg), name)}, out / "config.json")
    where = f" base={m.base} lora={m.lora}" if name in ("openvla", "hf_vlm") else ""
    _console().print(f"generalist: family={name}{where} params={n_all / 1e6:.2f}M "
                     f"trainable={n_train / 1e6:.2f}M samples={len(ds)} action_dim={ds.action_dim}")
    trainer = Trainer(model, ds, cfg.trainer, out,
                      extra_json={"normalizer": ds.normalizer.to_dict(),
                                  "generalist": {"dataset": str(dataset), "image_key": m.image_key,
                                                 "k_g": m.k_g, "action_dim": ds.action_dim}})
    last = fit_tracked(trainer, trackers, "train generalist", resume=resume)
    _console().print(f"done: {out} " + " ".join(f"{k}={v:.4g}" for k, v in last.items()
                                                   if isinstance(v, float | int)))


def hub_base_override(config: Path | None, overrides: list[str], prior: dict[str, Any],
                      revision: str | None) -> Any:
    """The cached Hugging Face model (:class:`robodual_core.hub.HubModel`) when ``model.base`` (--base, --set, the
    config file) is a Hub id (``org/name[@rev]``) and not a local folder; None for 'tiny' or a folder."""
    from robodual_core.hub import is_hub_ref, resolve_hub_model

    requested = _requested(config, overrides, prior, "base", "tiny")
    if requested == "tiny" or not is_hub_ref(requested):
        if revision is not None:
            raise RobodualError(f"--revision '{revision}' applies to a Hugging Face model id given as --base "
                                f"(org/name); the base is '{requested}'")
        return None
    return resolve_hub_model(requested, revision, what="--base",
                             folder_form="a local OpenVLA-format or Hugging Face model folder")


def init_source(init: Path, base: str | None) -> tuple[Path, dict[str, Any]]:
    """The checkpoint ``--init`` names (a run folder's latest) and the train-config prior it implies: the
    ``model`` block of the run that trained it (its architecture; the model_config's when the run's config.json
    is gone)."""
    from robodual_core.checkpoint import read_checkpoint_meta, resolve_checkpoint
    from robodual_core.config import read_config_file

    if base is not None:
        raise RobodualError("--init and --base contradict each other: --init keeps the model (and base) of the "
                            "run it starts from")
    ckpt = resolve_checkpoint(init)
    meta = read_checkpoint_meta(ckpt, kind="generalist")
    run_config = ckpt.parent.parent / "config.json"
    model = read_config_file(run_config).get("model") if run_config.is_file() else meta.get("model")
    if not isinstance(model, dict):
        raise RobodualError(f"--init '{init}': expected the model config of a trained generalist in "
                            f"'{run_config}' or '{ckpt / 'model_config.json'}', found none")
    return ckpt, {"model": model}


def load_init_weights(model: Any, family: str, ckpt: Path, action_dim: int) -> None:
    """Copy the weights of the generalist in ``ckpt`` into ``model`` (same family and architecture; checked,
    one-line errors)."""
    from robodual_core.checkpoint import load_state_checked, read_checkpoint_meta
    from robodual_core.families import generalist_family_of

    held, source_family = generalist_family_of(ckpt)
    if held != family:
        raise RobodualError(f"--init '{ckpt}' holds a '{held}' generalist; this run trains model.family "
                            f"'{family}' (drop the model.family override to keep the checkpoint's)")
    meta = read_checkpoint_meta(ckpt, kind="generalist")
    if "action_dim" in meta and int(meta["action_dim"]) != action_dim:
        raise RobodualError(f"--init '{ckpt}' predicts {meta['action_dim']}-dimensional actions; the dataset's "
                            f"actions have {action_dim} dimensions")
    source = source_family.from_checkpoint(ckpt, device="cpu")
    load_state_checked(model, source.state_dict(), ckpt)
    _console().print(f"generalist: initialised from {ckpt}")


# -- merge -----------------------------------------------------------------------------------------
def _is_merged_folder(path: Path) -> bool:
    """A merged folder written before the output marker: weights and the normalizer.json merge writes."""
    return (path / "normalizer.json").is_file() and any(path.glob("*.safetensors"))


def merge(
    run: Path = typer.Argument(..., help="Generalist run folder or checkpoint folder."),
    out: Path = typer.Option(..., "--out", help="Output folder: the family's standalone format (OpenVLA format "
                             "for openvla, the Hugging Face layout for hf_vlm)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
) -> None:
    """Merge LoRA adapters into the base weights and write a standalone folder in the run's family's format
    (OpenVLA format for openvla, the Hugging Face layout for hf_vlm; a family without merge says so)."""
    from robodual_core.outputs import check_output, mark_output
    from robodual_generalist.export import export_merged

    if out.exists() and not overwrite:
        raise RobodualError(f"'{out}' exists; pass --overwrite to replace it")
    # never the run itself, inside it or holding it; --overwrite replaces only a merged folder robodual wrote
    check_output(out, flag="--out", expect="folder", inputs=[run], overwrite=overwrite, legacy=_is_merged_folder,
                 what="a merged generalist folder")
    path = export_merged(run, out)
    mark_output(path, "merged-generalist")
    _console().print(f"merged generalist written to {path}")


# -- cache -----------------------------------------------------------------------------------------
def cache(
    policy: Path = typer.Option(..., "--policy", help="Generalist run/checkpoint folder or merged folder."),
    dataset: Path = typer.Option(..., "--dataset", help="robodual Zarr store to annotate."),
    batch_size: int = typer.Option(16, "--batch-size", help="Generalist batch size."),
    dtype: str = typer.Option("float16", "--dtype", help="Latent storage dtype: float16 or float32."),
    pooling: str = typer.Option("none", "--pooling",
                                help="Token pooling: none, step (action latents averaged per time step) or "
                                     "mean (task and action latents averaged to one token each)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, ..."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Recompute a complete cache."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable summary on stdout."),
) -> None:
    """Run the generalist (free-running, any registered family) on every step of a store and cache its outputs
    in the store."""
    from robodual_core.data.generalist_cache import build_cache
    from robodual_core.hub import cached_policy

    policy = cached_policy(policy, None, needs_out=False) or policy  # org/name[@rev]: from the Hugging Face cache
    summary = build_cache(policy, dataset, batch_size=batch_size, dtype=dtype, pooling=pooling, device=device,
                          overwrite=overwrite)
    if json_out:
        print(json.dumps(summary))
    else:
        _console(stderr=False).print(
            f"cache generalist/{summary['checkpoint_hash']} in {dataset}: {summary['num_steps']} steps, "
            f"{summary['bytes_per_step'] / 1024:.1f} KiB/step uncompressed, "
            f"{summary['bytes_uncompressed'] / 2**20:.1f} MiB total ({summary['bytes_on_disk'] / 2**20:.1f} MiB on disk)")


# -- bench -----------------------------------------------------------------------------------------
def bench_generalist(
    out: Path = typer.Option(Path("bench_generalist.json"), "--out", help="JSON report path."),
    repeats: int = typer.Option(5, "--repeats", help="Timed repeats per measurement."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda."),
    threads: int | None = typer.Option(None, "--threads", help="torch CPU threads (default: torch's choice)."),
    train_steps: int = typer.Option(40, "--train-steps", min=0, help="Timed specialist training steps of each trainer in "
                                    "the cache vs online comparison, taken in turn (0 skips it)."),
    compile: bool = typer.Option(False, "--compile", help="Also compare with trainer.compile (slower bench)."),
    size: str = typer.Option("tiny", "--size", help="tiny, or 7b: an OpenVLA-7B-sized generalist (random weights, "
                             "bf16; decoding figures only, with the card's memory floor on CUDA)."),
    json_out: bool = typer.Option(False, "--json", help="Print the report on stdout."),
) -> None:
    """Generalist decoding: chunk and single-action latency, ms/token and tokens/s at batch 1 and 8 for the static
    (graph-captured on CUDA), dynamic and no-cache decodings; with the tiny generalist also specialist training
    steps/s with the generalist cache vs the generalist online."""
    import torch

    from robodual_generalist.bench import run_bench

    if threads is not None:
        torch.set_num_threads(threads)

    report = run_bench(out, repeats=repeats, device=device, train_steps=train_steps, compile=compile,
                       model_size=size)
    if json_out:
        print(json.dumps(report))
        return
    con = _console(stderr=False)
    for row in report["results"]["decode"]:
        con.print(f"batch {row['batch']:>2} kv_cache={str(row['kv_cache']):5} chunk latency "
                  f"{row['chunk_latency_s'] * 1000:8.1f} ms  {row['action_tokens_per_s']:9.1f} action tokens/s")
    c = report["results"]["cache_vs_online"]
    con.print(f"conditioning per batch of {c['batch']}: online generalist {c['online_s'] * 1000:.1f} ms, cache read "
              f"{c['cache_s'] * 1000:.2f} ms -> cache {c['speedup']:.0f}x faster")
    t = report["results"].get("specialist_training")
    if t:
        for label, row in (("", t), (", trainer.compile", t.get("compiled"))):
            if row:
                con.print(f"specialist training (batch {t['batch']}{label}): {row['cache_steps_per_s']:.2f} steps/s "
                          f"with the cache, {row['online_steps_per_s']:.2f} with the generalist online -> "
                          f"{row['speedup']:.1f}x (target >= {t['target_speedup']:.0f}x; median step times of "
                          f"{t['steps']} steps each, taken in turn)")
        if "online_generalist_s" in t:
            size = t.get("params", {})
            con.print(f"  online step = generalist {t['online_generalist_s'] * 1000:.1f} ms + specialist "
                      f"{t['online_specialist_s'] * 1000:.1f} ms; cache step {1000 / t['cache_steps_per_s']:.1f} ms "
                      f"(generalist {size.get('generalist', 0) / 1e6:.2f}M parameters, specialist "
                      f"{size.get('specialist_trainable', 0) / 1e6:.2f}M trained)")
        big = t.get("larger_generalist")
        if big:
            layout = f"{big['tiny']['num_layers']} layers x {big['tiny']['hidden_size']}"
            con.print(f"with a generalist larger than the specialist ({layout}, {big['params']['generalist'] / 1e6:.2f}M "
                      f"parameters): {big['cache_steps_per_s']:.2f} steps/s with the cache, "
                      f"{big['online_steps_per_s']:.2f} online -> {big['speedup']:.1f}x (generalist "
                      f"{big['online_generalist_s'] * 1000:.1f} ms + specialist {big['online_specialist_s'] * 1000:.1f} ms "
                      "online; same rotation)")
        if "flat_params_speedup" in t:
            con.print(f"flat parameter buffers (trainer.flat_params): cache steps {t['flat_params_speedup']:.2f}x "
                      "faster than with one optimizer/EMA tensor per parameter")
    con.print(f"report: {out}")
