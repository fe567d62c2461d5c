"""The shared training loop: it learns, checkpoints atomically and resumes exactly."""

import json

import pytest
import torch
from torch import nn

from robodual_core.checkpoint import checkpoint_steps, load_model_state, read_checkpoint_meta
from robodual_core.errors import RobodualError
from robodual_core.training import Trainer, TrainerConfig


class Regression(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))

    def loss(self, batch):
        pred = self.net(batch["x"]).squeeze(-1)
        loss = nn.functional.mse_loss(pred, batch["y"])
        return loss, {"mse": float(loss.detach())}

    def robodual_config(self):
        return {"family": "test_regression"}


class Data(torch.utils.data.Dataset):
    def __init__(self, n=64):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0])

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


def cfg(**kw):
    base = dict(steps=40, batch_size=8, num_workers=0, lr=1e-2, warmup_steps=2, ckpt_every=20, log_every=5,
                ema=True, ema_decay=0.9, grad_clip=1.0)
    base.update(kw)
    return TrainerConfig(**base)


def test_trainer_learns_and_writes_checkpoints(tmp_path):
    torch.manual_seed(0)
    trainer = Trainer(Regression(), Data(), cfg(steps=200, ckpt_every=100), tmp_path, show_progress=False,
                      extra_json={"normalizer": {"a": 1}})
    trainer.fit()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["loss"] < 0.2 * lines[0]["loss"]
    assert checkpoint_steps(tmp_path) == [100, 200]
    assert read_checkpoint_meta(tmp_path) == {"family": "test_regression"}
    assert json.loads((tmp_path / "checkpoints" / "200" / "normalizer.json").read_text()) == {"a": 1}
    ema = load_model_state(tmp_path, ema=True)
    raw = load_model_state(tmp_path, ema=False)
    assert set(ema) == set(raw)
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)


def test_resume_equals_uninterrupted(tmp_path):
    torch.manual_seed(0)
    full = Trainer(Regression(), Data(), cfg(), tmp_path / "full", show_progress=False)
    full.fit()
    torch.manual_seed(0)
    half = Trainer(Regression(), Data(), cfg(steps=40), tmp_path / "half", show_progress=False)
    half.cfg.steps = 20  # stop at the first checkpoint, as an interrupted run would
    half.fit()
    torch.manual_seed(123)  # a different process state: resume must restore everything itself
    resumed = Trainer(Regression(), Data(), cfg(), tmp_path / "half", show_progress=False)
    resumed.fit(resume=True)
    a = load_model_state(tmp_path / "full", ema=False)
    b = load_model_state(tmp_path / "half", ema=False)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    ea = load_model_state(tmp_path / "full", ema=True)
    eb = load_model_state(tmp_path / "half", ema=True)
    for k in ea:
        torch.testing.assert_close(ea[k], eb[k], rtol=1e-5, atol=1e-6)


def test_existing_run_needs_resume(tmp_path):
    Trainer(Regression(), Data(), cfg(steps=20), tmp_path, show_progress=False).fit()
    with pytest.raises(RobodualError, match="--resume"):
        Trainer(Regression(), Data(), cfg(steps=20), tmp_path, show_progress=False).fit()


