"""The short sensor form of the README and the example modality plugin: `sensors: [rgb_static, force_torque]`."""

import pytest

from robodual_core.config import load_config, to_dict
from robodual_core.errors import RobodualError
from robodual_specialist.config import SensorConfig, SpecialistTrainConfig


def test_bare_names_are_sensors_without_options(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("model:\n  sensors: [rgb_static, force_torque, {name: depth_static, options: {out_dim: 32}}]\n")
    cfg = load_config(SpecialistTrainConfig, path)
    assert cfg.model.sensors == [SensorConfig("rgb_static"), SensorConfig("force_torque"),
                                 SensorConfig("depth_static", {"out_dim": 32})]
    # the resolved config a run writes is the long form, which loads back the same
    again = load_config(SpecialistTrainConfig, base=to_dict(cfg))
    assert again.model.sensors == cfg.model.sensors


def test_set_accepts_a_comma_list_of_names():
    cfg = load_config(SpecialistTrainConfig, overrides=["model.sensors=rgb_static,force_torque"])
    assert [s.name for s in cfg.model.sensors] == ["rgb_static", "force_torque"]
    assert all(s.options == {} for s in cfg.model.sensors)


def test_other_entries_are_still_refused_naming_the_key(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("model:\n  sensors: [rgb_static, [depth_static]]\n")
    with pytest.raises(RobodualError, match=r"model\.sensors\[1\]"):
        load_config(SpecialistTrainConfig, path)
    path.write_text("model:\n  sensors: [true]\n")
    with pytest.raises(RobodualError, match=r"model\.sensors\[0\]"):
        load_config(SpecialistTrainConfig, path)
