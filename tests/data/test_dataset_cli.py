"""`robodual dataset info|stats|validate|view|split|merge` and `robodual bench loader` from the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from dataset_helpers import LENGTHS, episode, make_store

from robodual_core.data import open_dataset, split_episodes


def test_info_stats_validate(tmp_path, run):
    store = make_store(tmp_path / "a.zarr")
    code, cap = run("dataset", "info", store, "--json")
    info = json.loads(cap.out)
    assert code == 0 and info["episodes"] == 4 and info["steps"] == sum(LENGTHS) and info["tasks"] == 4
    rgb = next(k for k in info["keys"] if k["key"] == "rgb_static")
    assert rgb["chunks"] == [1, 8, 8, 3] and rgb["compressor"].startswith("blosc/zstd") and rgb["bytes_on_disk"] > 0
    code, cap = run("dataset", "info", store)
    assert code == 0 and "rgb_static" in cap.out
    code, cap = run("dataset", "stats", store, "--json")
    assert code == 0 and json.loads(cap.out)["action"]["max"] == [303.0, 0.0, 3.0]
    code, cap = run("dataset", "validate", store)
    assert code == 0 and "valid" in cap.out
    import zarr

    root = zarr.open_group(str(store), mode="r+")
    root.attrs["stats"] = {}
    code, cap = run("dataset", "validate", store, "--json")
    report = json.loads(cap.out)
    assert code == 1 and not report["valid"] and any("no entry for 'action'" in p for p in report["problems"])
    code, cap = run("dataset", "stats", store, "--recompute")
    assert code == 0 and open_dataset(store).stats["action"]["max"] == [303.0, 0.0, 3.0]
    code, cap = run("dataset", "info", tmp_path / "nope.zarr")
    assert code == 1 and "does not exist" in cap.err


def test_view_writes_a_png(tmp_path, run):
    store = make_store(tmp_path / "a.zarr")
    code, _ = run("dataset", "view", store, "--episode", 2, "-o", tmp_path / "ep.png")
    assert code == 0 and (tmp_path / "ep.png").read_bytes()[:4] == b"\x89PNG"
    code, cap = run("dataset", "view", store, "--episode", 9, "-o", tmp_path / "x.png")
    assert code == 1 and "episode 9 is out of range" in cap.err


def test_split_and_merge(tmp_path, run):
    store = make_store(tmp_path / "a.zarr")
    code, _ = run("dataset", "split", store, "--out", tmp_path / "parts", "--val-ratio", 0.25, "--seed", 1)
    assert code == 0
    train, val = open_dataset(tmp_path / "parts/train.zarr"), open_dataset(tmp_path / "parts/val.zarr")
    val_ids = split_episodes(4, "val", 0.25, 1)
    assert train.num_episodes == 3 and val.num_episodes == 1
    assert val.tasks == [f"task{i}" for i in val_ids]
    np.testing.assert_array_equal(val.episode(0)["action"], episode(int(val_ids[0]), LENGTHS[val_ids[0]])["action"])
    code, _ = run("dataset", "merge", tmp_path / "parts/val.zarr", tmp_path / "parts/train.zarr",
                  "--out", tmp_path / "merged.zarr")
    merged = open_dataset(tmp_path / "merged.zarr")
    assert code == 0 and merged.num_episodes == 4 and merged.num_steps == sum(LENGTHS)
    assert merged.tasks == val.tasks + train.tasks
    assert merged.stats["action"]["max"] == open_dataset(store).stats["action"]["max"]
    code, cap = run("dataset", "split", store, "--out", tmp_path / "parts", "--val-episodes", "0")
    assert code == 1 and "already exists" in cap.err

    from robodual_core.data import DatasetWriter

    with DatasetWriter(tmp_path / "other.zarr", fps=10, modalities={"action": "action"}) as w:
        w.add_episode({"action": np.zeros((2, 3), np.float32)})
    code, cap = run("dataset", "merge", store, tmp_path / "other.zarr", "--out", tmp_path / "m2.zarr")
    assert code == 1 and "does not match" in cap.err and "key 'depth_static'" in cap.err


def test_bench_loader_writes_json(tmp_path, run):
    store = make_store(tmp_path / "a.zarr")
    out = tmp_path / "bench.json"
    from robodual_core.data.bench_loader import loader_report

    report = loader_report(store, workers=(0,), batch_size=4, seconds=0.2, consumption_samples_per_s=10.0)
    assert report["runs"][0]["samples_per_s"] > 0 and report["ratio_workers2_over_consumption"] is None
    code, cap = run("bench", "loader", "--data", store, "--out", out, "--workers", "0", "--seconds", 0.2,
                    "--batch-size", 4)
    data = json.loads(out.read_text())
    assert code == 0 and data["bench"] == "loader" and data["results"]["samples_per_s"]["0"] > 0
    assert "consumption_samples_per_s" in data["results"]
    # the baselines beside the setting: a plain 0-worker DataLoader and frames read from chunks on demand
    store_report = next(iter(data["results"]["stores"].values()))
    for condition in ("quiet", "busy"):
        rates = store_report["conditions"][condition]["samples_per_s"]
        assert rates["0_plain_default_threads"] > 0 and rates["0_on_demand_chunk_reads"] > 0
        assert "2_on_demand_chunk_reads" not in rates  # only beside a 2-worker setting
        ratio = store_report["goals"][condition]["0_workers_shared_frames_over_on_demand_chunk_reads"]
        assert ratio == pytest.approx(rates["0"] / rates["0_on_demand_chunk_reads"], rel=0.01)
    steps = data["results"]["model_step"]  # the model's own threads, quiet and beside a busy core
    for condition in ("quiet", "busy"):
        c = steps["conditions"][condition]
        assert c["steps_per_s"]["all_cores"] > 0 and c["steps_per_s"]["load_aware"] > 0
        assert all(1 <= n <= steps["cores"] for n in c["load_aware_threads"])
    if steps["cores"] == 2:  # beside a busy core on two, the load-aware count gives one up
        assert max(steps["conditions"]["busy"]["load_aware_threads"]) == 1
    assert "model step, busy" in cap.out


def test_converter_without_add_command_gets_a_generic_command(tmp_path, run):
    import types

    from robodual_core.hookspecs import hookimpl
    from robodual_core.interfaces import DatasetConverter
    from robodual_core.plugins import get_plugin_manager, reset_plugin_manager

    class Fake(DatasetConverter):
        name = "fake"

        def convert(self, src, dst, overwrite=False, resume=False, steps=1):
            from robodual_core.data import DatasetWriter

            with DatasetWriter(dst, fps=5, modalities={"action": "action"}, overwrite=overwrite, resume=resume) as w:
                w.add_episode({"action": np.zeros((steps, 2), np.float32)}, instruction=str(src))
            return dst

    plugin = types.ModuleType("fake_converter_plugin")
    plugin.robodual_register_dataset_converters = hookimpl(
        lambda registry: registry.register("fake", Fake, "a test converter"))
    reset_plugin_manager()
    try:
        get_plugin_manager().register_module(plugin, "fake_converter_plugin")
        code, cap = run("dataset", "convert", "fake", "SRC", tmp_path / "f.zarr", "--set", "steps=3")
        assert code == 0, cap.err
        ds = open_dataset(tmp_path / "f.zarr")
        assert ds.num_steps == 3 and ds.instructions == ["SRC"]
    finally:
        reset_plugin_manager()