def test_ema_update_equals_diffusers_ema_model():
    """The trainer's EMA (one foreach lerp per step) follows diffusers' EMAModel, decay warm-up included."""
    from diffusers.training_utils import EMAModel

    from robodual_core.training import _lerp_ema

    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(5, 3)), nn.Parameter(torch.randn(7))]
    kw = {"decay": 0.99, "use_ema_warmup": True, "inv_gamma": 1.0, "power": 2 / 3, "foreach": True}
    ours, ref = _lerp_ema(params, **kw), EMAModel(params, **kw)
    for _ in range(5):
        with torch.no_grad():
            for p in params:
                p.add_(torch.randn_like(p))
        ours.step(params)
        ref.step(params)
    assert ours.optimization_step == ref.optimization_step == 5 and ours.cur_decay_value == ref.cur_decay_value
    for a, b, p in zip(ours.shadow_params, ref.shadow_params, params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        assert not torch.allclose(a, p)  # really averaged, not copied


@pytest.mark.slow
def test_compile_trains_the_same_model(tmp_path):
    """trainer.compile compiles the model's compile_targets in place: same losses as eager, same checkpoint keys."""

    class Compiled(Regression):
        def compile_targets(self):
            return [self.net]

    runs = {}
    for name, flag in (("eager", False), ("compiled", True)):
        torch.manual_seed(0)
        model = Compiled()
        Trainer(model, Data(), cfg(steps=10, ckpt_every=10, compile=flag), tmp_path / name, show_progress=False).fit()
        assert (model.net._compiled_call_impl is not None) == flag
        runs[name] = [json.loads(line)["loss"] for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        runs[name + "_keys"] = sorted(load_model_state(tmp_path / name, ema=False))
    assert runs["eager_keys"] == runs["compiled_keys"]
    assert runs["eager"] == pytest.approx(runs["compiled"], rel=1e-4)
    with pytest.raises(RobodualError, match="trainer.compile"):
        Trainer(Regression(), Data(), cfg(compile=True), tmp_path / "plain", show_progress=False)


@pytest.mark.parametrize("clip", [0.05, 0.0, 1e3])  # scaled; no clipping; within the limit (scaling pass skipped)
def test_gradient_clipping_matches_clip_grad_norm(tmp_path, clip):
    torch.manual_seed(0)
    model = Regression()
    model.net[0].bias.requires_grad_(False)  # frozen: neither in the norm nor scaled
    trainer = Trainer(model, Data(), cfg(grad_clip=clip), tmp_path, show_progress=False)
    batch = next(iter(torch.utils.data.DataLoader(Data(), batch_size=8)))
    model.loss(batch)[0].backward()
    model.net[0].bias.grad = torch.full_like(model.net[0].bias, 100.0)  # must be ignored
    trained = [p for p in model.parameters() if p.requires_grad]
    reference = [nn.Parameter(p.detach().clone()) for p in trained]
    for r, p in zip(reference, trained, strict=True):
        r.grad = p.grad.clone()
    expected_norm = torch.nn.utils.clip_grad_norm_(reference, clip if clip > 0 else float("inf"))
    assert expected_norm > 0.05  # the clipped case really has to scale
    norm = trainer._clip_gradients()
    torch.testing.assert_close(norm, expected_norm)
    for p, r in zip(trained, reference, strict=True):
        torch.testing.assert_close(p.grad, r.grad, rtol=0 if clip != 0.05 else None, atol=0 if clip != 0.05 else None)
    assert torch.equal(model.net[0].bias.grad, torch.full_like(model.net[0].bias, 100.0))


def test_device_names_are_checked():
    from robodual_core.training import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(RobodualError, match="device 'gpu0' is not one of auto, cpu, cuda"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(RobodualError, match="CUDA is not available"):
            resolve_device("cuda")


def _weights(path, ema):
    return load_model_state(path, ema=ema)


def test_flat_parameters_train_like_per_tensor_and_share_the_checkpoint_format(tmp_path):
    """Flat buffers (the default) give the per-tensor optimizer's weights and EMA, write the same per-parameter
    optimizer state, and a run checkpointed one way resumes exactly the other way."""
    runs = {}
    for name, flat in (("flat", True), ("tensors", False)):
        torch.manual_seed(0)
        trainer = Trainer(Regression(), Data(), cfg(flat_params=flat), tmp_path / name, show_progress=False)
        assert (trainer._flat is not None) == flat and len(trainer._params) == (2 if flat else 4)
        trainer.fit()
        runs[name] = trainer
    for ema in (False, True):
        a, b = _weights(tmp_path / "flat", ema), _weights(tmp_path / "tensors", ema)
        assert set(a) == set(b)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    from safetensors.torch import load_file

    for step in (20, 40):
        a = load_file(tmp_path / "flat" / "checkpoints" / str(step) / "optimizer.safetensors")
        b = load_file(tmp_path / "tensors" / "checkpoints" / str(step) / "optimizer.safetensors")
        assert set(a) == set(b)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7)
    for first, then in ((True, False), (False, True)):
        run = tmp_path / f"cross_{first}"
        torch.manual_seed(0)
        half = Trainer(Regression(), Data(), cfg(flat_params=first), run, show_progress=False)
        half.cfg.steps = 20
        half.fit()
        Trainer(Regression(), Data(), cfg(flat_params=then), run, show_progress=False).fit(resume=True)
        for ema in (False, True):
            a, b = _weights(tmp_path / "flat", ema), _weights(run, ema)
            for k in a:
                torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_flat_parameters_stay_aliased_and_refuse_a_moved_model(tmp_path):
    class NoBias(Regression):  # no 1-d parameter: the no-decay group is empty
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 16, bias=False), nn.ReLU(), nn.Linear(16, 1, bias=False))

    torch.manual_seed(0)
    model = NoBias()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(model, Data(), cfg(steps=5, ckpt_every=5), tmp_path / "nobias", show_progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # flattening keeps the values
    trainer.fit()
    assert not torch.equal(before["net.0.weight"], model.net[0].weight)  # steps reach the module's parameters
    for p in trainer.model.parameters():  # what model.to(another device) does: the optimizer would miss them
        p.data = p.data.clone()
    trainer.cfg.steps = 6
    with pytest.raises(RobodualError, match="replaced after the"):
        trainer.fit(resume=True)
    torch.manual_seed(0)
    trainer = Trainer(NoBias(), Data(), cfg(steps=5, ckpt_every=5), tmp_path / "none", show_progress=False)
    trainer.model.zero_grad(set_to_none=True)  # backward would then make gradients outside the buffer
    with pytest.raises(RobodualError, match="zero_grad"):
        trainer.fit()


def test_keep_checkpoints_zero_keeps_all(tmp_path):
    Trainer(Regression(), Data(), cfg(keep_checkpoints=0), tmp_path / "all", show_progress=False).fit()
    assert checkpoint_steps(tmp_path / "all") == [20, 40]
    Trainer(Regression(), Data(), cfg(keep_checkpoints=1), tmp_path / "one", show_progress=False).fit()
    assert checkpoint_steps(tmp_path / "one") == [40]


def test_checkpoint_folders_get_the_usual_permissions(tmp_path):
    """atomic_dir's temporary folder (mkdtemp: 0700) is opened to the umask, as a plain mkdir would be."""
    import os
    import stat

    from robodual_core.io import atomic_dir

    mask = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "ckpt") as tmp:
            (tmp / "a.txt").write_text("x")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "ckpt").stat().st_mode) == 0o755


