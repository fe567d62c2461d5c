"""Typed configs: files, overrides, and errors that name the bad key."""

from dataclasses import dataclass, field

import pytest

from robodual_core.config import dump_config, load_config, read_config_file
from robodual_core.errors import ConfigError


@dataclass
class Optim:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class Cfg:
    name: str = "x"
    steps: int = 10
    ema: bool = True
    sensors: list[str] = field(default_factory=lambda: ["rgb_static"])
    optim: Optim = field(default_factory=Optim)
    note: str | None = None


def test_defaults_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 20\noptim:\n  lr: 0.01\n")
    cfg = load_config(Cfg, path, ["optim.lr=1e-3", "ema=false", "sensors=rgb_static,depth_static", "note=hi"])
    assert cfg.steps == 20 and cfg.optim.lr == 1e-3 and cfg.ema is False
    assert cfg.sensors == ["rgb_static", "depth_static"] and cfg.note == "hi"
    toml = tmp_path / "c.toml"
    toml.write_text("steps = 3\n[optim]\nbetas = [0.5, 0.6]\n")
    assert load_config(Cfg, toml).optim.betas == (0.5, 0.6)


def test_dump_round_trip(tmp_path):
    cfg = load_config(Cfg, None, ["steps=7"])
    dump_config(cfg, tmp_path / "resolved.json")
    assert load_config(Cfg, tmp_path / "resolved.json") == cfg


@pytest.mark.parametrize(
    "override, match",
    [
        ("stepz=3", r"unknown config key 'stepz'.*accepted keys: ema, name, note, optim, sensors, steps"),
        ("optim.lrr=3", r"unknown config key 'optim.lrr'.*accepted keys under 'optim': betas, lr"),
        ("steps=ten", r"config key 'steps' expects int, found 'ten'"),
        ("ema=maybe", r"config key 'ema' expects true or false"),
        ("steps", r"--set expects key=value"),
    ],
)
def test_override_errors_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(Cfg, None, [override])


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        read_config_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lrate: 1\n")
    with pytest.raises(ConfigError, match="unknown config key 'optim.lrate'"):
        load_config(Cfg, bad)
    broken = tmp_path / "broken.toml"
    broken.write_text("steps = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(Cfg, broken)
