"""``robodual dataset export lerobot`` and ``robodual bench lerobot`` (heavy imports inside the functions).

``robodual dataset convert lerobot`` is the converter's own command
(:meth:`robodual_envs.lerobot.convert.LeRobotConverter.add_command`).
"""

from __future__ import annotations

import json
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
