"""``robodual study``: the paper's data- and training-efficiency claims (section 4.4, Table 4, Figure 5)
reproduced at CPU scale on the embedded Meta-World default, each as one resumable command.

Stages run as ordinary ``robodual`` commands in child processes (as in ``robodual demo``); a study folder
records the finished ones (``progress.json``) and skips them on rerun. Nothing here imports torch.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from robodual_cli.console import out
from robodual_core.errors import RobodualError

HELP = "Reproduce the paper's efficiency studies at CPU scale (resumable; reports with plots)."


def _load(cls: type, quick_base: dict, quick: bool, config: Path | None, overrides: list[str],
          flags: dict[str, object]) -> object:
    from robodual_core.config import load_config, to_dict

    base = {**to_dict(cls()), **(quick_base if quick else {})}
    base.update({k: v for k, v in flags.items() if v is not None})
    return load_config(cls, config, overrides, base=base)


def _flags(tasks: str | None, episodes: int | None, seeds: str | None) -> dict[str, object]:
    from robodual_core.config import parse_int_list

    if episodes is not None and episodes < 1:
        raise RobodualError(f"--episodes: expected a positive number of evaluation episodes per task, found {episodes}")
    flags: dict[str, object] = {"eval_episodes": episodes}
    if seeds is not None:
        values = parse_int_list(seeds, "--seeds")
        bad = [s for s in values if s < 0]
        if bad:
            raise RobodualError(f"--seeds: expected training seeds >= 0, found {bad[0]}")
        flags["train_seeds"] = values
    if tasks is not None:
        flags["tasks"] = [t for t in tasks.split(",") if t.strip()]
    return flags


STUDY_LOG_HELP = ("Experiment trackers for every training and evaluation stage: tensorboard, wandb (repeatable or "
                  "comma-separated; each stage's run folder holds its own, W&B runs grouped by study).")


def _trackers(values: list[str]) -> list[str]:
    """--log checked when the command line is parsed, before the study folder is touched."""
    from robodual_core.tracking import parse_log

    return parse_log(values)


def register(app: typer.Typer) -> None:
    from robodual_core.cli_groups import group

    study = group(app, "study")
    study.info.help = HELP
    _register_pretrain(study)
    from robodual_cli.commands.study.latency_command import register as register_latency

    register_latency(study, _load, _flags, _done, _trackers, STUDY_LOG_HELP)

    @study.command("data-efficiency")
    def data_efficiency(
        out_dir: Path = typer.Option(Path("study_data_efficiency"), "--out", help="The study folder (resumable)."),
        quick: bool = typer.Option(False, "--quick", help="A tiny run that checks the pipeline, not the result."),
        tasks: str | None = typer.Option(None, "--tasks", help="Target tasks, comma-separated (specialist's data)."),
        episodes: int | None = typer.Option(None, "--episodes", help="Evaluation episodes per task per seed."),
        seeds: str | None = typer.Option(None, "--seeds", help="Training seeds of the specialists, e.g. 0,1,2."),
        config: Path | None = typer.Option(None, "--config", help="YAML/TOML/JSON file of DataEfficiencyConfig keys."),
        overrides: list[str] = typer.Option([], "--set", help="Override a config key, e.g. --set demo_scales=[5,10]."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Delete the study folder's results and start again."),
        log: list[str] = typer.Option([], "--log", help=STUDY_LOG_HELP, callback=_trackers),
        interim: bool = typer.Option(False, "--interim", help="Run nothing: report the finished evaluations of a "
                                     "study still running or stopped (report-interim/, with every pre-registered "
                                     "comparison whose arms are done)."),
    ) -> None:
        """Table 4: success vs demonstrations per task for dual, specialist only, generalist only and a
        Diffusion-Policy-style baseline, the generalist pre-trained on a broad corpus."""
        from robodual_cli.commands.study import data_efficiency as de
        from robodual_cli.commands.study import report
        from robodual_cli.commands.study.common import StudyFolder
        from robodual_core.config import to_dict

        if interim and not (out_dir / "study.json").is_file():
            raise RobodualError(f"--interim: '{out_dir}' holds no study (no study.json); give the --out of a "
                                "data-efficiency study that has started")
        flags = _flags(tasks, episodes, seeds)
        flags["target_tasks"] = flags.pop("tasks", None)
        cfg = de.check(_load(de.DataEfficiencyConfig, de.QUICK, quick, config, overrides, flags))
        folder = StudyFolder(out_dir, de.STUDY, {**to_dict(cfg), "quick": quick}, overwrite=overwrite,
                             defaults=to_dict(de.DataEfficiencyConfig()))
        folder.log = tuple(log)
        t0 = time.perf_counter()
        if interim:
            path = report.interim_report(folder, cfg, de.interim(cfg, folder))
            print(path / "README.md")
            return
        result = de.run(cfg, folder)
        # a quick run extrapolates its measured rates to the full default study
        plan = report.plan_data_efficiency(de.check(de.DataEfficiencyConfig())) if quick else None
        path = report.data_efficiency_report(folder, cfg, result, quick, plan)
        _done(folder, path, t0)

    @study.command("training-efficiency")
    def training_efficiency(
        out_dir: Path = typer.Option(Path("study_training_efficiency"), "--out", help="The study folder (resumable)."),
        quick: bool = typer.Option(False, "--quick", help="A tiny run that checks the pipeline, not the result."),
        tasks: str | None = typer.Option(None, "--tasks", help="Tasks, comma-separated."),
        episodes: int | None = typer.Option(None, "--episodes", help="Evaluation episodes per task."),
        seeds: str | None = typer.Option(None, "--seeds", help="Training seeds of the specialists, e.g. 0,1,2."),
        config: Path | None = typer.Option(None, "--config",
                                           help="YAML/TOML/JSON file of TrainingEfficiencyConfig keys."),
        overrides: list[str] = typer.Option([], "--set",
                                            help="Override a config key, e.g. --set specialist_steps=500."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Delete the study folder's results and start again."),
        log: list[str] = typer.Option([], "--log", help=STUDY_LOG_HELP, callback=_trackers),
    ) -> None:
        """Figure 5: success against training seconds, continuing the generalist alone vs adding the
        specialist at several points of its training."""
        from robodual_cli.commands.study import report
        from robodual_cli.commands.study import training_efficiency as te
        from robodual_cli.commands.study.common import StudyFolder
        from robodual_core.config import to_dict

        cfg = te.check(_load(te.TrainingEfficiencyConfig, te.QUICK, quick, config, overrides,
                             _flags(tasks, episodes, seeds)))
        folder = StudyFolder(out_dir, te.STUDY, {**to_dict(cfg), "quick": quick}, overwrite=overwrite,
                             defaults=to_dict(te.TrainingEfficiencyConfig()))
        folder.log = tuple(log)
        t0 = time.perf_counter()
        result = te.run(cfg, folder)
        full = te.check(te.TrainingEfficiencyConfig())
        plan = report.plan_training_efficiency(full, len(te.checkpoints(full))) if quick else None
        path = report.training_efficiency_report(folder, cfg, result, quick, plan)
        _done(folder, path, t0)


    @study.command("ablations")
    def ablations(
        from_dir: Path = typer.Option(..., "--from", help="A finished `robodual study data-efficiency` folder (read "
                                      "only): its generalist, target data and evaluation placements are reused."),
        out_dir: Path = typer.Option(Path("study_ablations"), "--out", help="The study folder (resumable)."),
        quick: bool = typer.Option(False, "--quick", help="Two variants only: checks the pipeline, not the result."),
        scale: int | None = typer.Option(None, "--scale", help="Demonstrations per task (a scale of the base study; "
                                         "default its smallest)."),
        seeds: str | None = typer.Option(None, "--seeds", help="Training seeds of the variants, e.g. 0,1,2."),
        config: Path | None = typer.Option(None, "--config", help="YAML/TOML/JSON file of AblationConfig keys."),
        overrides: list[str] = typer.Option([], "--set", help="Override a config key, e.g. "
                                            "--set 'variants={\"dual/film\": [\"model.conditioner=film\"]}'."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Delete the study folder's results and start again."),
        log: list[str] = typer.Option([], "--log", help=STUDY_LOG_HELP, callback=_trackers),
    ) -> None:
        """Where the dual system loses, tested: variants of a data-efficiency study's policies at one scale
        (conditioner, conditioning sources, latency augmentation, guidance, budget) and its generalist fine-tuned
        on the target data, on the same evaluation placements."""
        from robodual_cli.commands.study import ablations as ab
        from robodual_cli.commands.study import report
        from robodual_cli.commands.study.common import StudyFolder
        from robodual_core.config import to_dict

        base = ab.load_base(from_dir)
        flags = {k: v for k, v in _flags(None, None, seeds).items() if k == "train_seeds"}
        flags.update({"base_study": str(from_dir), "scale": scale})
        cfg = ab.check(_load(ab.AblationConfig, ab.QUICK, quick, config, overrides, flags), base)
        folder = StudyFolder(out_dir, ab.STUDY, {**to_dict(cfg), "quick": quick}, overwrite=overwrite,
                             inputs=(from_dir,))
        folder.log = tuple(log)
        t0 = time.perf_counter()
        result = ab.run(cfg, base, folder)
        path = report.ablations_report(folder, cfg, base, result, quick)
        _done(folder, path, t0)


def _register_pretrain(study: typer.Typer) -> None:
    @study.command("pretrain")
    def pretrain(
        out_dir: Path = typer.Option(Path("study_pretrain"), "--out", help="The study folder (resumable)."),
        quick: bool = typer.Option(False, "--quick", help="A tiny run that checks the pipeline, not the result."),
        tasks: str | None = typer.Option(None, "--tasks", help="Broad corpus tasks: mt10, mt50 or names."),
        episodes: int | None = typer.Option(None, "--episodes", help="Evaluation episodes per task."),
        config: Path | None = typer.Option(None, "--config", help="YAML/TOML/JSON file of PretrainConfig keys."),
        overrides: list[str] = typer.Option([], "--set", help="Override a config key, e.g. --set generalist_steps=20000."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Delete the study folder's results and start again."),
        log: list[str] = typer.Option([], "--log", help=STUDY_LOG_HELP, callback=_trackers),
    ) -> None:
        """A generalist that knows more than the target data: a broad corpus (many tasks, varied lighting,
        paraphrased instructions) and the tiny generalist trained long on it, evaluated alone; reused by the
        other studies (--set generalist=FOLDER)."""
        from robodual_cli.commands.study import pretrain as pt
        from robodual_cli.commands.study.common import StudyFolder
        from robodual_core.config import to_dict

        cfg = pt.check(_load(pt.PretrainConfig, pt.QUICK, quick, config, overrides, _flags(tasks, episodes, None)))
        folder = StudyFolder(out_dir, pt.STUDY, {**to_dict(cfg), "quick": quick}, overwrite=overwrite,
                             defaults=to_dict(pt.PretrainConfig()))
        folder.log = tuple(log)
        t0 = time.perf_counter()
        result = pt.run(cfg, folder)
        from robodual_cli.commands.study import report

        _done(folder, report.pretrain_report(folder, cfg, result, quick), t0)


def _done(folder: object, path: Path, t0: float) -> None:
    ran = folder.ran  # type: ignore[attr-defined]
    out.print(f"report: {path / 'README.md'} ({len(ran)} stages run now, {time.perf_counter() - t0:.0f} s)")
