"""Hostile outputs (issue 28): no command loses data through its output path.

The class, not the instances: for every command with ``--out``/``--overwrite`` (dataset split/merge/convert/export/
view, train, study, eval), an output that is an input, lies inside one or holds one is refused in one line before
anything is written; ``--overwrite`` replaces only what robodual wrote (a robodual store, a folder with robodual's
marker, a run or study folder robodual wrote); a file where a folder goes (or the reverse) is named as what it is.
Every case checks that the inputs are intact afterwards.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from dataset_helpers import make_store

from robodual_core.errors import RobodualError
from robodual_core.outputs import MARKER, check_output, mark_output, prepare_run_dir

pytestmark = pytest.mark.hostile


def digest(path: Path) -> str:
    """Every file's name and bytes under ``path`` (or the file itself)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        h.update(str(p.relative_to(path) if path.is_dir() else p.name).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def one_line_error(code, cap, *needles):
    assert code == 1, (code, cap.out, cap.err)
    lines = [line for line in cap.err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, cap.err
    assert "Traceback" not in cap.err and "run with --debug" not in lines[0], lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture
def world(tmp_path):
    """A 6-episode store in its own folder, a foreign folder (a user's thesis) and a file."""
    data = tmp_path / "data"
    store = make_store(data / "train.zarr", lengths=(3, 4, 3, 5, 3, 4))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("keep me")
    (mine / "config.json").write_text('{"title": "my own config, not a run"}')
    afile = tmp_path / "a_file"
    afile.write_text("not a folder")
    return {"tmp": tmp_path, "store": store, "data": data, "mine": mine, "file": afile}


def _cases():
    """(id, argv with {placeholders}, needles of the one-line refusal)."""
    return [
        # an output that is the input, inside it or holding it (the 6-episode source replaced by its split)
        ("split-into-own-folder", ["dataset", "split", "{store}", "--out", "{data}", "--val-episodes", "0,1",
                                   "--overwrite"], ["train.zarr", "is the input"]),
        ("split-inside-store", ["dataset", "split", "{store}", "--out", "{store}", "--val-episodes", "0"],
         ["lies inside the input"]),
        ("merge-into-source", ["dataset", "merge", "{store}", "{store}", "--out", "{store}", "--overwrite"],
         ["is the input"]),
        ("merge-holding-source", ["dataset", "merge", "{store}", "{store}", "--out", "{data}", "--overwrite"],
         ["holds the input"]),
        ("export-into-source", ["dataset", "export", "lerobot", "{store}", "{store}/lerobot"],
         ["lies inside the input"]),
        ("train-specialist-holding-dataset", ["train", "specialist", "--dataset", "{store}", "--out", "{data}",
                                              "--overwrite"], ["holds the input"]),
        ("train-generalist-holding-dataset", ["train", "generalist", "--dataset", "{store}", "--out", "{tmp}",
                                              "--overwrite", "--base", "tiny"], ["holds the input"]),
        ("train-inside-dataset", ["train", "specialist", "--dataset", "{store}", "--out", "{store}/run"],
         ["lies inside the input"]),
        ("eval-offline-into-dataset", ["eval", "offline", "--policy", "{mine}", "--dataset", "{store}",
                                       "--out", "{store}"], ["is the input"]),
        ("eval-offline-holding-policy", ["eval", "offline", "--policy", "{mine}", "--dataset", "{store}",
                                         "--out", "{tmp}"], ["holds the input"]),
        # --overwrite replaces only what robodual wrote
        ("merge-overwrites-foreign", ["dataset", "merge", "{store}", "{store}", "--out", "{mine}", "--overwrite"],
         ["refuses to delete", "not a zarr store robodual wrote"]),
        ("export-overwrites-foreign", ["dataset", "export", "lerobot", "{store}", "{mine}", "--overwrite"],
         ["refuses to delete", "{mine}"]),
        ("train-overwrites-foreign", ["train", "specialist", "--dataset", "{store}", "--out", "{mine}",
                                      "--overwrite"], ["refuses to delete", "not a run folder"]),
        ("train-generalist-overwrites-foreign", ["train", "generalist", "--dataset", "{store}", "--out", "{mine}",
                                                 "--overwrite", "--base", "tiny"], ["refuses to delete"]),
        ("generalist-merge-overwrites-foreign", ["generalist", "merge", "{data}", "--out", "{mine}", "--overwrite"],
         ["refuses to delete", "not a merged generalist folder"]),
        ("generalist-merge-into-run", ["generalist", "merge", "{mine}", "--out", "{mine}/merged"],
         ["lies inside the input"]),
        ("study-overwrites-foreign", ["study", "data-efficiency", "--quick", "--out", "{mine}", "--overwrite"],
         ["not a study folder"]),
        # a file where a folder goes, a folder where a file goes
        ("study-out-file", ["study", "data-efficiency", "--quick", "--out", "{file}"], ["is a file", "folder"]),
        ("merge-out-file", ["dataset", "merge", "{store}", "{store}", "--out", "{file}", "--overwrite"],
         ["is a file", "expected a folder"]),
        ("view-out-folder", ["dataset", "view", "{store}", "-o", "{mine}"], ["--output", "is a folder"]),
        ("view-out-under-file", ["dataset", "view", "{store}", "-o", "{file}/x.png"], ["is a file", "folder"]),
        ("eval-offline-out-file", ["eval", "offline", "--policy", "{mine}", "--dataset", "{store}",
                                   "--out", "{file}"], ["is a file"]),
    ]


@pytest.mark.parametrize("argv,needles", [pytest.param(a, n, id=i) for i, a, n in _cases()])
def test_an_output_never_costs_an_input(run, world, argv, needles):
    fill = {k: str(v) for k, v in world.items()}
    before = {k: digest(world[k]) for k in ("data", "mine", "file")}
    one_line_error(*run(*[a.format(**fill) for a in argv]), *[n.format(**fill) for n in needles])
    assert {k: digest(world[k]) for k in ("data", "mine", "file")} == before


def test_overwrite_still_replaces_what_robodual_wrote(run, world):
    """The guard is not a blanket refusal: a store, a run and an empty folder robodual may replace, it does."""
    out = world["tmp"] / "merged.zarr"
    assert run("dataset", "merge", world["store"], world["store"], "--out", out)[0] == 0
    assert run("dataset", "merge", world["store"], world["store"], "--out", out, "--overwrite")[0] == 0
    split = world["tmp"] / "split"
    assert run("dataset", "split", world["store"], "--out", split, "--val-episodes", "0")[0] == 0
    assert run("dataset", "split", world["store"], "--out", split, "--val-episodes", "0,1", "--overwrite")[0] == 0
    run_dir = world["tmp"] / "run"
    run_dir.mkdir()
    mark_output(run_dir, "run")
    (run_dir / "metrics.jsonl").write_text("{}\n")
    assert prepare_run_dir(run_dir, inputs=[world["store"]], overwrite=True) == run_dir
    assert not run_dir.exists()
    legacy = world["tmp"] / "legacy"  # a run written before the marker: its config.json is a training config
    legacy.mkdir()
    (legacy / "config.json").write_text('{"model": {}, "trainer": {}, "data": {}}')
    prepare_run_dir(legacy, overwrite=True)
    assert not legacy.exists()
    empty = world["tmp"] / "empty"
    empty.mkdir()
    assert check_output(empty, overwrite=True) == empty


def test_paths_are_compared_as_the_filesystem_sees_them(world):
    """A symlink to the input, a '..' detour or a relative path is still the input."""
    link = world["tmp"] / "link.zarr"
    link.symlink_to(world["store"])
    detour = world["data"] / ".." / "data" / "train.zarr"
    for out in (link, detour):
        with pytest.raises(RobodualError, match="is the input"):
            check_output(out, expect="store", inputs=[world["store"]], overwrite=True)
    cwd = os.getcwd()
    os.chdir(world["data"])
    try:
        with pytest.raises(RobodualError, match="is the input"):
            check_output("train.zarr", expect="store", inputs=[world["store"]])
    finally:
        os.chdir(cwd)
    # a host may hold the output (RUN/eval/offline) but not be it
    check_output(world["mine"] / "eval" / "offline", hosts=[world["mine"]])
    with pytest.raises(RobodualError, match="is the input"):
        check_output(world["mine"], hosts=[world["mine"]])


def test_a_bench_report_path_must_be_a_file(world):
    from robodual_core.bench import write_report

    with pytest.raises(RobodualError, match="is a folder"):
        write_report(world["mine"], "x", {})
    assert (world["mine"] / "thesis.tex").read_text() == "keep me"
    assert write_report(world["tmp"] / "r.json", "x", {"a": 1})["results"] == {"a": 1}


def test_special_files_are_named_for_what_they_are(world):
    fifo = world["tmp"] / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(RobodualError, match="FIFO") as info:
        check_output(fifo, expect="folder")
    assert "\n" not in str(info.value)
    with pytest.raises(RobodualError, match="FIFO"):
        check_output(fifo, expect="file")
    with pytest.raises(RobodualError, match="character device"):
        check_output("/dev/zero", expect="store", overwrite=True)


def test_a_marker_is_what_overwrite_recognises(world):
    folder = world["tmp"] / "exported"
    folder.mkdir()
    (folder / "meta").mkdir()
    with pytest.raises(RobodualError, match="refuses to delete"):
        check_output(folder, overwrite=True)
    mark_output(folder, "lerobot-export")
    assert (folder / MARKER).is_file()
    check_output(folder, overwrite=True)
    (folder / MARKER).write_text('{"written_by": "someone else"}')  # a marker is robodual's only if it says so
    with pytest.raises(RobodualError, match="refuses to delete"):
        check_output(folder, overwrite=True)


def test_eval_calvin_never_writes_over_its_policy(world):
    """eval calvin's --overwrite deletes results and videos in OUT: OUT may lie inside the run (RUN/eval/calvin, the
    default) but never be the run or hold it."""
    from robodual_envs.calvin.evaluate import EvalOptions, EvalSpec, evaluate

    run_dir = world["mine"]
    for out, needle in ((run_dir, "is the input"), (world["tmp"], "holds the input")):
        spec = EvalSpec(policy_kwargs={"path": str(run_dir)}, env_kwargs={"simulator": "standin"})
        with pytest.raises(RobodualError, match=needle):
            evaluate(spec, out, EvalOptions(chains=1, overwrite=True, progress=False))
    assert (run_dir / "thesis.tex").read_text() == "keep me"


def test_a_folder_that_appears_during_a_write_is_not_replaced(tmp_path):
    """--overwrite was checked when the write began; a foreign folder put at the path meanwhile is still refused
    at finalize, and the new store stays in <path>.partial."""
    from dataset_helpers import MODALITIES, episode

    from robodual_core.data import DatasetWriter

    path = tmp_path / "s.zarr"
    w = DatasetWriter(path, fps=10, modalities=MODALITIES, overwrite=True)
    w.add_episode(episode(0, 3), instruction="x", task="t")
    path.mkdir()
    (path / "notes.txt").write_text("mine")
    with pytest.raises(RobodualError, match="refuses to delete"):
        w.finalize()
    assert (path / "notes.txt").read_text() == "mine" and (tmp_path / "s.zarr.partial").is_dir()
