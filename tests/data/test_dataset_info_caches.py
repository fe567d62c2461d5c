"""`robodual dataset info` lists the store's generalist caches with the checkpoint folder and date each came from."""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import pytest
from dataset_helpers import LENGTHS, make_store


def _checkpoint(run_dir, step: int, seed: int):
    ckpt = run_dir / "checkpoints" / str(step)
    ckpt.mkdir(parents=True)
    (ckpt / "model_config.json").write_text(json.dumps({"kind": "generalist", "seed": seed}))
    (ckpt / "model.safetensors").write_bytes(os.urandom(32))
    (ckpt / "training_state.json").write_text("{}")
    return ckpt.resolve()


def _cache(store, ckpt, complete: bool = True, legacy: bool = False) -> str:
    """A cache of ``ckpt``'s outputs (zeros) as `robodual generalist cache` writes it; ``legacy``: as caches
    written before the checkpoint's date and the cache's start were recorded."""
    from robodual_core.data.generalist_cache import GeneralistCacheWriter, checkpoint_date, checkpoint_hash

    n, h = sum(LENGTHS), checkpoint_hash(ckpt)
    w = GeneralistCacheWriter(store, h, n, 2, 3, 2, 6, 4, dtype="float32", source=str(ckpt),
                              source_date=checkpoint_date(ckpt))
    if legacy:
        for key in ("checkpoint_date", "created"):
            del w.group.attrs[key]
    if complete:
        w.write(0, {"actions": np.zeros((n, 2, 3)), "task_latents": np.zeros((n, 2, 4)),
                    "action_latents": np.zeros((n, 6, 4)), "task_mask": np.ones((n, 2), bool),
                    "action_mask": np.ones((n, 6), bool)})
        w.finalize()
    return h


def test_info_lists_every_cache_with_its_checkpoint_and_date(tmp_path, run):
    store = make_store(tmp_path / "a.zarr")
    code, cap = run("dataset", "info", store, "--json")
    assert code == 0 and json.loads(cap.out)["generalist_caches"] == []
    ckpt_a, ckpt_b = _checkpoint(tmp_path / "smolvlm_run", 2, 0), _checkpoint(tmp_path / "paligemma_run", 4, 1)
    ha, hb = _cache(store, ckpt_a), _cache(store, ckpt_b, complete=False)
    code, cap = run("dataset", "info", store, "--json")
    caches = {c["hash"]: c for c in json.loads(cap.out)["generalist_caches"]}
    assert code == 0 and set(caches) == {ha, hb}
    assert caches[ha]["checkpoint"] == str(ckpt_a) and caches[ha]["complete"] is True
    assert caches[hb]["checkpoint"] == str(ckpt_b) and caches[hb]["complete"] is False
    for c in caches.values():
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", c["date"])
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", c["cached"])
    code, cap = run("dataset", "info", store)
    assert code == 0 and "generalist caches 2" in cap.out
    line_a = next(line for line in cap.out.splitlines() if ha in line)
    assert str(ckpt_a) in line_a and re.search(r"checkpoint of \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", line_a)
    line_b = next(line for line in cap.out.splitlines() if hb in line)
    assert str(ckpt_b) in line_b and "incomplete 0/19" in line_b


@pytest.mark.hostile
def test_info_on_a_cache_from_before_dates_were_recorded(tmp_path, run):
    """The date is read from the checkpoint folder while it exists; a deleted folder's is 'unknown', no error."""
    store = make_store(tmp_path / "a.zarr")
    ckpt = _checkpoint(tmp_path / "old_run", 1, 0)
    h = _cache(store, ckpt, legacy=True)
    code, cap = run("dataset", "info", store, "--json")
    entry = json.loads(cap.out)["generalist_caches"][0]
    assert code == 0 and entry["hash"] == h and entry["date"] and entry["cached"]
    shutil.rmtree(tmp_path / "old_run")
    code, cap = run("dataset", "info", store, "--json")
    entry = json.loads(cap.out)["generalist_caches"][0]
    assert code == 0 and entry["date"] is None and entry["checkpoint"] == str(ckpt)
    code, cap = run("dataset", "info", store)
    assert code == 0 and "date unknown" in cap.out
