"""--log tensorboard / --log wandb from the CLI on tiny data: the trackers' own files, read back with their own
readers (TensorBoard's EventAccumulator, W&B's Record protobuf of the offline .wandb file), hold what
metrics.jsonl and results.json hold; a resume continues the same W&B run and TensorBoard folder."""

from __future__ import annotations

import json
import shutil
import struct

import pytest
from generalist_helpers import TINY, make_store

pytestmark = pytest.mark.slow

TRAIN_KEYS = {"train/loss", "train/lr", "train/grad_norm", "train/samples_per_s"}


def tensorboard_scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def tensorboard_images(log_dir) -> dict[str, list]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"images": 0})
    acc.Reload()
    return {tag: acc.Images(tag) for tag in acc.Tags()["images"]}


def wandb_records(run_file) -> list:
    """The records of an offline W&B run file: a LevelDB-style log of 32 KiB blocks (7-byte header: crc32, length,
    type; FULL=1, FIRST=2, MIDDLE=3, LAST=4) of wandb's own ``Record`` protobufs, after a 7-byte file header."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    records, pos, part = [], 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        if length == 0 and kind == 0:
            pos += left - 7
            continue
        part += data[pos:pos + length]
        pos += length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(part)
            records.append(record)
            part = b""
    return records


def finished_records(path, timeout: float = 30.0) -> list:
    """The records of a run file once its exit record is in: wandb's service process may still be writing the file
    when ``finish()`` has returned in the training process (seen on a loaded machine)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        records = wandb_records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def wandb_history(run_dir) -> tuple[set[str], list[dict[str, float]]]:
    """(run ids, history rows) of every offline W&B run under ``run_dir/wandb``."""
    ids, rows = set(), []
    for path in sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb")):
        for record in finished_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                ids.add(record.run.run_id)
            elif kind == "history":
                rows.append({"/".join(i.nested_key) if i.nested_key else i.key: json.loads(i.value_json)
                             for i in record.history.item})
    return ids, rows


@pytest.fixture
def offline_wandb(monkeypatch, tmp_path):
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_PROJECT", "WANDB_RUN_GROUP"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # not logged in: offline by default
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))


def test_train_resume_and_eval_log_to_tensorboard_and_wandb(tmp_path, run, offline_wandb):
    store = make_store(tmp_path / "s.zarr", episodes=3, steps=8, action_dim=3)
    out = tmp_path / "run"
    args = ["train", "generalist", "--dataset", store, "--out", out, "--base", "tiny", *TINY,
            "--set", "trainer.log_every=1", "--set", "trainer.keep_checkpoints=0"]
    code, cap = run(*args, "--steps", 4, "--log", "tensorboard,wandb")
    assert code == 0, cap.err
    assert "wandb sync" in cap.err and "tensorboard --logdir" in cap.err
    run_id = json.loads((out / "tracking.json").read_text())["wandb"]["id"]
    # an interrupted run: its last checkpoint lost, so the resume repeats steps 3 and 4 (already logged)
    shutil.rmtree(out / "checkpoints" / "4")
    code, cap = run(*args[:-4], "--steps", 6, "--resume", "--log", "tensorboard", "--log", "wandb")
    assert code == 0, cap.err
    assert json.loads((out / "tracking.json").read_text())["wandb"]["id"] == run_id

    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3, 4, 5, 6]
    scalars = tensorboard_scalars(out / "tensorboard")
    assert TRAIN_KEYS <= set(scalars)
    # purge_step on resume: each step once, and the values are metrics.jsonl's (the source of truth)
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3, 4, 5, 6]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([m["loss"] for m in lines], rel=1e-6)
    assert [v for _, v in scalars["train/lr"]] == pytest.approx([m["lr"] for m in lines], rel=1e-6)

    ids, rows = wandb_history(out)
    assert ids == {run_id}  # the resumed session continues the same W&B run
    logged = {k for row in rows for k in row}
    assert TRAIN_KEYS | {"step"} <= logged
    last = {row["step"]: row["train/loss"] for row in rows if "train/loss" in row}
    assert last[6] == pytest.approx(lines[-1]["loss"], rel=1e-6)

    # validation (eval offline on the held-out split) lands in the same run, at the checkpoint's step
    code, cap = run("eval", "offline", "--policy", out, "--dataset", store, "--split", "all", "--max-episodes", 1,
                    "--log", "wandb,tensorboard")
    assert code == 0, cap.err
    result = json.loads((out / "eval" / "offline" / "results.json").read_text())
    scalars = tensorboard_scalars(out / "tensorboard")
    assert scalars["eval/offline_all/mse"] == [(6, pytest.approx(result["mse"], rel=1e-6))]
    assert scalars["train/loss"][-1][0] == 6  # an evaluation never purges the training's events
    ids, rows = wandb_history(out)
    assert ids == {run_id}
    assert any(row.get("eval/offline_all/mse") == pytest.approx(result["mse"], rel=1e-6) and row["step"] == 6
               for row in rows)


def test_eval_metaworld_logs_success_and_videos(tmp_path, run, offline_wandb):
    pytest.importorskip("metaworld")
    out = tmp_path / "eval"
    code, cap = run("eval", "metaworld", "--policy", "random", "--tasks", "reach-v3", "--episodes", 1,
                    "--max-steps", 5, "--image-size", 32, "--videos", 1, "--out", out, "--log", "tensorboard,wandb")
    assert code == 0, cap.err
    results = json.loads((out / "results.json").read_text())
    assert results["videos"]
    scalars = tensorboard_scalars(out / "tensorboard")
    assert scalars["eval/metaworld/success_rate"] == [(0, results["success_rate"])]
    assert "eval/metaworld/tasks/reach-v3/success_rate" in scalars
    images = tensorboard_images(out / "tensorboard")
    (tag, events), = images.items()
    assert tag.startswith("eval/metaworld/video/") and events[0].encoded_image_string[:6] == b"GIF89a"
    _, rows = wandb_history(out)
    logged = {k for row in rows for k in row}
    assert "eval/metaworld/success_rate" in logged
    assert any(k.startswith("eval/metaworld/video/") for k in logged)


