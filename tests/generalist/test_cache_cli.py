"""CLI end to end: train -> cache -> merge; the cache equals fresh inference, resumes, and refuses
another checkpoint's outputs."""

from pathlib import Path

import numpy as np
import pytest
import torch
from generalist_helpers import TINY, cli, make_store

from robodual_core.data import open_dataset
from robodual_core.data.generalist_cache import GeneralistCache, checkpoint_hash, list_caches, open_cache_for
from robodual_core.errors import RobodualError
from robodual_generalist.caching import build_cache, load_images
from robodual_generalist.model import VLAGeneralist


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    store = make_store(root / "store.zarr", episodes=3, steps=6, action_dim=3)
    cli("train", "generalist", "--dataset", store, "--out", root / "run", "--base", "tiny", "--steps", 2, *TINY)
    return store, root / "run"


def fresh(model, store, steps):
    ds = open_dataset(store)
    ep = [int((ds.episode_ends <= t).sum()) for t in steps]
    images = torch.cat([load_images(ds.array("rgb_static"), t, t + 1) for t in steps])
    return model.generate({"obs": {"rgb_static": images}, "instruction": [ds.instructions[e] for e in ep]})


def test_cache_equals_fresh_inference(trained):
    store, run = trained
    cli("generalist", "cache", "--policy", run, "--dataset", store, "--batch-size", 4, "--dtype", "float32")
    cache = open_cache_for(store, run)
    assert len(cache) == 18 and cache.attrs["complete"] and cache.k_g == 4
    steps = [0, 5, 6, 11, 17]
    got = cache.get(torch.tensor(steps))
    want = fresh(VLAGeneralist.from_checkpoint(run), store, steps)
    assert torch.equal(got.actions, want.actions)
    n = want.task_latents.shape[1]
    torch.testing.assert_close(got.task_latents[:, :n], want.task_latents, rtol=1e-4, atol=1e-4)
    assert torch.equal(got.task_mask[:, :n], want.task_mask) and not got.task_mask[:, n:].any()
    torch.testing.assert_close(got.action_latents, want.action_latents, rtol=1e-4, atol=1e-4)
    assert got.action_mask.all()


def test_cache_resumes_after_an_interruption(trained, tmp_path, monkeypatch):
    store, run = trained
    calls = {"n": 0}
    original = VLAGeneralist.generate

    def flaky(self, batch, use_cache=True):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original(self, batch, use_cache)

    monkeypatch.setattr(VLAGeneralist, "generate", flaky)
    with pytest.raises(KeyboardInterrupt):
        build_cache(run, store, batch_size=4, dtype="float16", overwrite=True, show_progress=False)
    h = checkpoint_hash(run)
    attrs = list_caches(store)[h]
    assert attrs["done_until"] == 16 and not attrs["complete"]
    with pytest.raises(RobodualError, match="incomplete"):
        GeneralistCache(store, h)
    calls["n"] = -100
    summary = build_cache(run, store, batch_size=4, dtype="float16", show_progress=False)
    assert calls["n"] == -99  # only the last block (2 steps, one batch) was computed
    assert summary["num_steps"] == 18 and summary["bytes_per_step"] > 0
    assert GeneralistCache(store, h).attrs["complete"]


def test_cache_from_another_checkpoint_is_refused(trained, tmp_path):
    store, run = trained
    build_cache(run, store, batch_size=8, show_progress=False)
    with pytest.raises(RobodualError, match="no generalist cache for checkpoint 00000000"):
        GeneralistCache(store, "0000000000000000")
    # train on: the latest checkpoint has other weights, so the old cache must not be used for it
    cli("train", "generalist", "--dataset", store, "--out", run, "--resume", "--steps", 4, *TINY)
    with pytest.raises(RobodualError, match="no generalist cache"):
        open_cache_for(store, run)
    assert checkpoint_hash(run) != checkpoint_hash(run / "checkpoints" / "2")


def test_merge_cli_writes_an_openvla_folder_with_the_same_outputs(trained, tmp_path):
    store, run = trained
    cli("generalist", "merge", run, "--out", tmp_path / "merged")
    assert (tmp_path / "merged" / "model.safetensors.index.json").is_file()
    a = fresh(VLAGeneralist.from_checkpoint(run), store, [0, 7])
    b = fresh(VLAGeneralist.from_checkpoint(tmp_path / "merged"), store, [0, 7])
    assert torch.equal(a.actions, b.actions)
    torch.testing.assert_close(a.action_latents, b.action_latents)


