"""Hostile inputs for stores (issue 21): damaged chunks, shard indexes and metadata must be refused in one line
naming the array and chunk (or the key), by `dataset validate`, the loader and every dataset command; no read
may serve zarr's fill value for a chunk that is not there."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from dataset_helpers import episode, make_store

from robodual_core.data import DatasetWriter, WindowDataset, open_dataset
from robodual_core.data.integrity import ChunkLayout
from robodual_core.data.validate import validate_store
from robodual_core.errors import RobodualError

pytestmark = pytest.mark.hostile


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A store with several chunks per array: 4 lowdim steps a chunk, 4 RGB / 3 depth frames a shard, 2 episodes a
    meta chunk (19 steps, 4 episodes)."""
    import robodual_core.data.schema as schema
    import robodual_core.data.writer as writer

    path = tmp_path_factory.mktemp("hostile") / "pristine.zarr"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(schema, "LOWDIM_CHUNK", 4)
        mp.setattr(schema, "SHARD_BYTES", 8 * 8 * 3 * 4)
        mp.setattr(writer, "META_CHUNK", 2)
        make_store(path)
    assert validate_store(path) == []
    return path


@pytest.fixture
def store(pristine, tmp_path):
    dst = tmp_path / "s.zarr"
    shutil.copytree(pristine, dst)
    return dst




