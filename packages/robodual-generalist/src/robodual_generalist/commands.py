"""CLI commands of the generalist: ``train generalist``, ``generalist merge``, ``generalist cache``,
``bench generalist``. Heavy libraries are imported inside the commands (``robodual --help`` stays light).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import typer

from robodual_core.errors import RobodualError


def _console(stderr: bool = True) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, soft_wrap=True)


def _progress() -> Any:
    from robodual_core.progress import progress_bar

    return progress_bar()


def _clear_run_dir(out: Path) -> None:
    if not out.exists():
        return
    looks_like_run = (out / "checkpoints").is_dir() or (out / "config.json").is_file() or not any(out.iterdir())
    if not looks_like_run:
        raise RobodualError(f"--overwrite refuses to delete '{out}': it is not a run folder (no config.json or "
                            "checkpoints/); choose another --out")
    shutil.rmtree(out)


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# -- train -----------------------------------------------------------------------------------------
def resolve_train_config(config: Path | None, sets: list[str], base: str | None, steps: int | None,
                         saved: Path | None = None) -> Any:
    """Defaults (+ tiny defaults when the base is tiny) < saved run config < --config < --set/--base/--steps."""
    from robodual_core.config import load_config, read_config_file
    from robodual_generalist.config import TINY_TRAIN_DEFAULTS, GeneralistTrainConfig, stored_model_config

    overrides = list(sets)
    if base is not None:
        overrides.append(f"model.base={base}")
    if steps is not None:
        overrides.append(f"trainer.steps={steps}")
    prior = read_config_file(saved) if saved is not None and saved.is_file() else {}
    prior.pop("dataset", None)
    if isinstance(prior.get("model"), dict):
        prior["model"] = stored_model_config(prior["model"])
    probe = load_config(GeneralistTrainConfig, config, overrides, base=prior)
    start = _deep_merge(TINY_TRAIN_DEFAULTS, prior) if probe.model.base == "tiny" else prior
    return load_config(GeneralistTrainConfig, config, overrides, base=start)


def train_generalist(
    dataset: Path = typer.Option(..., "--dataset", help="robodual Zarr store to train on."),
    out: Path = typer.Option(..., "--out", help="Run folder (config.json, metrics.jsonl, checkpoints/)."),
    config: Path | None = typer.Option(None, "--config", help="YAML/TOML/JSON config (model/data/trainer)."),
    sets: list[str] = typer.Option([], "--set", help="Config override key=value, e.g. trainer.lr=1e-4 (repeatable)."),
    base: str | None = typer.Option(None, "--base", help="'tiny' (CPU demo model), a local OpenVLA-format folder "
                                    "or a local Hugging Face VLM folder (AutoModelForImageTextToText)."),
    steps: int | None = typer.Option(None, "--steps", help="Optimizer steps (trainer.steps)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its latest checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete the run in --out and start again."),
    seed: int | None = typer.Option(None, "--seed", help="Trainer seed (trainer.seed)."),
) -> None:
    """Fine-tune the generalist (OpenVLA-style action-chunk tokens; LoRA on a base, full training on 'tiny').

    With '--base tiny' the tiny defaults apply (full training, lr 1e-3, 300 steps) under --config/--set.
    """
    from robodual_core.config import dump_config, to_dict
    from robodual_core.data import WindowDataset
    from robodual_core.training import Trainer, init_distributed, seed_everything
    from robodual_generalist.families import build_generalist

    if resume and overwrite:
        raise RobodualError("--resume and --overwrite contradict each other; pass one")
    if overwrite:
        _clear_run_dir(out)
    if seed is not None:
        sets = [*sets, f"trainer.seed={seed}"]
    cfg = resolve_train_config(config, sets, base, steps, saved=out / "config.json" if resume else None)
    init_distributed()
    m = cfg.model
    ds = WindowDataset(dataset, obs_keys=[m.image_key], horizon=m.k_g, k_g=m.k_g, image_size=None, split="train",
                       val_ratio=cfg.data.val_ratio, seed=cfg.data.split_seed, normalization={"action": "q99"},
                       augment_tau=False)
    seed_everything(cfg.trainer.seed)  # the model's fresh weights (LoRA adapters, a tiny base) follow the seed too
    model = build_generalist(m, action_dim=ds.action_dim)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    out.mkdir(parents=True, exist_ok=True)
    dump_config({"dataset": str(dataset), **to_dict(cfg)}, out / "config.json")
    family = model.robodual_config()["family"]
    _console().print(f"generalist: family={family} base={m.base} lora={m.lora} params={n_all / 1e6:.2f}M "
                     f"trainable={n_train / 1e6:.2f}M samples={len(ds)} action_dim={ds.action_dim}")
    trainer = Trainer(model, ds, cfg.trainer, out,
                      extra_json={"normalizer": ds.normalizer.to_dict(),
                                  "generalist": {"dataset": str(dataset), "image_key": m.image_key,
                                                 "k_g": m.k_g, "action_dim": ds.action_dim}})
    last = trainer.fit(resume=resume)
    _console().print(f"done: {out} " + " ".join(f"{k}={v:.4g}" for k, v in last.items()
                                                   if isinstance(v, float | int)))


# -- merge -----------------------------------------------------------------------------------------
def merge(
    run: Path = typer.Argument(..., help="Generalist run folder or checkpoint folder."),
    out: Path = typer.Option(..., "--out", help="Output OpenVLA-format folder."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
) -> None:
    """Merge LoRA adapters into the base weights and write a standalone folder (OpenVLA format for the native
    family, the Hugging Face layout for hf_vlm)."""
    from robodual_generalist.export import export_merged

    if out.exists() and not overwrite:
        raise RobodualError(f"'{out}' exists; pass --overwrite to replace it")
    path = export_merged(run, out)
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
    """Run the generalist (free-running) on every step of a store and cache its outputs in the store."""
    from robodual_generalist.caching import build_cache

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
    json_out: bool = typer.Option(False, "--json", help="Print the report on stdout."),
) -> None:
    """Tiny generalist: chunk latency and action tokens/s (batch 1 and 8, KV cache on/off); specialist training
    steps/s with the generalist cache vs the generalist online."""
    import torch

    from robodual_generalist.bench import run_bench

    if threads is not None:
        torch.set_num_threads(threads)

    report = run_bench(out, repeats=repeats, device=device, train_steps=train_steps, compile=compile)
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