def test_pooled_cache_shrinks_the_latents(trained):
    store, run = trained
    summary = build_cache(run, store, batch_size=8, pooling="mean", overwrite=True, show_progress=False)
    got = open_cache_for(store, run).get(torch.tensor([0, 17]))
    assert got.task_latents.shape == (2, 1, 64) and got.action_latents.shape == (2, 1, 64)
    assert got.task_mask.all() and got.action_mask.all() and got.actions.shape == (2, 4, 3)
    assert summary["pooling"] == "mean" and summary["bytes_per_step"] < 64 * 4 * 10


def test_specialist_trains_on_the_generalist_online(trained, tmp_path, monkeypatch):
    """--generalist RUN runs the generalist on every batch; its outputs equal the cache's rows."""
    import json

    from robodual_core.data import open_dataset as open_store
    from robodual_specialist.train import online_generalist

    store, run = trained
    build_cache(run, store, batch_size=8, dtype="float32", overwrite=True, show_progress=False)
    online, record = online_generalist(open_store(store), run, "none")
    steps = [0, 6, 17]
    got, want = online.outputs(steps), open_cache_for(store, run).get(torch.tensor(steps))
    assert torch.equal(got.actions, want.actions)
    n = got.task_latents.shape[1]
    torch.testing.assert_close(got.task_latents, want.task_latents[:, :n], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.action_latents, want.action_latents, rtol=1e-4, atol=1e-4)
    assert isinstance(online.images, np.ndarray)  # a small store's frames are read once, into memory
    import robodual_core.data.sampler as sampler

    monkeypatch.setattr(sampler, "IMAGE_CACHE_BYTES", 0)  # a large store: frames read from zarr per batch
    from_zarr, _ = online_generalist(open_store(store), run, "none")
    assert not isinstance(from_zarr.images, np.ndarray)
    assert torch.equal(from_zarr.outputs(steps).actions, got.actions)
    config = tmp_path / "specialist.yaml"
    config.write_text("model: {hidden: 32, depth: 1, heads: 2, k_s: 2, sensors: []}\n"
                      "trainer: {batch_size: 4, num_workers: 0, warmup_steps: 1, ckpt_every: 2, log_every: 1}\n")
    cli("train", "specialist", "--dataset", store, "--out", tmp_path / "spec", "--config", config,
        "--generalist", run, "--steps", 2)
    saved = json.loads((tmp_path / "spec" / "checkpoints" / "2" / "generalist.json").read_text())
    assert saved == record and saved["online"] and saved["hash"] == checkpoint_hash(run)
    resolved = json.loads((tmp_path / "spec" / "config.json").read_text())
    assert resolved["model"]["generalist_dim"] == 64 and resolved["model"]["k_g"] == 4
    with pytest.raises(RobodualError, match="pass one"):
        from robodual_specialist.train import train

        train(store, tmp_path / "x", config=config, generalist_cache="auto", generalist=run, show_progress=False)


def test_the_specialist_keeps_the_generalist_checkpoint_it_was_trained_with(trained, tmp_path):
    """The cache and generalist.json name the checkpoint folder, not the run folder (whose latest checkpoint
    moves when it trains on), and the runtime refuses a generalist that no longer hashes as recorded."""
    import json
    import shutil

    from robodual_core.runtime import load_policy

    store, run = trained
    gen = tmp_path / "gen"
    shutil.copytree(run, gen)
    build_cache(gen, store, batch_size=8, overwrite=True, show_progress=False)
    config = tmp_path / "specialist.yaml"
    config.write_text("model: {hidden: 32, depth: 1, heads: 2, k_s: 2, sensors: []}\n"
                      "trainer: {batch_size: 4, num_workers: 0, warmup_steps: 1, ckpt_every: 2, log_every: 1}\n")
    cli("train", "specialist", "--dataset", store, "--out", tmp_path / "spec", "--config", config,
        "--generalist-cache", checkpoint_hash(gen), "--steps", 2)
    path = tmp_path / "spec" / "checkpoints" / "2" / "generalist.json"
    record = json.loads(path.read_text())
    assert Path(record["checkpoint"]).parent == (gen / "checkpoints").resolve()
    # the generalist trains on; the specialist still runs with the checkpoint it was trained with
    steps = max(int(p.name) for p in (gen / "checkpoints").iterdir() if p.name.isdigit())
    cli("train", "generalist", "--dataset", store, "--out", gen, "--resume", "--steps", steps + 2, *TINY)
    load_policy(tmp_path / "spec", mode="sync")
    # an older record that named the run folder now finds other weights there: refused, naming the file
    path.write_text(json.dumps({**record, "checkpoint": str(gen)}))
    with pytest.raises(RobodualError, match="trained with generalist .* but .* is now"):
        load_policy(tmp_path / "spec", mode="sync")