def one_line_error(code, cap, *needles):
    """The command failed with one clean line (a RobodualError, not a bare exception) holding every needle."""
    assert code == 1, (code, cap.out, cap.err)
    lines = [line for line in cap.err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, cap.err
    assert "Traceback" not in cap.err and "run with --debug" not in lines[0], lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def refused(fn, *needles):
    with pytest.raises(RobodualError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


# -- damage -------------------------------------------------------------------------------------------------
def _layout(path: Path, name: str) -> ChunkLayout:
    import zarr

    return ChunkLayout(zarr.open_group(str(path), mode="r")[name], name)


def _file(path: Path, name: str, i: int) -> Path:
    layout = _layout(path, name)
    return path / name / layout.key(layout.coords_of_file(i)[0])


def _truncate(f: Path, keep: float) -> None:
    data = f.read_bytes()
    f.write_bytes(data[: int(len(data) * keep)])


def _rewrite_index(path: Path, name: str, i: int, edit) -> None:
    """Edit the shard index of file ``i`` of ``name`` and give it a valid crc32c again."""
    import google_crc32c

    layout = _layout(path, name)
    f = _file(path, name, i)
    data = bytearray(f.read_bytes())
    body = np.frombuffer(bytes(data[-layout.index_bytes:-4]), dtype="<u8").reshape(-1, 2).copy()
    edit(body)
    raw = body.astype("<u8").tobytes()
    data[-layout.index_bytes:] = raw + np.uint32(google_crc32c.value(raw)).tobytes()
    f.write_bytes(bytes(data))


def _garbage(f: Path) -> None:
    f.write_bytes(np.random.default_rng(0).integers(0, 256, f.stat().st_size, dtype=np.uint8).tobytes())


EMPTY = 2**64 - 1
DAMAGE = {
    # name: (how, array, file index, what the message says)
    "action chunk deleted": (lambda p: _file(p, "data/action", 2).unlink(), "data/action", 2, "is missing"),
    "proprio chunk deleted": (lambda p: _file(p, "data/proprio", 0).unlink(), "data/proprio", 0, "is missing"),
    "last action chunk deleted": (lambda p: _file(p, "data/action", 4).unlink(), "data/action", 4, "is missing"),
    "rgb shard deleted": (lambda p: _file(p, "data/rgb_static", 1).unlink(), "data/rgb_static", 1, "is missing"),
    "depth shard deleted": (lambda p: _file(p, "data/depth_static", 3).unlink(), "data/depth_static", 3,
                            "is missing"),
    "rgb shard truncated to half": (lambda p: _truncate(_file(p, "data/rgb_static", 2), 0.5), "data/rgb_static", 2,
                                    "truncated"),
    "depth shard lost its last bytes": (lambda p: _truncate(_file(p, "data/depth_static", 0), 0.97),
                                        "data/depth_static", 0, "truncated or corrupt"),
    "rgb shard emptied": (lambda p: _truncate(_file(p, "data/rgb_static", 0), 0.0), "data/rgb_static", 0, "empty"),
    "action chunk truncated": (lambda p: _truncate(_file(p, "data/action", 1), 0.5), "data/action", 1,
                               "cannot be decoded"),
    "action chunk emptied": (lambda p: _truncate(_file(p, "data/action", 3), 0.0), "data/action", 3, "empty"),
    "action chunk overwritten with garbage": (lambda p: _garbage(_file(p, "data/action", 0)), "data/action", 0,
                                              "cannot be decoded"),
    "rgb shard overwritten with garbage": (lambda p: _garbage(_file(p, "data/rgb_static", 3)), "data/rgb_static", 3,
                                           "crc32c"),
    "rgb inner chunk dropped from the shard index": (
        lambda p: _rewrite_index(p, "data/rgb_static", 1, lambda ix: ix.__setitem__(2, [EMPTY, EMPTY])),
        "data/rgb_static", 1, "chunk 6 (step 6) is missing from the shard"),
    "rgb inner chunk pointing past the file": (
        lambda p: _rewrite_index(p, "data/rgb_static", 0, lambda ix: ix.__setitem__(1, [10**6, 100])),
        "data/rgb_static", 0, "lies outside the file"),
    "bytes appended to a depth shard": (lambda p: _file(p, "data/depth_static", 1).write_bytes(
        _file(p, "data/depth_static", 1).read_bytes() + b"\0" * 7), "data/depth_static", 1, "crc32c"),
    "episode_ends chunk deleted": (lambda p: _file(p, "meta/episode_ends", 1).unlink(), "meta/episode_ends", 1,
                                   "is missing"),
    "task_index chunk deleted": (lambda p: _file(p, "meta/task_index", 0).unlink(), "meta/task_index", 0,
                                 "is missing"),
    "instruction_index chunk truncated": (lambda p: _truncate(_file(p, "meta/instruction_index", 1), 0.5),
                                          "meta/instruction_index", 1, "cannot be decoded"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_validate_names_every_damaged_chunk(store, run, case):
    how, name, i, says = DAMAGE[case]
    how(store)
    code, cap = run("dataset", "validate", store, "--json")
    report = json.loads(cap.out)
    assert code == 1 and not report["valid"], report
    key = _layout(store, name).key(_layout(store, name).coords_of_file(i)[0])
    hits = [p for p in report["problems"] if p.startswith(f"{name}: ") and f"'{name}/{key}'" in p and says in p]
    assert hits, report["problems"]


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_loader_refuses_damaged_chunks(store, case):
    """Training data: WindowDataset (or its first batch) refuses the store naming the array; never zeros."""
    how, name, i, _ = DAMAGE[case]
    how(store)

    def load_everything():
        ds = WindowDataset(store, obs_keys=["rgb_static", "depth_static"], horizon=2, split="all",
                           augment_tau=False, image_cache_bytes=0)
        ds.__getitems__(list(range(len(ds))))

    refused(load_everything, name)


def test_writer_stores_all_zero_chunks(tmp_path):
    """The zarrs pipeline skips chunks equal to the fill value: the writer must store them (black frames,
    zero actions, a single instruction index 0), or a store could not tell them from lost chunks."""
    path = tmp_path / "zeros.zarr"
    with DatasetWriter(path, fps=10, modalities={"rgb": "rgb", "depth": "depth", "action": "action"}) as w:
        for _ in range(2):
            rgb = np.zeros((5, 8, 8, 3), np.uint8)
            rgb[2] = 9
            w.add_episode({"rgb": rgb, "depth": np.zeros((5, 8, 8), np.float32),
                           "action": np.zeros((5, 2), np.float32)}, instruction="a", task="t")
    assert validate_store(path) == []
    ds = open_dataset(path)
    assert ds.all_chunks_stored and int(ds.array("rgb")[:].sum()) == 2 * 8 * 8 * 3 * 9


def test_old_store_without_every_chunk_is_read_and_flagged(store, run):
    """Stores from before all_chunks_stored may lack all-zero chunks legitimately: read as zeros, with a note."""
    import zarr

    root = zarr.open_group(str(store), mode="r+")
    del root.attrs["all_chunks_stored"]
    root["data/action"][8:12] = 0  # zarr skips (deletes) an all-zero chunk, as writers before robodual's did
    assert not _file(store, "data/action", 2).exists()
    assert run("dataset", "stats", store, "--recompute")[0] == 0  # statistics of the data as they read
    np.testing.assert_array_equal(open_dataset(store).array("action")[8:12], 0)
    code, cap = run("dataset", "validate", store)
    assert code == 0 and "written before robodual stored every chunk" in cap.err
    _file(store, "data/action", 0).unlink()  # a chunk of real data lost: the statistics still remember it
    code, cap = run("dataset", "validate", store)
    assert code == 1 and "but the data give" in cap.out


# -- metadata and episode_ends --------------------------------------------------------------------------------
def _set(path: Path, edit) -> None:
    import zarr

    edit(zarr.open_group(str(path), mode="r+"))


def _replace_array(root, name, values, dtype="int64"):
    del root[name]
    arr = root.create_array(name, shape=np.shape(values), dtype=dtype, chunks=(16,) * np.ndim(values))
    arr[...] = np.asarray(values, dtype=dtype)


def _corrupt_json(path: Path) -> None:
    (path / "data" / "action" / "zarr.json").write_text("{ not json")


META = {
    "episode_ends not increasing": (lambda r: r["meta/episode_ends"].__setitem__(1, 4), "meta/episode_ends"),
    "episode_ends past the arrays": (lambda r: r["meta/episode_ends"].__setitem__(3, 40), "meta/episode_ends"),
    "episode_ends starting at 0": (lambda r: r["meta/episode_ends"].__setitem__(0, 0), "meta/episode_ends"),
    "episode_ends negative": (lambda r: r["meta/episode_ends"].__setitem__(2, -3), "meta/episode_ends"),
    "episode_ends of floats": (lambda r: _replace_array(r, "meta/episode_ends", [5.0, 8.0, 15.0, 19.0], "float64"),
                               "meta/episode_ends"),
    "episode_ends empty": (lambda r: _replace_array(r, "meta/episode_ends", np.zeros(0)), "meta/episode_ends"),
    "action array too short": (lambda r: r["data/action"].resize((12, 3)), "data/action"),
    "rgb array too long": (lambda r: r["data/rgb_static"].resize((25, 8, 8, 3)), "data/rgb_static"),
    "instruction_index outside the vocabulary": (lambda r: r["meta/instruction_index"].__setitem__(2, 7),
                                                 "meta/instruction_index"),
    "task_index too short": (lambda r: r["meta/task_index"].resize((2,)), "meta/task_index"),
    "modalities not an object": (lambda r: r.attrs.__setitem__("modalities", ["rgb_static"]), "'modalities'"),
    "unknown modality": (lambda r: r.attrs.__setitem__("modalities", {**r.attrs["modalities"], "action": "torque"}),
                         "'action'"),
    "modality without an array": (lambda r: r.attrs.__setitem__("modalities", {**r.attrs["modalities"],
                                                                               "rgb_gripper": "rgb"}), "rgb_gripper"),
    "array without a modality": (lambda r: r.attrs.__setitem__(
        "modalities", {k: v for k, v in r.attrs["modalities"].items() if k != "proprio"}), "data/proprio"),
    "fps a string": (lambda r: r.attrs.__setitem__("fps", "fast"), "'fps'"),
    "complete a string": (lambda r: r.attrs.__setitem__("complete", "yes"), "'complete'"),
    "schema_version a string": (lambda r: r.attrs.__setitem__("schema_version", "one"), "'schema_version'"),
    "instructions not a list": (lambda r: r["meta"].attrs.__setitem__("instructions", "open"), "'instructions'"),
    "action per-step shape 2-D": (lambda r: (r["data"].__delitem__("action"), r["data"].create_array(
        "action", shape=(19, 3, 1), dtype="float32", chunks=(4, 3, 1)).__setitem__(slice(None), 1.0)),
        "data/action"),
}


@pytest.mark.parametrize("case", sorted(META))
def test_damaged_metadata_refused_before_training(store, case):
    edit, needle = META[case]
    _set(store, edit)
    refused(lambda: WindowDataset(store, obs_keys=["rgb_static"], horizon=2, split="all"), str(store), needle)


def test_unreadable_array_metadata_refused(store, run):
    _corrupt_json(store)
    refused(lambda: WindowDataset(store, obs_keys=["rgb_static"], split="all"), str(store))
    code, cap = run("dataset", "validate", store)
    assert code == 1 and str(store) in cap.out


# -- dataset commands on damaged stores -------------------------------------------------------------------------
def _ends_not_increasing(p):
    _set(p, lambda r: r["meta/episode_ends"].__setitem__(1, 4))


COMMANDS = {
    "info": lambda s, o: ("dataset", "info", s),
    "stats": lambda s, o: ("dataset", "stats", s),
    "stats --recompute": lambda s, o: ("dataset", "stats", s, "--recompute"),
    "view": lambda s, o: ("dataset", "view", s, "--episode", 1, "-o", o / "ep.png"),
    "split": lambda s, o: ("dataset", "split", s, "--out", o / "parts", "--val-episodes", "1"),
    "merge": lambda s, o: ("dataset", "merge", s, s, "--out", o / "merged.zarr"),
}
COMMAND_CASES = [
    *[(cmd, "action chunk deleted") for cmd in COMMANDS],
    *[(cmd, "episode_ends not increasing") for cmd in COMMANDS],
    *[(cmd, "rgb shard truncated to half") for cmd in ("view", "split", "merge")],
    *[(cmd, "action chunk truncated") for cmd in ("stats --recompute", "view", "split", "merge")],
]
COMMAND_DAMAGE = {
    "action chunk deleted": (DAMAGE["action chunk deleted"][0], "data/action"),
    "episode_ends not increasing": (_ends_not_increasing, "meta/episode_ends"),
    "rgb shard truncated to half": (lambda p: _truncate(_file(p, "data/rgb_static", 1), 0.5), "data/rgb_static"),
    "action chunk truncated": (DAMAGE["action chunk truncated"][0], "data/action"),
}


@pytest.mark.parametrize(("command", "damage"), COMMAND_CASES)
def test_dataset_commands_refuse_damaged_stores(store, tmp_path, run, command, damage):
    how, needle = COMMAND_DAMAGE[damage]
    how(store)
    code, cap = run(*COMMANDS[command](store, tmp_path))
    one_line_error(code, cap, needle, str(store))
    assert not (tmp_path / "ep.png").exists()
    assert not (tmp_path / "merged.zarr").exists() and not (tmp_path / "parts" / "train.zarr").exists()


def test_episode_reads_name_the_chunk(store):
    """A read through ZarrDataset names the store, the array, the chunk's file and its steps."""
    DAMAGE["action chunk truncated"][0](store)  # chunk 1: steps 4..7
    ds = open_dataset(store)
    np.testing.assert_array_equal(ds.episode(3)["action"], episode(3, 4)["action"])  # steps 15..18
    for ep in (0, 1):  # steps 0..4 (chunks 0 and 1), 5..7 (chunk 1)
        msg = refused(lambda ep=ep: ds.episode(ep), str(store),
                      "data/action: chunk 1 (file 'data/action/c/1/0', steps 4..7)")
        assert "cannot be decoded" in msg


def test_full_check_on_request(store, monkeypatch):
    """open_dataset's cheap checks do not decode data; full_check (or ROBODUAL_DATA_FULL_CHECK=1) does."""
    DAMAGE["action chunk truncated"][0](store)
    open_dataset(store)
    refused(lambda: open_dataset(store, full_check=True), "data/action: chunk 1")
    refused(lambda: WindowDataset(store, obs_keys=["rgb_static"], split="all", full_check=True), "data/action")
    monkeypatch.setenv("ROBODUAL_DATA_FULL_CHECK", "1")
    refused(lambda: open_dataset(store), "data/action: chunk 1")


def test_validate_quick_skips_decoding(store, run):
    DAMAGE["action chunk truncated"][0](store)
    code, cap = run("dataset", "validate", store, "--quick")
    assert code == 0 and "quick checks" in cap.out
    code, cap = run("dataset", "validate", store, "--quick", "--full")
    assert code == 1 and "data/action: chunk 1" in cap.out
