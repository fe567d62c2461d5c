"""Hostile configs: every numeric key out of its range, nan/inf, wrong types, unknown keys, broken files and bad
CLI flags are refused when the config is loaded, in one line naming the key (or file), the range and the value."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from robodual_core.config import RANGE, Range, check_config, load_config, numeric_fields, read_config_file
from robodual_core.errors import ConfigError, RobodualError
from robodual_core.training import Trainer, TrainerConfig
from robodual_generalist.config import GeneralistTrainConfig
from robodual_sensors.config import SensorConfig, sensor_config
from robodual_specialist.config import SpecialistTrainConfig

pytestmark = pytest.mark.hostile

CONFIGS = {"specialist": SpecialistTrainConfig, "generalist": GeneralistTrainConfig}


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text.strip() == text and text, text
    return text


def _outside(rng: Range, integer: bool) -> object:
    """A value just outside ``rng``."""
    step = 1 if integer else 0.5
    if rng.ge is not None:
        return rng.ge - step
    if rng.gt is not None:
        return rng.gt  # the excluded bound itself
    if rng.le is not None:
        return rng.le + step
    return rng.lt


def _cases():
    out = []
    for kind, cls in CONFIGS.items():
        for key, f in numeric_fields(cls):
            rng = f.metadata.get(RANGE)
            if "[]" in key or rng is None or rng == Range():
                continue  # list items (sensors) are covered below; unbounded keys have nothing outside
            integer = "int" in str(f.type) and "float" not in str(f.type)
            out.append(pytest.param(cls, key, _outside(rng, integer), id=f"{kind}:{key}"))
            if rng.le is not None or rng.lt is not None:  # both ends of a closed range
                if rng.ge is not None or rng.gt is not None:
                    hi = rng.le + (1 if integer else 0.5) if rng.le is not None else rng.lt
                    out.append(pytest.param(cls, key, hi, id=f"{kind}:{key}:upper"))
    return out


def _value_text(key: str, value: object) -> str:
    if key.endswith("betas"):
        return f"[{value}, {value}]"
    return repr(value)


@pytest.mark.parametrize("cls, key, value", _cases())
def test_every_numeric_key_out_of_range_is_refused_naming_it(cls, key, value):
    with pytest.raises(ConfigError) as err:
        load_config(cls, None, [f"{key}={_value_text(key, value)}"])
    text = _one_line(err.value)
    assert f"config key '{key}" in text and "must be" in text and repr(value) in text, text


def test_every_numeric_key_declares_its_range():
    """A new numeric key without a range fails here (unbounded ones say so with ``ranged(default)``)."""
    for cls in (*CONFIGS.values(), SensorConfig):
        undeclared = [k for k, f in numeric_fields(cls) if RANGE not in f.metadata]
        assert not undeclared, f"{cls.__name__}: {undeclared}"


FLOAT_KEYS = [(kind, key) for kind, cls in CONFIGS.items() for key, f in numeric_fields(cls)
              if "float" in str(f.type) and "[]" not in key]


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("kind, key", FLOAT_KEYS, ids=[f"{k}:{key}" for k, key in FLOAT_KEYS])
def test_nan_and_inf_are_refused(kind, key, bad):
    value = f"[{bad}, 0.9]" if key.endswith("betas") else bad
    with pytest.raises(ConfigError) as err:
        load_config(CONFIGS[kind], None, [f"{key}={value}"])
    text = _one_line(err.value)
    assert f"config key '{key}" in text and "finite" in text, text


@pytest.mark.parametrize("override, match", [
    ("trainer.steps=ten", r"'trainer.steps' expects int, found 'ten'"),
    ("trainer.steps=2.5", r"'trainer.steps' expects int, found '2.5'"),
    ("trainer.batch_size=true", r"'trainer.batch_size' expects int, found 'true'"),
    ("trainer.lr=fast", r"'trainer.lr' expects float, found 'fast'"),
    ("trainer.ema=maybe", r"'trainer.ema' expects true or false"),
    ("trainer.betas=0.9", r"'trainer.betas' expects a list"),
    ("trainer.lr=[1, 2]", r"'trainer.lr' expects float"),
    ("trainer=5", r"'trainer' expects a mapping for TrainerConfig"),
    ("model.sensors=[5]", r"'model.sensors\[0\]' expects a mapping for SensorConfig"),
    ("model.diffusion.prediction_type=noise", r"'model.diffusion.prediction_type' must be one of"),
    ("model.diffusion.beta_schedule=cubic", r"'model.diffusion.beta_schedule' must be one of"),
    ("data.image_size=big", r"'data.image_size' expects int"),
    ("trainer.stepz=3", r"unknown config key 'trainer.stepz'.*steps"),
    ("model.hidden.width=3", r"'model.hidden' is a int, it has no sub-key 'width'"),
    ("model.hidden=30", r"'model.hidden' must be a multiple of model.heads \(8\) with an even width per head, found 30"),
    ("model.diffusion.inference_steps=101",
     r"'model.diffusion.inference_steps' must be at most model.diffusion.train_steps \(100\), found 101"),
])
def test_wrong_types_and_unknown_keys_name_the_key_and_the_type(override, match):
    with pytest.raises(ConfigError, match=match) as err:
        load_config(SpecialistTrainConfig, None, [override])
    _one_line(err.value)


@pytest.mark.parametrize("override, match", [
    ("model.family=gpt", r"'model.family' must be one of \['auto', 'openvla', 'hf_vlm'\], found 'gpt'"),
    ("model.dtype=float8", r"'model.dtype' must be one of"),
    ("model.tiny.tokenizer=chars", r"'model.tiny.tokenizer' must be one of"),
    ("model.tiny.image_size=60", r"'model.tiny.image_size' must be a multiple of model.tiny.patch_size \(16\)"),
    ("model.tiny.hidden_size=100", r"'model.tiny.hidden_size' must be a multiple of model.tiny.num_heads \(4\)"),
    ("model.tiny.vision_dim=33", r"'model.tiny.vision_dim' must be a multiple of model.tiny.vision_heads \(2\)"),
])
def test_generalist_choices_and_shapes_are_checked_at_load(override, match):
    with pytest.raises(ConfigError, match=match) as err:
        load_config(GeneralistTrainConfig, None, [override])
    _one_line(err.value)


@pytest.mark.parametrize("name, text, match", [
    ("bad.yaml", "trainer:\n  steps: [1, 2\n", r"config file '.*bad.yaml' is not valid YAML"),
    ("tabs.yaml", "trainer:\n\tsteps: 3\n", r"not valid YAML"),
    ("list.yaml", "- 1\n- 2\n", r"must hold a mapping at the top level, found list"),
    ("bad.json", '{"trainer": {"steps": 3,}}', r"config file '.*bad.json' is not valid JSON"),
    ("bad.toml", "[trainer\nsteps = 3\n", r"config file '.*bad.toml' is not valid TOML"),
    ("null.yaml", "trainer: null\n", r"config key 'trainer' may not be null"),
    ("scalar.yaml", "trainer: 3\n", r"config key 'trainer' expects a mapping"),
    ("nested.yaml", "model:\n  guidance:\n    scales: 2\n", r"unknown config key 'model.guidance.scales'"),
    ("nan.json", '{"trainer": {"lr": NaN}}', r"config key 'trainer.lr' must be a finite number > 0, found nan"),
    ("neg.yaml", "trainer:\n  grad_accum: 0\n", r"config key 'trainer.grad_accum' must be an integer >= 1, found 0"),
])
def test_broken_config_files_are_one_line_naming_the_file_or_key(tmp_path, name, text, match):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as err:
        load_config(SpecialistTrainConfig, path)
    _one_line(err.value)


def test_binary_and_missing_config_files_name_the_file(tmp_path):
    path = tmp_path / "weights.yaml"
    path.write_bytes(b"\x80\x81\xff\x00garbage")
    with pytest.raises(ConfigError, match=r"config file '.*weights.yaml' is not UTF-8 text") as err:
        read_config_file(path)
    _one_line(err.value)
    with pytest.raises(ConfigError, match="cannot read config file") as err:
        read_config_file(tmp_path)  # a folder
    _one_line(err.value)


@pytest.mark.parametrize("options, match", [
    ({"width": -3}, r"'model.sensors\[depth_static\].options.width' must be an integer >= 1, found -3"),
    ({"history": -1}, r"'model.sensors\[depth_static\].options.history' must be an integer >= 0, found -1"),
    ({"clip": float("nan")}, r"'model.sensors\[depth_static\].options.clip' must be a finite number > 0"),
    ({"image_size": [0, 16]}, r"'model.sensors\[depth_static\].options.image_size\[0\]' must be an integer >= 1"),
    ({"num_queries": 0}, r"'model.sensors\[depth_static\].options.num_queries' must be an integer >= 1, found 0"),
    ({"resampler_mlp_ratio": "inf"}, r"options.resampler_mlp_ratio' must be a finite number > 0, found inf"),
    ({"width": "wide"}, r"'model.sensors\[depth_static\].options.width' expects int, found 'wide'"),
    ({"widht": 3}, r"unknown config key 'model.sensors\[depth_static\].options.widht'"),
])
def test_sensor_options_are_checked_like_config_keys(options, match):
    with pytest.raises(ConfigError, match=match) as err:
        sensor_config("depth_static", **options)
    _one_line(err.value)


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 1)

    def loss(self, batch):
        return self.lin(batch["x"]).pow(2).mean(), {}

    def robodual_config(self):
        return {"family": "tiny"}


class _Data(torch.utils.data.Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, i):
        return {"x": torch.full((2,), float(i))}


@pytest.mark.parametrize("kw, key", [
    ({"batch_size": -4}, "trainer.batch_size"),  # hung forever at 100% CPU (an epoch of -4 batches)
    ({"steps": 0}, "trainer.steps"),  # exited 0 with no checkpoint
    ({"grad_accum": 0}, "trainer.grad_accum"),  # ZeroDivisionError
    ({"ckpt_every": 0}, "trainer.ckpt_every"),  # ZeroDivisionError
    ({"lr": float("nan")}, "trainer.lr"),
    ({"lr": -1.0}, "trainer.lr"),  # ValueError from AdamW
])
def test_trainer_built_in_code_checks_the_same_ranges(tmp_path, kw, key):
    cfg = TrainerConfig(**{"steps": 2, "batch_size": 4, "num_workers": 0, "device": "cpu", **kw})
    with pytest.raises(ConfigError, match=f"config key '{key}' must be") as err:
        Trainer(_Tiny(), _Data(), cfg, tmp_path / "run", show_progress=False)
    _one_line(err.value)


def test_unknown_scheduler_names_the_key(tmp_path):
    cfg = TrainerConfig(steps=2, batch_size=4, num_workers=0, device="cpu", scheduler="cosin")
    with pytest.raises(RobodualError, match=r"config key 'trainer.scheduler' is 'cosin'.*cosine") as err:
        Trainer(_Tiny(), _Data(), cfg, tmp_path / "run", show_progress=False)
    _one_line(err.value)


def test_check_config_walks_nested_and_listed_configs():
    cfg = load_config(SpecialistTrainConfig)
    cfg.model.guidance.drop_prob = 1.5
    with pytest.raises(ConfigError, match=r"'model.guidance.drop_prob' must be a finite number in \[0, 1\], found 1.5"):
        check_config(cfg)
    assert math.isfinite(load_config(SpecialistTrainConfig).trainer.lr)


@pytest.mark.parametrize("command, flag", [
    (["train", "specialist", "--steps", "-5"], "trainer.steps"),
    (["train", "specialist", "--steps", "0"], "trainer.steps"),
    (["train", "specialist", "--set", "trainer.batch_size=-4"], "trainer.batch_size"),
    (["train", "specialist", "--workers", "-1"], "trainer.num_workers"),
    (["train", "specialist", "--seed", "-3"], "trainer.seed"),
    (["train", "generalist", "--steps", "-5"], "trainer.steps"),
    (["train", "generalist", "--set", "trainer.lr=nan"], "trainer.lr"),
])
def test_cli_flags_out_of_range_exit_non_zero_in_one_line(tmp_path, capsys, command, flag):
    from robodual_cli.app import main

    with pytest.raises(SystemExit) as exit_:
        main([*command, "--dataset", str(tmp_path / "store.zarr"), "--out", str(tmp_path / "run")])
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"config key '{flag}' must be" in err, err
    assert not (tmp_path / "run" / "checkpoints").exists()
