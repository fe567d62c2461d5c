"""robodual policy export RUN OUT, end to end from the CLI on tiny data: a self-contained policy folder (specialist +
the generalist it needs, configs, normalization stats, evaluation results, a README.md model card with YAML
metadata) that --policy and serve load without the training runs or the dataset, every file's sha256 checked."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from robodual_core.errors import RobodualError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "generalist"))
from generalist_helpers import TINY, make_store

pytestmark = pytest.mark.slow

SPEC = ("model: {hidden: 32, depth: 1, heads: 2, k_s: 2, sensors: []}\n"
        "trainer: {batch_size: 4, num_workers: 0, warmup_steps: 1, ckpt_every: 2, log_every: 1}\n")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny generalist, its cache, a dual-system specialist trained on it, and an offline evaluation."""
    from robodual_cli.app import main

    def cli(*args):
        with pytest.raises(SystemExit) as exc:
            main([str(a) for a in args])
            raise SystemExit(0)
        assert exc.value.code == 0, args

    root = tmp_path_factory.mktemp("export")
    store = make_store(root / "s.zarr", episodes=3, steps=6, action_dim=3)
    (root / "spec.yaml").write_text(SPEC)
    cli("train", "generalist", "--dataset", store, "--out", root / "gen", "--base", "tiny", "--steps", 2, *TINY)
    cli("generalist", "cache", "--policy", root / "gen", "--dataset", store, "--batch-size", 8)
    cli("train", "specialist", "--dataset", store, "--out", root / "spec", "--config", root / "spec.yaml",
        "--generalist-cache", "auto", "--steps", 2)
    cli("eval", "offline", "--policy", root / "spec", "--dataset", store, "--split", "all", "--max-episodes", 1)
    return root, store


def card(folder: Path) -> tuple[dict, str]:
    text = (folder / "README.md").read_text()
    match = re.match(r"^---\n(.*?)\n---\n(.*)$", text, re.S)
    assert match, text[:200]
    return yaml.safe_load(match.group(1)), match.group(2)


def actions(policy, store, n=4, seed=0):
    import torch

    from robodual_core.data import open_dataset

    ds = open_dataset(store)
    ep = ds.episode(0, ["rgb_static", "proprio"])
    policy.reset()
    torch.manual_seed(seed)
    return np.stack([policy.step({k: v[t] for k, v in ep.items()}, ds.instructions[0]) for t in range(n)])


def test_export_is_self_contained_and_loads_the_same_policy(runs, tmp_path, run):
    from robodual_core.data.generalist_cache import checkpoint_hash
    from robodual_core.runtime import load_policy

    root, store = runs
    work = tmp_path / "work"
    shutil.copytree(root, work, symlinks=True)  # the runs are moved away below; the module's stay for other tests
    spec_record = json.loads((work / "spec" / "checkpoints" / "2" / "generalist.json").read_text())
    spec_record["checkpoint"] = str(work / "gen" / "checkpoints" / "2")
    (work / "spec" / "checkpoints" / "2" / "generalist.json").write_text(json.dumps(spec_record))
    out = tmp_path / "policy"
    code, cap = run("policy", "export", work / "spec", out)
    assert code == 0, cap.err
    assert "dual policy written" in cap.out
    for rel in ("README.md", "policy.json", "config.json", "generalist_config.json", "eval/offline/results.json",
                "specialist/model.safetensors", "specialist/ema.safetensors", "specialist/normalizer.json",
                "specialist/preprocessing.json", "specialist/observation_spec.json", "generalist/model.safetensors",
                "generalist/model_config.json", "generalist/normalizer.json"):
        assert (out / rel).is_file(), rel
    assert not list(out.rglob("optimizer.safetensors")) and not list(out.rglob("rng.safetensors"))

    meta, text = card(out)
    rd = meta["robodual"]
    assert meta["library_name"] == "robodual" and rd["kind"] == "dual"
    assert rd["generalist"]["hash"] == spec_record["hash"] == checkpoint_hash(work / "gen" / "checkpoints" / "2")
    assert rd["generalist"]["family"] == "openvla" and rd["generalist"]["image_key"] == "rgb_static"
    assert {"rgb_static", "proprio"} <= {k for s in rd["sensors"] for k in s["keys"]}
    assert rd["action_space"]["dim"] == 3 and rd["action_space"]["normalization"] == "q99"
    assert rd["training_data"]["episodes"] == 3 and rd["training_data"]["steps"] == 18
    evaluated = json.loads((work / "spec" / "eval" / "offline" / "results.json").read_text())
    assert rd["evaluation"]["offline"]["mse"] == pytest.approx(evaluated["mse"])
    metrics = meta["model-index"][0]["results"][0]["metrics"]
    assert {"type": "mse", "value": pytest.approx(evaluated["mse"]), "name": "mse"} in metrics
    assert "## Evaluation" in text and "| offline | mse |" in text

    original = load_policy(work / "spec")
    want = actions(original, store)
    # nothing of the training runs is needed any more: not the runs, not the dataset's folder name
    moved = tmp_path / "moved-store.zarr"
    shutil.rmtree(work / "gen")
    shutil.rmtree(work / "spec")
    exported = load_policy(out)
    assert type(exported).__name__ == type(original).__name__ == "DualSystemPolicy"
    np.testing.assert_array_equal(actions(exported, store), want)
    shutil.copytree(store, moved)
    code, cap = run("eval", "offline", "--policy", out, "--dataset", moved, "--split", "all", "--max-episodes", 1,
                    "--out", tmp_path / "ev", "--json")
    assert code == 0, cap.err
    assert json.loads(cap.out)["steps"] == 6


