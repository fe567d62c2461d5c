"""Hostile checkpoints: damaged files, another model's weights, wrong dtypes, empty/missing folders, the wrong kind
of checkpoint, and kill -9 during training. Each is refused in one line naming the file (or the config keys that
differ), and a damaged latest checkpoint resumes from the previous one without losing anything."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from robodual_core.checkpoint import (
    check_kind,
    load_model_state,
    load_state_checked,
    read_checkpoint_meta,
    resolve_checkpoint,
)
from robodual_core.errors import RobodualError
from robodual_core.training import Trainer, TrainerConfig

sys.path.insert(0, str(Path(__file__).parents[1] / "specialist"))

pytestmark = pytest.mark.hostile


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text, text
    return text


class Net(nn.Module):
    def __init__(self, width: int = 8):
        super().__init__()
        self.width = width
        self.a = nn.Linear(3, width)
        self.b = nn.Linear(width, 1)

    def loss(self, batch):
        pred = self.b(torch.relu(self.a(batch["x"]))).squeeze(-1)
        loss = nn.functional.mse_loss(pred, batch["y"])
        return loss, {}

    def robodual_config(self):
        return {"family": "test_net", "model": {"width": self.width, "depth": 2}}


class Data(torch.utils.data.Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(32, 3, generator=g)
        self.y = self.x.sum(-1)

    def __len__(self):
        return 32

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


def _trainer(run, width=8, steps=6, **kw):
    torch.manual_seed(0)
    cfg = TrainerConfig(**{"steps": steps, "batch_size": 4, "num_workers": 0, "lr": 1e-2, "warmup_steps": 1,
                           "ckpt_every": 2, "log_every": 1, "keep_checkpoints": 0, "device": "cpu", **kw})
    return Trainer(Net(width), Data(), cfg, run, show_progress=False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 6-step run (checkpoints 2, 4, 6)."""
    run = tmp_path_factory.mktemp("ref") / "run"
    _trainer(run).fit()
    return run


def _stop_at(run, steps):
    """The first ``steps`` steps of the reference run, stopped there (as if killed after that checkpoint)."""
    t = _trainer(run, steps=6)
    orig = t.train_step

    def step(batches):
        if t.step >= steps:
            raise KeyboardInterrupt
        return orig(batches)

    t.train_step = step
    with pytest.raises(KeyboardInterrupt):
        t.fit()


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garble(path: Path) -> None:
    path.write_bytes(b"\x00garbage" * 40)


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _delete(path: Path) -> None:
    path.unlink()


def _shrink_tensors(path: Path) -> None:  # a valid file whose tensors lost their tail
    save_file({k: v.reshape(-1)[:-1].clone() if v.numel() > 1 else v for k, v in load_file(str(path)).items()},
              str(path))


def _to_float64(path: Path) -> None:  # a valid file of the wrong dtypes
    save_file({k: v.double() if v.is_floating_point() else v.to(torch.int32) for k, v in load_file(str(path)).items()},
              str(path))


def _bad_json(path: Path) -> None:
    path.write_text('{"step": 4, "epoch": ')


def _wrong_json(path: Path) -> None:
    state = json.loads(path.read_text())
    del state["scheduler"]
    path.write_text(json.dumps(state))


DAMAGE = [
    ("optimizer.safetensors", _truncate), ("optimizer.safetensors", _garble), ("optimizer.safetensors", _empty),
    ("optimizer.safetensors", _delete), ("optimizer.safetensors", _shrink_tensors),
    ("optimizer.safetensors", _to_float64),
    ("model.safetensors", _truncate), ("model.safetensors", _to_float64), ("ema.safetensors", _garble),
    ("rng.safetensors", _truncate), ("rng.safetensors", _to_float64),
    ("training_state.json", _bad_json), ("training_state.json", _wrong_json),
]


@pytest.mark.parametrize("name, damage", DAMAGE, ids=[f"{n}:{d.__name__[1:]}" for n, d in DAMAGE])
def test_resume_with_a_damaged_latest_checkpoint_falls_back_and_loses_nothing(tmp_path, reference, capsys, name,
                                                                              damage):
    run = tmp_path / "run"
    _stop_at(run, 4)
    damage(run / "checkpoints" / "4" / name)
    capsys.readouterr()
    _trainer(run).fit(resume=True)
    warning = capsys.readouterr().err.strip()
    assert warning.count("\n") == 0 and str(run / "checkpoints" / "4" / name) in warning, warning
    assert "resuming from step 2" in warning
    assert (run / "checkpoints" / "4.damaged" / "training_state.json").exists()  # kept, not deleted
    for step in (4, 6):  # the steps trained again are the uninterrupted run's, exactly
        for f in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
            a = load_file(str(run / "checkpoints" / str(step) / f))
            b = load_file(str(reference / "checkpoints" / str(step) / f))
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (step, f)


