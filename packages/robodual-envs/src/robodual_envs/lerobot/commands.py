"""``robodual dataset export lerobot``, ``robodual bench lerobot`` and ``robodual bench lerobot-loader`` (heavy
imports inside the functions).

``robodual dataset convert lerobot`` is the converter's own command
(:meth:`robodual_envs.lerobot.convert.LeRobotConverter.add_command`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer


def export_command(
    src: Path = typer.Argument(..., help="A robodual Zarr store."),
    dst: Path = typer.Argument(..., help="Output LeRobot v3.0 dataset folder."),
    codec: str = typer.Option("auto", "--codec", help="auto (the codec of the LeRobot dataset the store came "
                              "from, falling back to h264 with a warning when PyAV cannot encode it; h264 for "
                              "other stores) | h264 | av1 | an FFmpeg video encoder name (libx264, libsvtav1, "
                              "libaom-av1, mpeg4)."),
    crf: int = typer.Option(None, "--crf", help="Constant rate factor (quality; lower is better)."),
    gop: int = typer.Option(2, "--gop", help="Keyframe interval in frames (LeRobot uses 2 for fast seeking)."),
    data_file_mb: float = typer.Option(100, "--data-file-mb", help="Start a new data parquet past this size."),
    video_file_mb: float = typer.Option(200, "--video-file-mb", help="Start a new mp4 past this size."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace DST when the new folder is complete."),
    json_out: bool = typer.Option(False, "--json", help="Print the export report as JSON on stdout."),
) -> None:
    """Export a Zarr store as a LeRobot v3.0 dataset (parquet + mp4 videos + meta)."""
    from rich.console import Console

    from robodual_envs.lerobot.export import export_lerobot

    report = export_lerobot(src, dst, codec=codec, crf=crf, gop=gop,
                            data_file_mb=data_file_mb, video_file_mb=video_file_mb, overwrite=overwrite,
                            progress=not json_out)
    for line in report["warnings"]:
        Console(stderr=True).print(f"warning: {line}", markup=False, soft_wrap=True)
    if json_out:
        print(json.dumps(report))
        return
    console = Console()
    console.print(f"wrote [bold]{report['path']}[/]: {report['episodes']} episodes, {report['frames']} frames "
                  f"(videos: {report['encoder'] or 'none'}, {report['seconds']:.1f} s)")
    for key, why in report["skipped"].items():
        console.print(f"not exported: {key} ({why})", markup=False)


def bench_command(
    out_file: Path = typer.Option(Path("bench_lerobot.json"), "--out", help="JSON report to write."),
    workers: str = typer.Option("1,2", "--workers", help="Comma-separated worker counts."),
    episodes: int = typer.Option(16, "--episodes"),
    length: int = typer.Option(150, "--length", help="Frames per episode."),
    size: int = typer.Option(224, "--size", help="Frame height and width."),
) -> None:
    """Frames/s of `dataset convert lerobot` (v3.0, H.264) with 1 and 2 worker processes."""
    from rich.console import Console

    from robodual_core.bench import write_report
    from robodual_envs.lerobot.bench import conversion_report

    counts = tuple(int(w) for w in workers.split(",") if w.strip())
    console = Console(stderr=True)
    with console.status("exporting a synthetic dataset and converting it back"):
        results = conversion_report(counts, episodes, length, size)
    write_report(out_file, "lerobot_convert", results)
    out = Console()
    for run in results["runs"]:
        cpu = run["cpu_ms_per_frame"]
        out.print(f"workers={run['workers']}: convert {run['frames_per_s']:.0f} frames/s, "
                  f"decode alone {run['decode_only_frames_per_s']:.0f} frames/s; CPU ms/frame: decode "
                  f"{cpu['decode']:.2f}, compress {cpu['compress']:.2f}, Python/zarr/rest {cpu['other']:.2f}")
    out.print(f"wrote {out_file}")


def loader_bench_command(
    lerobot_python: str = typer.Option(None, "--lerobot-python", help="Interpreter of an environment where lerobot "
                                       "imports (default: this one, when it has lerobot)."),
    data: Path = typer.Option(None, "--data", help="Store to compare on (default: a synthetic store shaped like the "
                              "demo's, 30 episodes, 2 RGB at 128 px)."),
    workers: str = typer.Option("0,1,2", "--workers", help="Comma-separated worker counts (auto: robodual's only)."),
    rounds: int = typer.Option(3, "--rounds", help="Rounds of every process in turn (the median is reported)."),
    seconds: float = typer.Option(3.0, "--seconds", help="Timed seconds per process, after two warm-up batches."),
    batch_size: int = typer.Option(32, "--batch-size"),
    busy: bool = typer.Option(False, "--busy/--no-busy", help="Also time every process beside a busy core (a "
                              "busy-loop process)."),
    out_file: Path = typer.Option(Path("bench_lerobot_loader.json"), "--out", help="JSON report to write."),
    notes: str = typer.Option(None, "--notes", help="Text kept in the report (the machine's load, say)."),
) -> None:
    """Samples/s of robodual's loader against LeRobotDataset (video and images) on the same episodes, per worker
    count, each timing a fresh process, the processes alternating."""
    from rich.console import Console

    from robodual_core.bench import write_report
    from robodual_core.data.loader import check_num_workers
    from robodual_core.errors import RobodualError
    from robodual_envs.lerobot.loader_bench import INSTALL_HINT, default_lerobot_python, lerobot_loader_report

    settings = tuple(w.strip().lower() for w in workers.split(",") if w.strip())
    if not settings:
        raise RobodualError(f"--workers is '{workers}'; expected comma-separated counts (0,1,2) or auto")
    for s in settings:
        check_num_workers(s, "--workers")
    if rounds < 1 or not seconds > 0 or batch_size < 1:
        raise RobodualError(f"--rounds ({rounds}), --seconds ({seconds}) and --batch-size ({batch_size}): expected "
                            ">= 1, > 0 and >= 1")
    if data is not None and not data.exists():
        raise RobodualError(f"--data {data}: no such store")
    python = lerobot_python or default_lerobot_python()
    if python is None:
        raise RobodualError(f"--lerobot-python: lerobot does not import in {sys.executable}. {INSTALL_HINT}")
    console = Console(stderr=True)
    with console.status("timing robodual and LeRobot in turn") as status:
        results = lerobot_loader_report(data, python, settings, rounds=rounds, seconds=seconds, batch=batch_size,
                                        conditions=("quiet", "busy") if busy else ("quiet",),
                                        progress=status.update)
    results["notes"] = notes
    write_report(out_file, "lerobot_loader", results)
    out = Console()
    for condition, c in results["conditions"].items():
        for lib, rates in c["samples_per_s"].items():
            out.print(f"{condition}, {lib}: samples/s by workers: "
                      + ", ".join(f"{w} {v:.0f}" for w, v in rates.items()))
        for lib, lead in c["robodual_over_lerobot"].items():
            out.print(f"{condition}, robodual over {lib}: "
                      + ", ".join(f"{w} workers {v:.1f}x" for w, v in lead.items() if v is not None))
    out.print(f"wrote {out_file}")
