"""``robodual train specialist`` and ``robodual bench specialist`` (heavy imports inside the functions)."""

from __future__ import annotations

from pathlib import Path

import typer

from robodual_core.tracking import LOG_HELP


def train_specialist(
    dataset: Path = typer.Option(..., "--dataset", help="A robodual Zarr store."),
    out: Path = typer.Option(..., "--out", help="Run folder (config.json, metrics.jsonl, checkpoints/)."),
    config: Path | None = typer.Option(None, "--config", help="YAML/TOML/JSON config (SpecialistTrainConfig)."),
    overrides: list[str] = typer.Option([], "--set", help="Override a config key, e.g. model.depth=4 (repeatable)."),
    generalist_cache: str | None = typer.Option(
        None, "--generalist-cache",
        help="Condition on cached generalist outputs in the store: 'auto' for the only one, a cache hash, or the "
        "generalist run or checkpoint folder a cache was built from (`robodual dataset info` lists them)."),
    generalist: Path | None = typer.Option(
        None, "--generalist", help="Condition on a generalist run/checkpoint run online on every batch (slow; "
        "`robodual generalist cache` once and --generalist-cache is the fast way)."),
    generalist_pooling: str = typer.Option("none", "--generalist-pooling",
                                           help="Latent pooling with --generalist: none, step or mean."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its latest checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete an existing run in --out first."),
    steps: int | None = typer.Option(None, "--steps", help="Shortcut for --set trainer.steps=N."),
    seed: int | None = typer.Option(None, "--seed", help="Shortcut for --set trainer.seed=S."),
    workers: int | None = typer.Option(None, "--workers", help="DataLoader workers (trainer.num_workers)."),
    log: list[str] = typer.Option([], "--log", help=LOG_HELP),
) -> None:
    """Train the DiT specialist (paper 3.2/3.3); runs under torchrun with DDP."""
    from robodual_core.tracking import parse_log
    from robodual_specialist.train import train

    trackers = parse_log(log)

    if steps is not None and steps < 1:  # refused at the flag, before a run folder is touched
        from robodual_core.errors import ConfigError

        raise ConfigError(f"--steps {steps}: config key 'trainer.steps' must be an integer >= 1, found {steps}")
    extra = list(overrides)
    if steps is not None:
        extra.append(f"trainer.steps={steps}")
    if seed is not None:
        extra.append(f"trainer.seed={seed}")
    if workers is not None:
        extra.append(f"trainer.num_workers={workers}")
    train(dataset, out, config=config, overrides=extra, generalist_cache=generalist_cache, resume=resume,
          overwrite=overwrite, generalist=generalist, generalist_pooling=generalist_pooling, log=trackers)


def bench_specialist(
    out: Path = typer.Option(Path("bench/specialist.json"), "--out", help="JSON report path."),
    repeats: int = typer.Option(10, "--repeats", help="Timed repeats per measurement."),
    train_batch: int = typer.Option(64, "--train-batch", help="Batch size of the training-step measurement."),
    train_steps: int = typer.Option(3, "--train-steps", help="Timed training steps."),
    generalist_tokens: int = typer.Option(100, "--generalist-tokens", help="Generalist latent tokens (task + action)."),
    generalist_dim: int = typer.Option(4096, "--generalist-dim", help="Width of the generalist latents."),
    threads: int | None = typer.Option(None, "--threads", help="torch threads (default: torch's)."),
    quick: bool = typer.Option(False, "--quick", help="Fewer repeats and no training measurement (smoke run)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or auto (the anchor is a CPU figure)."),
    batch_sizes: str = typer.Option("1,8", "--batch-sizes",
                                    help="Control-loop batch sizes to time, comma-separated; 1 must be among them "
                                         "(the anchor and the targets are batch-1 figures)."),
    json_out: bool = typer.Option(False, "--json", help="Print the report on stdout."),
) -> None:
    """Latency, FLOPs and training throughput of the specialist at paper settings."""
    from robodual_core.config import parse_int_list
    from robodual_core.errors import ConfigError
    from robodual_specialist.bench import run_bench

    sizes = list(dict.fromkeys(parse_int_list(batch_sizes, "--batch-sizes", minimum=1)))
    if 1 not in sizes:
        raise ConfigError(f"--batch-sizes: expected 1 among the sizes (the anchor and the targets are batch-1 "
                          f"figures), found '{batch_sizes}'")
    report = run_bench(out, repeats=repeats, train_batch=train_batch, train_steps=train_steps,
                       generalist_tokens=generalist_tokens, generalist_dim=generalist_dim, threads=threads,
                       quick=quick, device=device, batch_sizes=tuple(sizes))
    if json_out:
        import json

        typer.echo(json.dumps(report, indent=2))
