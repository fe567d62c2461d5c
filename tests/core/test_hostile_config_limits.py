"""Hostile configs (issue 28): what a config file or ``--set`` holds is refused in one line when it is the wrong
shape (a tuple of the wrong length), names a key that does not exist at any depth (inside ``data.normalization``
too), would exhaust the machine (a YAML alias bomb, a model wider than memory), never half-accepted."""

from __future__ import annotations

import time

import numpy as np
import pytest

from robodual_core.config import YAML_MAX_NODES, load_config, read_config_file
from robodual_core.data import DatasetWriter
from robodual_core.errors import ConfigError
from robodual_core.training import TrainerConfig

pytestmark = pytest.mark.hostile


def one_line_error(code, cap, *needles):
    assert code == 1, (code, cap.out, cap.err)
    lines = [line for line in cap.err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, cap.err
    assert "Traceback" not in cap.err and "run with --debug" not in lines[0], lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def bomb(levels: int = 9) -> str:
    """The billion laughs: 9 aliases of 9 aliases ... (9^9 nodes once expanded) in a few hundred bytes."""
    names = "abcdefghij"
    text = f'{names[0]}: &{names[0]} ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    for prev, cur in zip(names[:levels - 1], names[1:levels], strict=True):
        text += f"{cur}: &{cur} [{', '.join(['*' + prev] * 9)}]\n"
    return text


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "s.zarr"
    rng = np.random.default_rng(0)
    with DatasetWriter(path, fps=10, modalities={"rgb_static": "rgb", "proprio": "proprio", "action": "action"}) as w:
        for _ in range(3):
            w.add_episode({"rgb_static": rng.integers(0, 255, (6, 16, 16, 3), np.uint8),
                           "proprio": rng.normal(size=(6, 2)).astype(np.float32),
                           "action": rng.normal(size=(6, 3)).astype(np.float32)}, instruction="go", task="t")
    return path


# -- resource exhaustion in the file itself ------------------------------------------------------------------
@pytest.mark.parametrize("text,needle", [
    pytest.param(bomb(), "aliases expand", id="billion-laughs"),
    pytest.param("trainer: &t {lr: 0.1, extra: *t}\n", "recursive", id="recursive-alias"),
])
def test_yaml_that_would_never_finish_is_refused_at_once(tmp_path, text, needle):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=needle) as info:
        read_config_file(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    assert time.perf_counter() - t0 < 5


def test_aliases_that_stay_small_still_work(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("defaults: &d {lr: 0.002, batch_size: 4}\ntrainer: *d\n")
    assert read_config_file(path)["trainer"] == {"lr": 0.002, "batch_size": 4}
    path.write_text(bomb(levels=5))  # 9^5 = 59049 leaves: under the limit
    assert 9 ** 5 < YAML_MAX_NODES
    assert len(read_config_file(path)["e"]) == 9


def test_alias_bomb_as_config_of_a_command(run, store, tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb())
    t0 = time.perf_counter()
    one_line_error(*run("train", "specialist", "--dataset", store, "--out", tmp_path / "r", "--config", path),
                   "aliases expand", str(path))
    one_line_error(*run("train", "generalist", "--dataset", store, "--out", tmp_path / "g", "--config", path),
                   "aliases expand")
    assert time.perf_counter() - t0 < 30
    assert not (tmp_path / "r").exists() and not (tmp_path / "g").exists()


def test_aliases_inside_a_set_value_are_bounded_too():
    inner = "[&a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1], " + ", ".join(
        f"&{c} [{', '.join(['*' + p] * 10)}]" for p, c in zip("abcdef", "bcdefg", strict=True)) + "]"
    with pytest.raises(ConfigError, match="--set value: its YAML aliases expand"):
        load_config(TrainerConfig, None, [f"betas={inner}"])
    with pytest.raises(ConfigError, match="--set value: a YAML alias refers to a node that holds it"):
        load_config(TrainerConfig, None, ["betas=&x [0.9, *x]"])


# -- the shape of values -----------------------------------------------------------------------------------
@pytest.mark.parametrize("value,needle", [
    ("0.9,0.99,0.5", "found 3"), ("[0.9]", "found 1"), ("[]", "found 0"), ("0.9", "expects a list"),
    ("[0.9, 1.5]", "betas[1]' must be"), ("[0.9, nan]", "betas[1]' must be"),
])
def test_a_fixed_length_tuple_takes_exactly_its_length(value, needle):
    with pytest.raises(ConfigError, match=r"betas") as info:
        load_config(TrainerConfig, None, [f"betas={value}"])
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert load_config(TrainerConfig, None, ["betas=[0.8, 0.95]"]).betas == (0.8, 0.95)


def test_tuple_length_refused_from_the_cli(run, store, tmp_path):
    for value in ("0.9,0.99,0.5", "[0.9]"):
        one_line_error(*run("train", "specialist", "--dataset", store, "--out", tmp_path / "r",
                            "--set", f"trainer.betas={value}"), "trainer.betas", "expects 2 values")


# -- keys nested inside mappings -----------------------------------------------------------------------------
def test_unknown_key_inside_normalization_is_named_with_the_known_ones(run, store, tmp_path):
    code, cap = run("train", "specialist", "--dataset", store, "--out", tmp_path / "r",
                    "--set", "data.normalization.acton=min_max")
    one_line_error(code, cap, "data.normalization.acton", "action", "proprio", "rgb_static")
    config = tmp_path / "c.yaml"
    config.write_text("data:\n  normalization: {action: q99, prorpio: min_max}\n")
    one_line_error(*run("train", "specialist", "--dataset", store, "--out", tmp_path / "r", "--config", config),
                   "data.normalization.prorpio", "proprio")
    one_line_error(*run("train", "specialist", "--dataset", store, "--out", tmp_path / "r",
                        "--set", "data.normalization.action=q98"), "data.normalization.action", "q99")


# -- a model wider than the machine --------------------------------------------------------------------------
@pytest.mark.parametrize("argv,needle", [
    (["train", "specialist", "--set", "model.hidden=1048576"], "model.hidden"),
    (["train", "generalist", "--base", "tiny", "--set", "model.tiny.hidden_size=1048576",
      "--set", "model.tiny.num_heads=4"], "hidden_size"),
])
def test_a_model_larger_than_memory_is_refused_before_it_is_built(run, store, tmp_path, argv, needle):
    t0 = time.perf_counter()
    one_line_error(*run(*argv[:2], "--dataset", store, "--out", tmp_path / "r", *argv[2:]), needle, "memory",
                   "1048576")
    assert time.perf_counter() - t0 < 60
