"""The ``robodual study latency`` command (its work in :mod:`robodual_cli.commands.study.latency`, imported lazily)."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer


def register(study: typer.Typer, load: Callable[..., Any], flags_of: Callable[..., dict], done: Callable[..., None],
             trackers: Callable[[list[str]], list[str]], log_help: str) -> None:
    """The command on ``study``, with the study group's shared helpers (passed in: this module is imported by the
    group's package, so it does not import it back)."""

    @study.command("latency")
    def latency(
        from_dir: Path = typer.Option(..., "--from", help="A finished `robodual study data-efficiency` folder (read "
                                      "only): its generalist, dual specialists, data and placements are reused."),
        out_dir: Path = typer.Option(Path("study_latency"), "--out", help="The study folder (resumable)."),
        quick: bool = typer.Option(False, "--quick", help="Two generalist latencies and d = 2: checks the pipeline."),
        scale: int | None = typer.Option(None, "--scale", help="Demonstrations per task (a scale of the base study; "
                                         "default its smallest)."),
        seeds: str | None = typer.Option(None, "--seeds", help="Training seeds of the base study's dual runs."),
        config: Path | None = typer.Option(None, "--config", help="YAML/TOML/JSON file of LatencyStudyConfig keys."),
        overrides: list[str] = typer.Option([], "--set", help="Override a config key, e.g. "
                                            "--set generalist_latencies=[0,16]."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Delete the study folder's results and start again."),
        log: list[str] = typer.Option([], "--log", help=log_help, callback=trackers),
    ) -> None:
        """Success and chunk-boundary smoothness under latency in control steps: the paper's runtime, no tau
        augmentation, naive chunk switching, inference- and training-time real-time chunking, the generalist
        alone; L_g in {0, 8, 16, 32} x d in {0, 1, 2, 4} by default."""
        import robodual_cli.commands.study.latency as lt
        from robodual_cli.commands.study.ablations import load_base
        from robodual_cli.commands.study.common import StudyFolder
        from robodual_core.config import to_dict

        flags = {k: v for k, v in flags_of(None, None, seeds).items() if k == "train_seeds"}
        flags.update({"base_study": str(from_dir), "scale": scale})
        cfg_in = load(lt.LatencyStudyConfig, lt.QUICK, quick, config, overrides, flags)
        # the base need not be finished: the sweep reads only its data, generalist and one dual arm's runs
        base = load_base(from_dir, needs=lambda b: lt.base_stages(lt.check(copy.deepcopy(cfg_in), b), b))
        cfg = lt.check(cfg_in, base)
        folder = StudyFolder(out_dir, lt.STUDY, {**to_dict(cfg), "quick": quick}, overwrite=overwrite,
                             inputs=(from_dir,), defaults=to_dict(lt.LatencyStudyConfig()))
        folder.log = tuple(log)
        t0 = time.perf_counter()
        result = lt.run(cfg, base, folder)
        done(folder, lt.report(folder, cfg, result, quick), t0)