def test_lora_run_resumes_exactly(tmp_path, monkeypatch):
    """A LoRA run (checkpoints hold the trainable weights only) interrupted after its step-2 checkpoint and
    resumed ends with the weights of an uninterrupted run."""
    from safetensors.torch import load_file

    from robodual_core.training import Trainer

    store = make_store(tmp_path / "store.zarr", episodes=2, steps=6, action_dim=3)
    lora = [*TINY, "--set", "model.lora=true", "--set", "model.lora_rank=4", "--set", "trainer.lr=1e-2"]
    cli("train", "generalist", "--dataset", store, "--out", tmp_path / "a", "--base", "tiny", "--steps", 4, *lora)
    step = Trainer.train_step

    def interrupted(self, batches):
        if self.step >= 2:
            raise KeyboardInterrupt
        return step(self, batches)

    with monkeypatch.context() as m:
        m.setattr(Trainer, "train_step", interrupted)
        with pytest.raises((KeyboardInterrupt, AssertionError, SystemExit)):
            cli("train", "generalist", "--dataset", store, "--out", tmp_path / "b", "--base", "tiny", "--steps", 4,
                *lora)
    assert not (tmp_path / "b" / "checkpoints" / "4").exists()
    cli("train", "generalist", "--dataset", store, "--out", tmp_path / "b", "--resume", "--steps", 4, *lora)
    a, b = (load_file(str(tmp_path / r / "checkpoints" / "4" / "model.safetensors")) for r in "ab")
    assert a.keys() == b.keys() and any("lora" in k for k in a)
    start = load_file(str(tmp_path / "b" / "checkpoints" / "2" / "model.safetensors"))
    assert any(not torch.equal(start[k], b[k]) for k in b)  # the resumed steps trained
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_gradient_checkpointing_gives_the_same_gradients():
    from generalist_helpers import batch_of, tiny_cfg

    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = VLAGeneralist(tiny_cfg(gradient_checkpointing=checkpointing), action_dim=3).train()
        loss, _ = model.loss(batch_of(2, action_dim=3, k_g=4))
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n])


def test_merged_folder_unnormalizes_with_the_run_statistics_and_mask(trained, tmp_path):
    """A fine-tuned generalist keeps OpenVLA's mask semantics for its own statistics: the run's normalizer (here
    with the last dimension masked, as OpenVLA masks the gripper) becomes the merged folder's norm_stats, and the
    run, the merged folder and the merged folder's norm_stats under its unnorm_key give the same actions."""
    import json
    import shutil

    from robodual_core.checkpoint import latest_checkpoint
    from robodual_core.runtime import load_runner

    store, run = trained
    src = tmp_path / "run"
    shutil.copytree(run, src)
    ckpt = latest_checkpoint(src)
    normalizer = json.loads((ckpt / "normalizer.json").read_text())
    normalizer["action"]["mask"] = [True, True, False]
    (ckpt / "normalizer.json").write_text(json.dumps(normalizer))
    cli("generalist", "merge", ckpt, "--out", tmp_path / "merged")
    stats = json.loads((tmp_path / "merged" / "config.json").read_text())["norm_stats"]
    assert stats == {"robodual": {"action": {k: normalizer["action"][k] for k in ("q01", "q99", "mask")}}}
    image = open_dataset(store).array("rgb_static")[3]
    instruction = open_dataset(store).instructions[0]
    got = []
    for path, key in ((ckpt, None), (tmp_path / "merged", None), (tmp_path / "merged", "robodual")):
        runner = load_runner("generalist", path, **({"unnorm_key": key} if key else {}))
        out = runner.predict({"rgb_static": np.asarray(image)}, instruction)
        got.append(runner.actions_to_env(out.actions[0]))
        normalized = runner.model.action_tokenizer.exact_centres(out.actions[0].numpy())
        assert np.array_equal(got[-1][:, 2], normalized[:, 2])  # the masked dimension stays normalized
        assert not np.array_equal(got[-1][:, 0], normalized[:, 0])
    assert np.array_equal(got[0], got[1]) and np.array_equal(got[1], got[2])
    with pytest.raises(RobodualError, match="unnorm_key.*'robodual'.*not an OpenVLA-format folder"):
        load_runner("generalist", ckpt, unnorm_key="robodual")
