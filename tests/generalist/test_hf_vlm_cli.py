"""A Hugging Face VLM generalist from the CLI: LoRA training on a store, the cache, a specialist trained on
it, the offline merge (same outputs) and a changed base folder refused."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from generalist_helpers import cli, make_store, tiny_paligemma
from safetensors.torch import load_file, save_file

from robodual_core.checkpoint import pin_checkpoint
from robodual_core.data import open_dataset
from robodual_core.data.generalist_cache import checkpoint_hash, open_cache_for
from robodual_core.errors import RobodualError
from robodual_core.runtime import load_policy
from robodual_generalist.caching import load_images
from robodual_generalist.families import family_of, load_generalist

SETS = ["--set", "trainer.num_workers=0", "--set", "trainer.batch_size=4", "--set", "model.k_g=2",
        "--set", "model.lora_rank=4", "--set", "trainer.lr=1e-3", "--set", "trainer.ckpt_every=2"]
SPECIALIST = """
model: {hidden: 32, depth: 1, heads: 2, k_s: 2, sensors: [], guidance: {null_tokens: 2}}
trainer: {batch_size: 4, num_workers: 0, warmup_steps: 1, ckpt_every: 2, log_every: 1}
"""



@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("hfvlm")
    base = root / "paligemma"
    tiny_paligemma(base)
    store = make_store(root / "store.zarr", episodes=2, steps=5, action_dim=3)
    cli("train", "generalist", "--dataset", store, "--out", root / "run", "--base", base, "--steps", 2, *SETS)
    return base, store, root / "run"


def test_lora_checkpoint_holds_adapters_and_base_hash(trained):
    base, _, run = trained
    ckpt = run / "checkpoints" / "2"
    meta = json.loads((ckpt / "model_config.json").read_text())
    assert meta["family"] == "hf_vlm" and meta["model"]["lora"] and len(meta["base_hash"]) == 16
    keys = load_file(str(ckpt / "model.safetensors"))
    assert keys and all("lora_" in k or "multi_modal_projector" in k for k in keys)  # adapters + projector
    assert family_of(run) == "hf_vlm"


def test_cache_equals_fresh_inference_and_trains_the_specialist(trained, tmp_path):
    _, store, run = trained
    cli("generalist", "cache", "--policy", run, "--dataset", store, "--batch-size", 4, "--dtype", "float32")
    cache = open_cache_for(store, run)
    assert len(cache) == 10 and cache.attrs["complete"]
    ds = open_dataset(store)
    steps = [0, 4, 5, 9]
    images = torch.cat([load_images(ds.array("rgb_static"), t, t + 1) for t in steps])
    instructions = [ds.instructions[int((ds.episode_ends <= t).sum())] for t in steps]
    want = load_generalist(run).generate({"obs": {"rgb_static": images}, "instruction": instructions})
    got = cache.get(torch.tensor(steps))
    assert torch.equal(got.actions, want.actions)
    n = want.task_latents.shape[1]
    torch.testing.assert_close(got.task_latents[:, :n], want.task_latents, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.action_latents, want.action_latents, rtol=1e-4, atol=1e-4)

    config = tmp_path / "specialist.yaml"
    config.write_text(SPECIALIST)
    cli("train", "specialist", "--dataset", store, "--out", tmp_path / "spec", "--config", config,
        "--generalist-cache", "auto", "--steps", 2)
    record = json.loads((tmp_path / "spec" / "checkpoints" / "2" / "generalist.json").read_text())
    # the cache (and so the specialist) names the checkpoint folder it was built from, not the moving run folder
    assert record["hash"] == checkpoint_hash(run) and record["checkpoint"] == str(pin_checkpoint(run))
    assert Path(record["checkpoint"]).parent == (run / "checkpoints").resolve()
    # the dual policy runs the hf_vlm generalist through the runtime
    policy = load_policy(tmp_path / "spec", mode="sync")
    policy.reset()
    obs = {"rgb_static": np.zeros((32, 32, 3), np.uint8), "proprio": np.zeros(4, np.float32)}
    action = policy.step(obs, ds.instructions[0])
    assert action.shape == (3,) and np.isfinite(action).all()


def test_merge_gives_the_same_outputs(trained, tmp_path):
    base, store, run = trained
    cli("generalist", "merge", run, "--out", tmp_path / "merged")
    assert family_of(tmp_path / "merged") == "hf_vlm"
    ds = open_dataset(store)
    batch = {"obs": {"rgb_static": load_images(ds.array("rgb_static"), 0, 3)}, "instruction": [ds.instructions[0]] * 3}
    a = load_generalist(run).generate(batch)
    b = load_generalist(tmp_path / "merged").generate(batch)
    assert torch.equal(a.actions, b.actions)
    torch.testing.assert_close(a.action_latents, b.action_latents, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a.task_latents, b.task_latents, rtol=1e-4, atol=1e-4)


def test_a_changed_base_folder_is_refused(trained, tmp_path):
    base, store, _ = trained
    moved = tmp_path / "base"
    shutil.copytree(base, moved)
    cli("train", "generalist", "--dataset", store, "--out", tmp_path / "run", "--base", moved, "--steps", 1, *SETS)
    weights = load_file(str(moved / "model.safetensors"))
    name = next(iter(weights))
    weights[name] = weights[name] + 0.01
    save_file(weights, str(moved / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(RobodualError, match="now hashes to"):
        load_generalist(tmp_path / "run")
