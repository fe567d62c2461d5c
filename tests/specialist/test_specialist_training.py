"""Training the specialist: it overfits, resumes exactly, matches DDP gradients, every conditioner learns."""

import json
import os

import pytest
import torch
from specialist_helpers import fake_generalist, register_fake_sensor, tiny_config, write_tiny_store

from robodual_core.checkpoint import load_model_state
from robodual_core.config import load_config
from robodual_core.data import WindowDataset
from robodual_core.training import Trainer, TrainerConfig
from robodual_specialist.config import GuidanceConfig, SpecialistConfig
from robodual_specialist.model import DiTSpecialist


@pytest.fixture(autouse=True)
def _fake_sensor():
    register_fake_sensor()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_tiny_store(tmp_path_factory.mktemp("store") / "tiny.zarr")


def window_ds(store, **kw):
    return WindowDataset(store, obs_keys=["rgb_static"], horizon=4, k_g=4, split="all", **kw)


def trainer_cfg(**kw):
    base = dict(steps=20, batch_size=8, num_workers=0, lr=3e-3, warmup_steps=5, scheduler="constant_with_warmup",
                ckpt_every=10, log_every=5, ema=True, ema_decay=0.9, grad_clip=1.0)
    base.update(kw)
    return TrainerConfig(**base)


@pytest.mark.slow
def test_overfits_tiny_dataset(store, tmp_path):
    torch.manual_seed(0)
    ds = [window_ds(store, augment_tau=False)[i] for i in range(48)]  # in memory: the test times the model
    model = DiTSpecialist(tiny_config(generalist_dim=0, guidance=GuidanceConfig(drop_prob=0.0, null_tokens=2)))
    Trainer(model, ds, trainer_cfg(steps=300, batch_size=16, ckpt_every=1000), tmp_path,
            show_progress=False).fit()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["loss"] < 0.02, lines[-1]
    model.eval()
    batch = torch.utils.data.default_collate([ds[i] for i in range(0, len(ds), 3)])
    pred = model.sample(batch, None, guidance_scale=1.0, generator=torch.Generator().manual_seed(0))
    err = (pred - batch["action"]).abs().mean()
    assert err < 0.1, float(err)


def test_resume_equals_uninterrupted(store, tmp_path):
    def make():
        torch.manual_seed(0)
        return DiTSpecialist(tiny_config(generalist_dim=0))

    Trainer(make(), window_ds(store), trainer_cfg(), tmp_path / "full", show_progress=False).fit()
    half = Trainer(make(), window_ds(store), trainer_cfg(), tmp_path / "half", show_progress=False)
    half.cfg.steps = 10
    half.fit()
    torch.manual_seed(1234)
    Trainer(make(), window_ds(store), trainer_cfg(), tmp_path / "half", show_progress=False).fit(resume=True)
    for ema in (False, True):
        a, b = load_model_state(tmp_path / "full", ema=ema), load_model_state(tmp_path / "half", ema=ema)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("conditioner", ["cross_attention", "film", "in_context"])
def test_each_conditioner_trains(conditioner, store):
    torch.manual_seed(0)
    ds = window_ds(store)
    model = DiTSpecialist(tiny_config(conditioner=conditioner, generalist_dim=12))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = torch.utils.data.default_collate([ds[i] for i in range(16)])
    batch["generalist"] = fake_generalist(16)
    fixed = {"noise": torch.randn(batch["action"].shape), "timesteps": torch.randint(0, 100, (16,)),
             "drop": torch.zeros(16, dtype=torch.bool)}
    first = model.loss({**batch, **fixed})[0].item()
    for _ in range(25):
        loss, _ = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert model.loss({**batch, **fixed})[0].item() < 0.5 * first


def _ddp_worker(rank, world, init_file, out_dir, batch, state):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        from torch.nn.parallel import DistributedDataParallel

        from robodual_core.training import _LossModule

        model = DiTSpecialist(tiny_config(sensors=[], generalist_dim=12))
        model.load_state_dict(state)
        ddp = DistributedDataParallel(_LossModule(model))
        n = batch["action"].shape[0] // world
        part = {k: (v[rank * n:(rank + 1) * n] if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        part["generalist"] = type(batch["generalist"])(
            *(getattr(batch["generalist"], f)[rank * n:(rank + 1) * n]
              for f in ("actions", "task_latents", "action_latents", "task_mask", "action_mask")))
        loss, _ = ddp(part)
        loss.backward()
        if rank == 0:
            torch.save({k: p.grad for k, p in model.named_parameters() if p.grad is not None},
                       os.path.join(out_dir, "grads.pt"))
    finally:
        torch.distributed.destroy_process_group()


def _full_batch(B=8):
    g = torch.Generator().manual_seed(3)
    return {
        "obs": {},
        "proprio": torch.rand(B, 3, generator=g),
        "action": torch.rand(B, 4, 4, generator=g) * 2 - 1,
        "tau": torch.randint(0, 4, (B,), generator=g),
        "noise": torch.randn(B, 4, 4, generator=g),
        "timesteps": torch.randint(0, 100, (B,), generator=g),
        "drop": torch.tensor([True, False] * (B // 2)),
        "generalist": fake_generalist(B),
    }


@pytest.mark.slow
def test_ddp_two_processes_match_one_process_gradients(tmp_path):
    torch.manual_seed(0)
    model = DiTSpecialist(tiny_config(sensors=[], generalist_dim=12))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-zero everywhere so that every parameter gets a gradient
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    batch = _full_batch()
    loss, _ = model.loss(batch)
    loss.backward()
    torch.multiprocessing.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path), batch, state),
                                nprocs=2, join=True)
    grads = torch.load(tmp_path / "grads.pt", weights_only=True)
    assert grads.keys() == {k for k, p in model.named_parameters() if p.grad is not None}
    for k, p in model.named_parameters():
        torch.testing.assert_close(grads[k], p.grad, rtol=1e-4, atol=1e-6)


def test_config_file_and_overrides(tmp_path):
    from robodual_specialist.config import SpecialistTrainConfig

    path = tmp_path / "c.yaml"
    path.write_text("model:\n  conditioner: film\n  sensors:\n    - {name: fake_rgb, options: {out_dim: 8}}\n")
    cfg = load_config(SpecialistTrainConfig, path, ["model.guidance.scale=2", "trainer.lr=1e-3"])
    assert cfg.model.conditioner == "film" and cfg.model.sensors[0].options == {"out_dim": 8}
    assert cfg.model.guidance.scale == 2.0 and cfg.trainer.lr == 1e-3
    assert SpecialistConfig().diffusion.prediction_type == "sample"