def test_damaged_only_checkpoint_names_the_file_and_that_nothing_earlier_exists(tmp_path):
    run = tmp_path / "run"
    _stop_at(run, 2)
    _truncate(run / "checkpoints" / "2" / "optimizer.safetensors")
    with pytest.raises(RobodualError) as err:
        _trainer(run).fit(resume=True)
    text = _one_line(err.value)
    assert str(run / "checkpoints" / "2" / "optimizer.safetensors") in text and "no earlier checkpoint" in text
    assert (run / "checkpoints" / "2").is_dir()  # nothing moved or deleted


def test_every_checkpoint_damaged_is_refused_naming_the_latest(tmp_path):
    run = tmp_path / "run"
    _stop_at(run, 4)
    for step in (2, 4):
        _garble(run / "checkpoints" / str(step) / "rng.safetensors")
    with pytest.raises(RobodualError, match=r"checkpoints/4/rng.safetensors.*\(2\) are damaged too") as err:
        _trainer(run).fit(resume=True)
    _one_line(err.value)


def test_resume_into_another_model_size_names_the_config_keys(tmp_path):
    run = tmp_path / "run"
    _stop_at(run, 2)
    with pytest.raises(RobodualError) as err:
        _trainer(run, width=16).fit(resume=True)
    text = _one_line(err.value)
    assert "model.width (checkpoint 8, here 16)" in text and "depth" not in text, text
    assert (run / "checkpoints" / "2").is_dir() and not (run / "checkpoints" / "2.damaged").exists()


@pytest.mark.parametrize("damage", [_truncate, _garble, _empty, _delete], ids=lambda d: d.__name__[1:])
@pytest.mark.parametrize("name, ema", [("model.safetensors", False), ("ema.safetensors", True)])
def test_loading_damaged_weights_names_the_file(reference, tmp_path, name, ema, damage):
    import shutil

    ckpt = tmp_path / "6"
    shutil.copytree(reference / "checkpoints" / "6", ckpt)
    damage(ckpt / name)
    if damage is _delete and ema:
        load_model_state(ckpt, ema=True)  # no EMA file: the model weights, as documented
        return
    with pytest.raises(RobodualError) as err:
        load_model_state(ckpt, ema=ema)
    assert str(ckpt / name) in _one_line(err.value) or str(ckpt) in str(err.value)


def test_weights_of_another_size_or_dtype_are_one_line(reference):
    ckpt = reference / "checkpoints" / "6"
    state = load_model_state(ckpt, ema=False)
    big = Net(16)
    with pytest.raises(RobodualError) as err:
        load_state_checked(big, state, ckpt / "model.safetensors", read_checkpoint_meta(ckpt))
    assert "model.width (checkpoint 8, here 16)" in _one_line(err.value)
    with pytest.raises(RobodualError, match=r"tensor 'a.bias' is \[8\], the model's is \[16\] \(2 more") as err:
        load_state_checked(big, state, ckpt / "model.safetensors")  # no saved config: the first tensor
    _one_line(err.value)
    with pytest.raises(RobodualError, match=r"tensor 'a.bias' is float64, the model's is float32") as err:
        load_state_checked(Net(8), {k: v.double() for k, v in state.items()}, ckpt / "model.safetensors")
    _one_line(err.value)
    with pytest.raises(RobodualError, match=r"lacks tensor 'b.bias'") as err:
        load_state_checked(Net(8), {k: v for k, v in state.items() if k != "b.bias"}, ckpt / "model.safetensors")


def test_specialist_of_another_size_is_one_line_naming_the_keys(tmp_path):
    """Was 37 lines of size mismatches from load_state_dict."""
    from specialist_helpers import register_fake_sensor, tiny_config

    from robodual_specialist.model import DiTSpecialist

    register_fake_sensor()
    small = DiTSpecialist(tiny_config(hidden=32))
    big = DiTSpecialist(tiny_config(hidden=64, depth=3))
    with pytest.raises(RobodualError) as err:
        load_state_checked(big, small.state_dict(), tmp_path / "model.safetensors", small.robodual_config())
    text = _one_line(err.value)
    assert "specialist.hidden (checkpoint 32, here 64)" in text and "specialist.depth (checkpoint 2, here 3)" in text


@pytest.mark.parametrize("setup, match", [
    (lambda p: None, r"is an empty folder; expected a checkpoint folder"),
    (lambda p: p.rmdir(), r"does not exist"),
    (lambda p: (p / "model_config.json").write_text("{}"), r"checkpoint folder '.*' has no model.safetensors"),
    (lambda p: (p / "checkpoints" / "4").mkdir(parents=True), r"checkpoints/4 lacks training_state.json"),
    (lambda p: (p / "checkpoints").mkdir(), r"run folder '.*' has no checkpoints yet"),
    (lambda p: (p / "notes.txt").write_text("x"), r"neither a checkpoint folder"),
])
def test_empty_and_partial_folders_say_what_is_missing(tmp_path, setup, match):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    setup(folder)
    with pytest.raises(RobodualError, match=match) as err:
        resolve_checkpoint(folder)
    _one_line(err.value)