def test_tampering_is_refused_and_the_generalist_hash_is_still_checked(runs, tmp_path, run):
    import hashlib

    from robodual_core.runtime import load_policy

    root, store = runs
    out = tmp_path / "policy"
    code, cap = run("policy", "export", root / "spec", out)
    assert code == 0, cap.err
    weights = out / "generalist" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(RobodualError, match="'generalist/model.safetensors' does not match its sha256"):
        load_policy(out)
    code, cap = run("eval", "offline", "--policy", out, "--dataset", store, "--out", tmp_path / "ev")
    assert code == 1 and len(cap.err.strip().splitlines()) == 1 and "sha256" in cap.err
    # the manifest made to agree with other generalist weights: the hash the specialist was trained with refuses
    manifest = json.loads((out / "policy.json").read_text())
    manifest["files"]["generalist/model.safetensors"] = {"sha256": hashlib.sha256(data).hexdigest(),
                                                         "bytes": len(data)}
    (out / "policy.json").write_text(json.dumps(manifest))
    with pytest.raises(RobodualError, match="trained with generalist .* but .* is now"):
        load_policy(out)


def test_generalist_only_export_and_refusals(runs, tmp_path, run):
    from robodual_core.runtime import load_policy

    root, store = runs
    out = tmp_path / "gen-policy"
    code, cap = run("policy", "export", root / "gen", out, "--json")
    assert code == 0, cap.err
    manifest = json.loads(cap.out)
    assert manifest["kind"] == "generalist" and manifest["checkpoint"] == "generalist"
    assert card(out)[0]["robodual"]["kind"] == "generalist"
    assert type(load_policy(out)).__name__ == "GeneralistOnlyPolicy"
    code, cap = run("policy", "export", root / "gen", out)
    assert code == 1 and "exists; pass --overwrite" in cap.err
    code, cap = run("policy", "export", root / "gen", out, "--overwrite")
    assert code == 0, cap.err
    code, cap = run("policy", "export", out, tmp_path / "again")
    assert code == 1 and "already a policy folder" in cap.err
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    code, cap = run("policy", "export", root / "gen", stranger, "--overwrite")
    assert code == 1 and "refuses" in cap.err and (stranger / "notes.txt").is_file()
    code, cap = run("policy", "export", root / "gen", root / "gen" / "inside")
    assert code == 1 and "the input" in cap.err