def test_log_flag_is_checked_before_anything_runs(tmp_path, run):
    store = make_store(tmp_path / "s.zarr", episodes=2, steps=6, action_dim=3)
    code, cap = run("train", "generalist", "--dataset", store, "--out", tmp_path / "run", "--base", "tiny",
                    "--steps", 1, *TINY, "--log", "tensorboard,mlflow")
    assert code == 1 and "--log: expected tensorboard or wandb" in cap.err and "'mlflow'" in cap.err
    assert not (tmp_path / "run").exists()
    code, cap = run("study", "ablations", "--from", tmp_path / "nowhere", "--out", tmp_path / "study",
                    "--log", "neptune")
    assert code == 1 and "'neptune'" in cap.err and not (tmp_path / "study").exists()


def test_a_study_passes_log_to_its_train_and_eval_stages(tmp_path, monkeypatch):
    import subprocess
    import sys

    from robodual_cli.commands.study import common

    seen = []

    real = subprocess.run

    def fake_run(cmd, env=None, **kwargs):
        if "robodual_cli.app" not in cmd:  # git, asked for the commit a stage runs at
            return real(cmd, env=env, **kwargs)
        seen.append((cmd, env))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(common.subprocess, "run", fake_run)
    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)
    folder = common.StudyFolder(tmp_path / "study", "data-efficiency", {"quick": True})
    folder.log = ("tensorboard", "wandb")
    robodual = [sys.executable, "-m", "robodual_cli.app"]
    folder.run("train a", [*robodual, "train", "specialist", "--out", "x"])
    folder.run("generate", [*robodual, "dataset", "generate", "metaworld", "y"])
    folder.run("eval a", [*robodual, "eval", "metaworld", "--policy", "x"])
    (train, env), (generate, _), (evaluate, _) = seen
    assert train[-2:] == ["--log", "tensorboard,wandb"] and evaluate[-2:] == ["--log", "tensorboard,wandb"]
    assert "--log" not in generate
    assert env["WANDB_RUN_GROUP"] == "data-efficiency-study"


def test_train_specialist_logs_to_tensorboard(tmp_path, run):
    store = make_store(tmp_path / "s.zarr", episodes=2, steps=6, action_dim=3)
    config = tmp_path / "spec.yaml"
    config.write_text("model: {hidden: 32, depth: 1, heads: 2, k_s: 2, sensors: []}\n"
                      "trainer: {batch_size: 4, num_workers: 0, warmup_steps: 1, ckpt_every: 2, log_every: 1}\n")
    code, cap = run("train", "specialist", "--dataset", store, "--out", tmp_path / "spec", "--config", config,
                    "--steps", 3, "--log", "tensorboard")
    assert code == 0, cap.err
    lines = [json.loads(line) for line in (tmp_path / "spec" / "metrics.jsonl").read_text().splitlines()]
    scalars = tensorboard_scalars(tmp_path / "spec" / "tensorboard")
    assert TRAIN_KEYS <= set(scalars)
    assert [s for s, _ in scalars["train/grad_norm"]] == [m["step"] for m in lines] == [1, 2, 3]
    assert [v for _, v in scalars["train/grad_norm"]] == pytest.approx([m["grad_norm"] for m in lines], rel=1e-6)
    assert not (tmp_path / "spec" / "wandb").exists()


def test_calvin_results_and_videos_reach_the_trackers(tmp_path, offline_wandb):
    """eval calvin's glue (the simulator is not needed): the report's numbers and the chain videos."""
    import numpy as np
    from PIL import Image

    from robodual_envs.calvin.commands import _track

    out = tmp_path / "eval"
    (out / "videos").mkdir(parents=True)
    frames = [Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)) for i in range(3)]
    frames[0].save(out / "videos" / "chain_0000.gif", save_all=True, append_images=frames[1:], duration=100)
    report = {"policy": {"path": "x"}, "simulator": {"simulator": "standin"}, "avg_len": 1.5,
              "success_rates": [0.5, 0.25, 0.0, 0.0, 0.0], "performance": {"steps_per_s": 12.0}}
    _track(["tensorboard", "wandb"], tmp_path / "not-a-run", out, report)
    scalars = tensorboard_scalars(out / "tensorboard")
    assert scalars["eval/calvin/avg_len"] == [(0, 1.5)]
    assert scalars["eval/calvin/performance/steps_per_s"] == [(0, 12.0)]
    (tag, events), = tensorboard_images(out / "tensorboard").items()
    assert tag == "eval/calvin/video/chain_0000" and events[0].width == 16
    _, rows = wandb_history(out)
    assert any(row.get("eval/calvin/avg_len") == 1.5 for row in rows), (rows, list(out.rglob("*.wandb")))


@pytest.mark.hostile
def test_damaged_tracker_state_is_one_line(tmp_path, run):
    store = make_store(tmp_path / "s.zarr", episodes=2, steps=6, action_dim=3)
    out = tmp_path / "run"
    out.mkdir()
    (out / "tracking.json").write_text("{not json")
    code, cap = run("train", "generalist", "--dataset", store, "--out", out, "--base", "tiny", "--steps", 1, *TINY,
                    "--log", "wandb")
    errors = [line for line in cap.err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(errors) == 1 and "tracking.json' is not valid JSON" in errors[0]
    assert "Traceback" not in cap.err
