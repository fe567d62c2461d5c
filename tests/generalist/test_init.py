"""``train generalist --init``: fine-tuning a trained generalist on another store (the data-efficiency study's
generalist-only baseline on target data)."""

import json

import pytest
import torch
from generalist_helpers import TINY, cli, make_store

from robodual_core.checkpoint import load_model_state, resolve_checkpoint


@pytest.fixture(scope="module")
def broad(tmp_path_factory):
    root = tmp_path_factory.mktemp("init")
    store = make_store(root / "broad.zarr", episodes=3, steps=6, action_dim=3)
    target = make_store(root / "target.zarr", episodes=2, steps=6, action_dim=3, seed=1)
    cli("train", "generalist", "--dataset", store, "--out", root / "broad", "--base", "tiny", "--steps", 4, *TINY)
    return root, target


def test_init_starts_from_the_checkpoint_and_keeps_its_model(broad):
    root, target = broad
    # no model flags: the architecture (hidden 64, image 32, k_g 4) comes from the run it starts from
    cli("train", "generalist", "--dataset", target, "--out", root / "ft", "--init", root / "broad", "--steps", 2,
        "--set", "trainer.num_workers=0", "--set", "trainer.batch_size=4", "--set", "trainer.lr=1e-12",
        "--set", "trainer.warmup_steps=0", "--set", "trainer.ckpt_every=2")
    saved = json.loads((root / "ft" / "config.json").read_text())
    assert saved["init"]["checkpoint"] == str(resolve_checkpoint(root / "broad"))
    assert saved["model"]["tiny"]["hidden_size"] == 64 and saved["model"]["k_g"] == 4
    assert saved["dataset"] == str(target)
    src = load_model_state(root / "broad", ema=False)
    ft = load_model_state(root / "ft", ema=False)
    assert set(src) == set(ft)
    for k in src:  # lr 1e-12: two steps leave the initial weights as they were
        torch.testing.assert_close(ft[k], src[k], msg=k)
    # a run from scratch with the same config does not start there
    cli("train", "generalist", "--dataset", target, "--out", root / "scratch", "--base", "tiny", "--steps", 2,
        *TINY, "--set", "trainer.lr=1e-12", "--set", "trainer.warmup_steps=0")
    scratch = load_model_state(root / "scratch", ema=False)
    assert any(not torch.equal(scratch[k], src[k]) for k in src)
    # the normalizer is the target store's (fine-tuning recomputes the statistics, as OpenVLA's does)
    norm = json.loads((resolve_checkpoint(root / "ft") / "normalizer.json").read_text())
    norm_src = json.loads((resolve_checkpoint(root / "broad") / "normalizer.json").read_text())
    assert norm != norm_src


@pytest.mark.hostile
def test_init_refuses_contradictions_and_other_models(broad, tmp_path, run):
    root, target = broad
    code, cap = run("train", "generalist", "--dataset", target, "--out", tmp_path / "a", "--init", root / "broad",
                    "--resume")
    assert code != 0 and "--init and --resume" in cap.err
    code, cap = run("train", "generalist", "--dataset", target, "--out", tmp_path / "b", "--init", root / "broad",
                    "--base", "tiny")
    assert code != 0 and "--init and --base" in cap.err
    code, cap = run("train", "generalist", "--dataset", target, "--out", tmp_path / "c", "--init", tmp_path / "none")
    assert code != 0 and str(tmp_path / "none") in cap.err
    other = make_store(tmp_path / "d4.zarr", episodes=2, steps=6, action_dim=4)
    code, cap = run("train", "generalist", "--dataset", other, "--out", tmp_path / "d", "--init", root / "broad",
                    "--steps", 1, "--set", "trainer.num_workers=0")
    assert code != 0 and "3-dimensional" in cap.err and "4 dimensions" in cap.err
    # an architecture override that does not fit the checkpoint is named, not silently re-initialised
    code, cap = run("train", "generalist", "--dataset", target, "--out", tmp_path / "e", "--init", root / "broad",
                    "--steps", 1, "--set", "trainer.num_workers=0", "--set", "model.tiny.hidden_size=32")
    assert code != 0 and ("does not fit" in cap.err or "holds another model" in cap.err)


@pytest.mark.hostile
def test_resume_before_the_first_checkpoint_starts_from_the_init_weights_again(broad, tmp_path):
    """A fine-tuning run killed before its first checkpoint resumes from its --init weights (recorded in its
    config.json), not from fresh ones."""
    import shutil

    root, target = broad
    args = ["train", "generalist", "--dataset", target, "--out", tmp_path / "ft", "--steps", 2,
            "--set", "trainer.num_workers=0", "--set", "trainer.batch_size=4", "--set", "trainer.lr=1e-12",
            "--set", "trainer.warmup_steps=0", "--set", "trainer.ckpt_every=2"]
    cli(*args, "--init", root / "broad")
    shutil.rmtree(tmp_path / "ft" / "checkpoints")  # as if killed before the first checkpoint was written
    cli(*args, "--resume")
    src, ft = load_model_state(root / "broad", ema=False), load_model_state(tmp_path / "ft", ema=False)
    for k in src:
        torch.testing.assert_close(ft[k], src[k], msg=k)