def test_serve_loads_the_policy_folder(runs, tmp_path, run):
    from robodual_core.client import RemotePolicy
    from robodual_core.data import open_dataset

    root, store = runs
    out = tmp_path / "policy"
    code, cap = run("policy", "export", root / "spec", out)
    assert code == 0, cap.err
    cmd = [sys.executable, "-m", "robodual_cli.app", "serve", "--policy", str(out), "--port", "0", "--mode", "sync"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        line, deadline = "", time.monotonic() + 240
        while "serving" not in line and time.monotonic() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
        match = re.search(r"ws://[^\s:]+:(\d+)", line)
        assert match, (line, proc.poll(), proc.stderr.read() if proc.poll() is not None else "")
        ds = open_dataset(store)
        ep = ds.episode(0, ["rgb_static", "proprio"])
        with RemotePolicy(f"ws://127.0.0.1:{match.group(1)}") as remote:
            remote.reset()
            action = np.asarray(remote.step({k: np.ascontiguousarray(v[0]) for k, v in ep.items()},
                                            ds.instructions[0]))
        assert action.shape == (3,) and np.isfinite(action).all()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_a_policy_folder_in_the_hugging_face_cache_loads_by_id(runs, tmp_path, monkeypatch):
    from test_hub_cache import cache_repo

    from robodual_core.runtime import load_policy

    root, _ = runs
    out = tmp_path / "policy"
    from robodual_core.policy_folder import export_policy

    export_policy(root / "spec", out)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    cache_repo(tmp_path / "hub", "acme/tiny-policy", out)
    assert type(load_policy("acme/tiny-policy")).__name__ == "DualSystemPolicy"
    with pytest.raises(RobodualError, match="--policy 'acme/other'.*models--acme--other"):
        load_policy("acme/other")


def test_commands_take_a_cached_id_as_policy(runs, tmp_path, monkeypatch, run):
    from test_hub_cache import cache_repo

    from robodual_core.data.generalist_cache import list_caches
    from robodual_core.policy_folder import export_policy

    root, store = runs
    export_policy(root / "spec", tmp_path / "policy")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    snapshot = cache_repo(tmp_path / "hub", "acme/tiny-policy", tmp_path / "policy")
    code, cap = run("eval", "offline", "--policy", "acme/tiny-policy", "--dataset", store, "--split", "all",
                    "--max-episodes", 1, "--out", tmp_path / "ev")
    assert code == 0, cap.err
    assert json.loads((tmp_path / "ev" / "results.json").read_text())["steps"] == 6
    assert not (snapshot / "eval" / "offline" / "actions.png").exists()  # nothing is written into the cache
    code, cap = run("eval", "offline", "--policy", "acme/tiny-policy", "--dataset", store)
    assert code == 1 and "pass --out" in cap.err and len(cap.err.strip().splitlines()) == 1
    # a generalist run in the cache, for `generalist cache`
    cache_repo(tmp_path / "hub", "acme/tiny-gen", root / "gen")
    copy = tmp_path / "store.zarr"
    shutil.copytree(store, copy)
    code, cap = run("generalist", "cache", "--policy", "acme/tiny-gen", "--dataset", copy, "--batch-size", 8,
                    "--overwrite")
    assert code == 0, cap.err
    assert [c["source"] for c in list_caches(copy).values() if "models--acme--tiny-gen" in c["source"]]


@pytest.mark.hostile
def test_a_damaged_manifest_is_one_line(tmp_path, run):
    from robodual_core.runtime import load_policy

    folder = tmp_path / "policy"
    folder.mkdir()
    (folder / "policy.json").write_text("{cut")
    with pytest.raises(RobodualError, match="policy manifest .* is unreadable"):
        load_policy(folder)
    (folder / "policy.json").write_text(json.dumps({"format": 99, "checkpoint": "specialist"}))
    with pytest.raises(RobodualError, match="expected format 1"):
        load_policy(folder)
    (folder / "policy.json").write_text(json.dumps({"format": 1, "checkpoint": "specialist", "files": {}}))
    code, cap = run("serve", "--policy", folder, "--port", 0)
    assert code == 1 and cap.err.startswith("error:") and len(cap.err.strip().splitlines()) == 1


def test_eval_metaworld_reads_the_generation_settings_from_the_manifest(runs, tmp_path):
    """Without its dataset, an exported Meta-World policy still renders at its training image size and cameras."""
    from robodual_core.policy_folder import export_policy
    from robodual_envs.metaworld.commands import dataset_settings_of_run

    root, _ = runs
    manifest = export_policy(root / "gen", tmp_path / "policy")
    assert manifest["dataset"]["path"] and "generator" in manifest["dataset"]
    assert dataset_settings_of_run(tmp_path / "policy") == {}  # not a Meta-World store
    data = json.loads((tmp_path / "policy" / "policy.json").read_text())
    data["dataset"] = {"source": "metaworld", "generator": {"image_size": 64, "cameras": ["corner2"], "depth": False,
                                                            "seed": 3}}
    (tmp_path / "policy" / "policy.json").write_text(json.dumps(data))
    assert dataset_settings_of_run(tmp_path / "policy") == {"image_size": 64, "cameras": ["corner2"], "depth": False}