@pytest.mark.parametrize("content, match", [
    (None, r"checkpoint file '.*model_config.json' is missing"),
    ("{not json", r"checkpoint file '.*model_config.json' is not valid JSON"),
    ("[1, 2]", r"checkpoint file '.*model_config.json' must hold a JSON object, found array"),
    (b"\xff\xfe\x00", r"cannot read checkpoint file '.*model_config.json'"),
])
def test_model_config_missing_or_not_json_names_the_file(reference, tmp_path, content, match):
    import shutil

    ckpt = tmp_path / "6"
    shutil.copytree(reference / "checkpoints" / "6", ckpt)
    path = ckpt / "model_config.json"
    if content is None:
        path.unlink()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(RobodualError, match=match) as err:
        read_checkpoint_meta(ckpt)
    _one_line(err.value)


@pytest.mark.parametrize("meta, kind, held", [
    ({"family": "openvla", "model": {}, "action_dim": 4}, "specialist", "generalist"),
    ({"family": "hf_vlm", "model": {}, "action_dim": 4, "base_hash": "x"}, "specialist", "generalist"),
    ({"family": "dit", "kind": "specialist", "specialist": {}}, "generalist", "specialist"),
])
def test_a_checkpoint_of_the_other_kind_is_refused(tmp_path, meta, kind, held):
    with pytest.raises(RobodualError, match=f"holds a {held} .* but a {kind} checkpoint is expected") as err:
        check_kind(tmp_path, meta, kind)
    _one_line(err.value)
    check_kind(tmp_path, meta, held)  # the right kind passes


# -- end to end: the specialist CLI on a tiny store --------------------------------------------------------------
SUBPROCESS_CONFIG = """
model:
  hidden: 16
  depth: 1
  heads: 2
  k_s: 4
  k_g: 4
  sensors:
    - name: rgb_static
      options: {backbone: vit, image_size: 16, patch_size: 8, width: 16, depth: 1, heads: 2, head_dim: 8,
                out_dim: 16, num_queries: 2, resampler_heads: 2, resampler_head_dim: 8}
  guidance: {null_tokens: 2}
  diffusion: {train_steps: 20, inference_steps: 2}
data: {image_size: 16, val_ratio: 0.0}
trainer: {batch_size: 4, num_workers: 0, warmup_steps: 0, scheduler: constant, ckpt_every: 2, log_every: 1, lr: 1e-3,
          steps: 200, keep_checkpoints: 0}
"""


@pytest.fixture(scope="module")
def spec_store(tmp_path_factory):
    from specialist_helpers import write_tiny_store

    root = tmp_path_factory.mktemp("spec")
    store = write_tiny_store(root / "tiny.zarr")
    config = root / "cfg.yaml"
    config.write_text(SUBPROCESS_CONFIG)
    return store, config


def _robodual(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from robodual_cli.app import main; main(sys.argv[1:])", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


@pytest.mark.slow
def test_kill_9_during_training_then_resume_equals_the_uninterrupted_run(spec_store, tmp_path):
    store, config = spec_store
    steps = "12"  # the killed run is configured for 200 (constant lr: the schedule does not depend on it)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_robodual("train", "specialist", "--dataset", str(store), "--out", str(killed),
                                      "--config", str(config)), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not (killed / "checkpoints" / "2" / "training_state.json").exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = [int(p.name) for p in (killed / "checkpoints").iterdir() if p.name.isdigit()]
    assert max(done) < int(steps), done  # killed mid-run, after its first checkpoint
    for out, extra in ((killed, ["--resume"]), (tmp_path / "whole", [])):
        res = subprocess.run(_robodual("train", "specialist", "--dataset", str(store), "--out", str(out),
                                       "--config", str(config), "--steps", steps, *extra),
                             env=_env(), capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
    for f in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        a = load_file(str(killed / "checkpoints" / steps / f))
        b = load_file(str(tmp_path / "whole" / "checkpoints" / steps / f))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f


def test_specialist_resume_with_another_model_size_and_a_generalist_where_a_specialist_is(spec_store, tmp_path):
    from specialist_helpers import register_fake_sensor

    from robodual_specialist.train import train

    register_fake_sensor()
    store, _ = spec_store
    config = tmp_path / "cfg.yaml"
    config.write_text(SUBPROCESS_CONFIG.replace("steps: 200", "steps: 2"))
    run = tmp_path / "run"
    train(store, run, config=config, show_progress=False)
    with pytest.raises(RobodualError) as err:  # was 37 lines of size mismatches
        train(store, run, overrides=["model.hidden=32", "trainer.steps=4"], resume=True, show_progress=False)
    assert "specialist.hidden (checkpoint 16, here 32)" in _one_line(err.value)
    with pytest.raises(RobodualError, match=r"holds a specialist .* but a generalist checkpoint is expected") as err:
        train(store, tmp_path / "dual", config=config, generalist=run, show_progress=False)
    _one_line(err.value)
