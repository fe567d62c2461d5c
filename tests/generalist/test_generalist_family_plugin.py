"""A third-party generalist family end to end through the CLI: `robodual plugins install` the example
plugin (examples/robodual-example-generalist), train it with `train generalist --set model.family=bow_mlp`,
cache it with `generalist cache`, condition a specialist on the cache with `--generalist-cache auto`, run the
dual policy, and uninstall it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from generalist_helpers import make_store

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "robodual-example-generalist"
ROBODUAL = str(Path(sys.executable).parent / "robodual")
# offline: no index, no build isolation (the machine's setuptools builds the wheel); one thread on a shared CPU
ENV = {**os.environ, "PIP_NO_INDEX": "1", "PIP_NO_BUILD_ISOLATION": "0", "OMP_NUM_THREADS": "1"}


def robodual(*args, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([ROBODUAL, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=600)
    if ok:
        assert proc.returncode == 0, f"robodual {' '.join(map(str, args))}:\n{proc.stderr}{proc.stdout}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    src = tmp_path_factory.mktemp("plugin") / "robodual-example-generalist"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    try:
        out = robodual("plugins", "install", src).stdout
        assert "example_generalist" in out and "bow_mlp" in out, out
        yield
    finally:
        robodual("plugins", "uninstall", "example_generalist", ok=False)
        names = {p["name"] for p in json.loads(robodual("plugins", "list", "--json").stdout)}
        assert "example_generalist" not in names


@pytest.mark.slow
def test_third_party_generalist_trains_caches_and_conditions_a_specialist(installed, tmp_path):
    store = make_store(tmp_path / "store.zarr", episodes=3, steps=10, action_dim=4)
    gen, spec = tmp_path / "gen", tmp_path / "spec"
    show = robodual("plugins", "show", "example_generalist").stdout
    assert "generalist bow_mlp" in show and "BowMLPGeneralist" in show

    robodual("train", "generalist", "--dataset", store, "--out", gen, "--set", "model.family=bow_mlp",
             "--set", "model.hidden=16", "--set", "trainer.batch_size=8", "--set", "trainer.ckpt_every=6",
             "--steps", 6)
    meta = json.loads((gen / "checkpoints" / "6" / "model_config.json").read_text())
    assert meta["family"] == "bow_mlp" and meta["action_dim"] == 4
    assert json.loads((gen / "config.json").read_text())["model"]["family"] == "bow_mlp"
    # an unknown family is one line naming the registered ones
    bad = robodual("train", "generalist", "--dataset", store, "--out", tmp_path / "x", "--set",
                   "model.family=nope", ok=False)
    assert bad.returncode != 0 and "'model.family' is 'nope'" in bad.stderr and "bow_mlp" in bad.stderr

    summary = json.loads(robodual("generalist", "cache", "--policy", gen, "--dataset", store, "--json").stdout)
    assert summary["num_steps"] == 30 and summary["pooling"] == "none"
    from robodual_core.data.generalist_cache import GeneralistCache, checkpoint_hash

    cache = GeneralistCache(store, summary["checkpoint_hash"])
    assert summary["checkpoint_hash"] == checkpoint_hash(gen)
    row = cache.get([0, 29])
    # task latents: one token per instruction word ("push the red block left": 5), action latents one per step
    assert tuple(row.actions.shape) == (2, 4, 4) and tuple(row.task_latents.shape) == (2, 5, 16)
    assert tuple(row.action_latents.shape) == (2, 4, 16) and row.action_mask.all()
    assert row.task_mask[0].sum() == 3  # "open the drawer"
    assert float(row.actions.abs().max()) <= 1.0

    merged = robodual("generalist", "merge", gen, "--out", tmp_path / "merged", ok=False)
    assert merged.returncode != 0 and "generalist family 'bow_mlp' has no merge" in merged.stderr
    assert len(merged.stderr.strip().splitlines()) == 1

    config = tmp_path / "specialist.yaml"
    config.write_text("model: {hidden: 32, depth: 1, heads: 2, k_s: 2, k_g: 4, sensors: []}\n"
                      "trainer: {batch_size: 4, num_workers: 0, warmup_steps: 1, ckpt_every: 2, log_every: 1}\n")
    robodual("train", "specialist", "--dataset", store, "--out", spec, "--config", config,
             "--generalist-cache", "auto", "--steps", 2)
    record = json.loads((spec / "checkpoints" / "2" / "generalist.json").read_text())
    assert record["hash"] == summary["checkpoint_hash"]
    assert Path(record["checkpoint"]) == (gen / "checkpoints" / "6").resolve()
    assert json.loads((spec / "config.json").read_text())["model"]["generalist_dim"] == 16

    # the dual policy runs the plugin's generalist through its family's runner
    check = (
        "import numpy as np\n"
        "from robodual_core.runtime import load_policy\n"
        f"p = load_policy({str(spec)!r})\n"
        "p.reset()\n"
        "obs = {'rgb_static': np.zeros((32, 32, 3), np.uint8), 'proprio': np.zeros(4, np.float32)}\n"
        "a = p.step(obs, 'open the drawer')\n"
        "print(type(p).__name__, a.shape, bool(np.isfinite(a).all()))\n"
    )
    proc = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["DualSystemPolicy", "(4,)", "True"]
