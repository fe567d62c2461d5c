"""The committed study configs (docs/results/*/*.yaml, pre-registrations) load and pass their study's checks, so a
registered study can still be run by the code as it is."""

from __future__ import annotations

from pathlib import Path

import pytest

from robodual_core.config import load_config

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"


@pytest.fixture(autouse=True)
def _no_pretrained_folder(monkeypatch):
    """The registered generalist (`studies/pretrain`) is a study folder on the machine that ran the study, not in
    the repository: its checkpoint is taken as found, so the checks run anywhere."""
    from robodual_cli.commands.study import pretrain

    monkeypatch.setattr(pretrain, "pretrained_checkpoint", lambda folder, step=None: Path(folder) / "checkpoints")


def _load(cls, path):
    return load_config(cls, path, [])


@pytest.mark.parametrize("name", ["dual-earns/pilot.yaml", "dual-earns/study.yaml", "latency/base.yaml"])
def test_registered_data_efficiency_configs_check(name):
    from robodual_cli.commands.study import data_efficiency as de

    cfg = de.check(_load(de.DataEfficiencyConfig, RESULTS / name))
    assert cfg.eval_seed > 2026120600  # the dated seeds of issue 30 on, each new


def test_latency_sweep_reads_what_its_base_trains():
    from robodual_cli.commands.study import data_efficiency as de
    from robodual_cli.commands.study import latency as lt

    base = de.check(_load(de.DataEfficiencyConfig, RESULTS / "latency" / "base.yaml"))
    sweep = lt.check(load_config(lt.LatencyStudyConfig, RESULTS / "latency" / "sweep.yaml", []), base)
    assert sweep.scale == 5 and sweep.base_arm == "dual_paper" and sweep.informative_floor == 0.3
    assert lt.base_stages(sweep, base) == ["generate target n=5", "cache generalist n=5",
                                            *(f"train dual_paper n=5 seed={s}" for s in (0, 1, 2))]
    # the sweep's placements are its own, never its base's or issue 30's
    issue30 = load_config(de.DataEfficiencyConfig, RESULTS / "dual-earns" / "study.yaml", [])
    assert len({sweep.eval_seed, base.eval_seed, issue30.eval_seed}) == 3
