"""Hugging Face ids (org/name[@rev]) for --base and a DINO sensor's 'pretrained', resolved from a local cache laid
out as huggingface_hub lays it (models--org--name/{blobs,refs,snapshots}), never downloaded."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from generalist_helpers import TINY, make_store

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER = "fedcba9876543210fedcba9876543210fedcba98"


def cache_repo(cache, repo_id: str, folder, commit: str = COMMIT, refs: tuple[str, ...] = ("main",)):
    """Put ``folder``'s files into ``cache`` as huggingface_hub does: content in blobs/<sha256>, snapshots/<commit>/
    of relative symlinks to them, refs/<branch> holding the commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snap = repo / "snapshots" / commit
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snap / file.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snap


@pytest.fixture(scope="module")
def openvla_folder(tmp_path_factory):
    """The tiny OpenVLA-format checkpoint the generalist tests build (save_openvla of the tiny native model)."""
    from generalist_helpers import tiny_cfg

    from robodual_generalist.model import build_base
    from robodual_generalist.prismatic import save_openvla

    vla, _, _ = build_base(tiny_cfg())
    return save_openvla(vla, tmp_path_factory.mktemp("vla") / "tiny-vla", config=dict(vla.config))


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, openvla_folder):
    cache = tmp_path / "hf" / "hub"
    snap = cache_repo(cache, "acme/tiny-vla", openvla_folder)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # the cache is $HF_HOME/hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache, snap


GEN = [*TINY, "--set", "trainer.batch_size=2", "--set", "model.lora_rank=2", "--set", "model.lora_alpha=4"]


def test_base_id_trains_from_the_cached_snapshot(tmp_path, hub_cache, run):
    cache, snap = hub_cache
    store = make_store(tmp_path / "s.zarr", episodes=2, steps=6, action_dim=3)
    code, cap = run("train", "generalist", "--dataset", store, "--out", tmp_path / "run", "--base", "acme/tiny-vla",
                    "--steps", 1, *GEN)
    assert code == 0, cap.err
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["base"] == str(snap) and config["model"]["family"] == "openvla"
    assert config["base_source"] == {"repo_id": "acme/tiny-vla", "revision": "main", "commit": COMMIT,
                                     "path": str(snap)}
    # resume: the run keeps the same snapshot (and its record) without the id again
    code, cap = run("train", "generalist", "--dataset", store, "--out", tmp_path / "run", "--steps", 2, "--resume")
    assert code == 0, cap.err
    again = json.loads((tmp_path / "run" / "config.json").read_text())
    assert again["model"]["base"] == str(snap) and again["base_source"]["commit"] == COMMIT


def test_revision_picks_a_snapshot_and_a_missing_one_names_the_cache(tmp_path, hub_cache, run, openvla_folder):
    cache, _ = hub_cache
    other = cache_repo(cache, "acme/tiny-vla", openvla_folder, commit=OTHER, refs=("v2",))
    from robodual_core.hub import resolve_model_path

    assert resolve_model_path("acme/tiny-vla", revision="v2") == other
    assert resolve_model_path(f"acme/tiny-vla@{OTHER}") == other
    store = make_store(tmp_path / "s.zarr", episodes=2, steps=6, action_dim=3)
    code, cap = run("train", "generalist", "--dataset", store, "--out", tmp_path / "run", "--base", "acme/tiny-vla",
                    "--revision", "v9", "--steps", 1, *GEN)
    err = " ".join(cap.err.split())
    assert code == 1 and "acme/tiny-vla at revision 'v9' is not in the local cache" in err
    assert str(cache / "models--acme--tiny-vla") in err and "hf download acme/tiny-vla --revision v9" in err
    assert "main" in err and "v2" in err  # what the cache does hold
    assert not (tmp_path / "run" / "config.json").exists()


def test_uncached_id_is_one_line_naming_the_cache_and_the_folder_form(tmp_path, hub_cache, run, monkeypatch):
    cache, _ = hub_cache
    store = make_store(tmp_path / "s.zarr", episodes=2, steps=6, action_dim=3)
    code, cap = run("train", "generalist", "--dataset", store, "--out", tmp_path / "run", "--base",
                    "openvla/openvla-7b", "--steps", 1, *GEN)
    assert code == 1
    lines = [line for line in cap.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --base 'openvla/openvla-7b'")
    assert str(cache / "models--openvla--openvla-7b") in cap.err and "local OpenVLA-format" in cap.err
    # HF_HUB_CACHE wins over HF_HOME, as in huggingface_hub
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    code, cap = run("train", "generalist", "--dataset", store, "--out", tmp_path / "run", "--base", "acme/tiny-vla",
                    "--steps", 1, *GEN)
    assert code == 1 and str(tmp_path / "elsewhere" / "models--acme--tiny-vla") in cap.err
    # --revision without a hub id is refused
    code, cap = run("train", "generalist", "--dataset", store, "--out", tmp_path / "run", "--base", "tiny",
                    "--revision", "main", "--steps", 1, *GEN)
    assert code == 1 and "--revision 'main'" in cap.err


def test_dino_pretrained_from_the_cache(tmp_path, hub_cache):
    import torch
    from safetensors.torch import save_file

    from robodual_core.errors import RobodualError
    from robodual_sensors.backbones import find_dino_weights

    cache, _ = hub_cache
    weights = tmp_path / "dino"
    weights.mkdir()
    save_file({"w": torch.zeros(2)}, str(weights / "model.safetensors"))
    snap = cache_repo(cache, "acme/dino-s16", weights)
    found = find_dino_weights("acme/dino-s16")
    assert found == snap / "model.safetensors" and found.is_file()
    with pytest.raises(RobodualError, match="config key 'pretrained' 'acme/no-dino'.*models--acme--no-dino"):
        find_dino_weights("acme/no-dino")
    with pytest.raises(RobodualError, match="has no model.safetensors"):
        find_dino_weights("acme/tiny-vla")  # cached, but sharded: no model.safetensors