def test_resume_refuses_another_batch_size(tmp_path):
    half = Trainer(Regression(), Data(), cfg(steps=40), tmp_path, show_progress=False)
    half.cfg.steps = 20
    half.fit()
    with pytest.raises(RobodualError, match="trained with batch_size 8, this run has 4"):
        Trainer(Regression(), Data(), cfg(batch_size=4), tmp_path, show_progress=False).fit(resume=True)


def test_resumed_run_logs_each_step_once(tmp_path, monkeypatch):
    """Steps logged after the last checkpoint of an interrupted run are trained again on resume; metrics.jsonl
    keeps one line per step."""
    step = Trainer.train_step

    def interrupted(self, batches):
        if self.step >= 30:
            raise KeyboardInterrupt
        return step(self, batches)

    monkeypatch.setattr(Trainer, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Trainer(Regression(), Data(), cfg(), tmp_path, show_progress=False).fit()
    monkeypatch.setattr(Trainer, "train_step", step)
    Trainer(Regression(), Data(), cfg(), tmp_path, show_progress=False).fit(resume=True)
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(5, 41, 5))


class PidData(Data):
    """Each sample says which process read it."""

    def __getitem__(self, i):
        import os

        return {**super().__getitem__(i), "pid": torch.tensor(os.getpid())}


def test_loader_workers_persist_across_epochs_and_serve_the_same_batches(tmp_path):
    """Worker processes are started once per run, not once per epoch (a new worker rebuilt the dataset's
    in-memory frame cache every epoch: issue 20), and 2 workers give the batches 0 workers give."""
    import itertools

    def run(workers, out):
        trainer = Trainer(Regression(), PidData(n=24), cfg(num_workers=workers), out, show_progress=False)
        batches = list(itertools.islice(trainer.batches(), 9))  # 3 epochs of 3 batches
        return trainer, batches

    trainer, with_workers = run(2, tmp_path / "w2")
    _, without = run(0, tmp_path / "w0")
    assert trainer._loader() is trainer._loader()
    for a, b in zip(with_workers, without, strict=True):
        assert torch.equal(a["x"], b["x"]) and torch.equal(a["y"], b["y"])
    pids = [set(b["pid"].tolist()) for b in with_workers]
    first, last = set().union(*pids[:3]), set().union(*pids[-3:])
    assert first & last, "the last epoch's batches came from new worker processes"
    assert trainer.sampler.epoch == 2
