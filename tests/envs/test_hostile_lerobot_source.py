"""Hostile LeRobot sources and exports (issue 28): the converter reads only inside the dataset folder and only
regular files, a damaged parquet is one line naming it, and export flags outside their encoders' ranges are refused
before anything is written.

Classes: path templates that escape the dataset (``..``, absolute paths, a symlink out) for data and video files;
files that are not regular (FIFO, folder, /dev/zero); truncated or garbled parquet in every place the converter reads
one (data, episode table, tasks); export's numeric flags.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from test_lerobot import convert, copy_source

from robodual_core.errors import RobodualError

pytestmark = pytest.mark.hostile

V3_DATA = "data/chunk-000/file-000.parquet"
V3_VIDEO = "videos/observation.images.top/chunk-000/file-000.mp4"


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    from test_lerobot import write_v3, write_v21

    base = tmp_path_factory.mktemp("hostile_lerobot")
    return {"v3.0": write_v3(base / "v30"), "v2.1": write_v21(base / "v21")}


def refused(fn, *needles):
    t0 = time.perf_counter()
    with pytest.raises(RobodualError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg and time.perf_counter() - t0 < 60
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


def _template(src: Path, name: str, value: str) -> None:
    path = src / "meta/info.json"
    info = json.loads(path.read_text())
    info[name] = value
    path.write_text(json.dumps(info))


def _outside_copy(src: Path, outside: Path, rel: str) -> None:
    """A real file outside the dataset folder, where an escaping template points (so only the guard stops it)."""
    target = outside / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes((src / rel).read_bytes())


ESCAPES = {
    "data_path with ..": ("data_path", "../outside/data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
                          V3_DATA),
    "video_path with ..": ("video_path", "../outside/videos/{video_key}/chunk-{chunk_index:03d}/"
                                         "file-{file_index:03d}.mp4", V3_VIDEO),
    "data_path absolute": ("data_path", "{outside}/data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
                           V3_DATA),
}


@pytest.mark.parametrize("case", sorted(ESCAPES))
def test_templates_never_read_outside_the_dataset(sources, tmp_path, case):
    name, template, rel = ESCAPES[case]
    src = copy_source(sources["v3.0"], tmp_path / "src")
    outside = tmp_path / "outside"
    _outside_copy(sources["v3.0"], outside, rel)
    _template(src, name, template.replace("{outside}", str(outside)))
    refused(lambda: convert(src, tmp_path / "out.zarr"), "lies outside the dataset folder", name)
    assert not (tmp_path / "out.zarr").exists()


def test_a_symlink_out_of_the_dataset_is_an_escape_too(sources, tmp_path):
    src = copy_source(sources["v2.1"], tmp_path / "src")
    outside = tmp_path / "elsewhere.parquet"
    data = src / "data/chunk-000/episode_000001.parquet"
    outside.write_bytes(data.read_bytes())
    data.unlink()
    data.symlink_to(outside)
    refused(lambda: convert(src, tmp_path / "out.zarr"), "episode_000001.parquet", "lies outside")


def test_a_broken_template_is_named(sources, tmp_path):
    src = copy_source(sources["v2.1"], tmp_path / "src")
    _template(src, "data_path", "data/{episode_chunk:03d}/{nope}.parquet")
    refused(lambda: convert(src, tmp_path / "out.zarr"), "data_path", "{nope}")


def _fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _dev_zero(path: Path) -> None:
    path.unlink()
    path.symlink_to("/dev/zero")


@pytest.mark.parametrize("make,needle", [(_fifo, "FIFO"), (_folder, "a folder"), (_dev_zero, "character device")],
                         ids=["fifo", "folder", "dev-zero"])
@pytest.mark.parametrize("rel", ["data/chunk-000/episode_000002.parquet",
                                 "videos/chunk-000/observation.images.top/episode_000000.mp4"], ids=["data", "video"])
def test_files_that_are_not_regular_are_named_for_what_they_are(sources, tmp_path, make, needle, rel):
    """Not 'does not exist' (it does), and never a read that blocks (FIFO) or never ends (/dev/zero)."""
    src = copy_source(sources["v2.1"], tmp_path / "src")
    if make is _dev_zero:  # /dev/zero lies outside the dataset folder: that refusal comes first and is as good
        make(src / rel)
        refused(lambda: convert(src, tmp_path / "out.zarr"), Path(rel).name)
        return
    make(src / rel)
    msg = refused(lambda: convert(src, tmp_path / "out.zarr"), Path(rel).name, needle)
    assert "does not exist" not in msg


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garble(path: Path) -> None:
    path.write_bytes(b"PAR1" + bytes(range(256)) * 4 + b"PAR1")


@pytest.mark.parametrize("damage", [_truncate, _garble], ids=["truncated", "garbled"])
@pytest.mark.parametrize("rel", [V3_DATA, "meta/episodes/chunk-000/file-000.parquet", "meta/tasks.parquet"],
                         ids=["data", "episodes", "tasks"])
def test_a_damaged_parquet_is_one_line_naming_it(sources, tmp_path, damage, rel):
    src = copy_source(sources["v3.0"], tmp_path / "src")
    damage(src / rel)
    refused(lambda: convert(src, tmp_path / "out.zarr"), str(src / rel), "cannot be read")


@pytest.mark.parametrize("argv,needle", [
    (["--crf", "-5"], "--crf"), (["--crf", "99", "--codec", "h264"], "0..51"), (["--gop", "0"], "--gop"),
    (["--data-file-mb", "0"], "--data-file-mb"), (["--video-file-mb", "-1"], "--video-file-mb"),
])
def test_export_flags_out_of_range_are_refused_before_writing(sources, tmp_path, run, argv, needle):
    store = convert(sources["v2.1"], tmp_path / "s.zarr")
    code, cap = run("dataset", "export", "lerobot", store, tmp_path / "out", *argv)
    assert code == 1 and needle in cap.err and "Traceback" not in cap.err, cap.err
    assert len([line for line in cap.err.splitlines() if line.startswith("error:")]) == 1
    assert not (tmp_path / "out").exists()


def test_the_store_is_never_written_into_its_source(sources, tmp_path, run):
    src = copy_source(sources["v2.1"], tmp_path / "src")
    before = sorted(p.relative_to(src) for p in src.rglob("*"))
    refused(lambda: convert(src, src / "converted.zarr"), "lies inside the input")
    refused(lambda: convert(src, src, overwrite=True), "is the input")
    code, cap = run("dataset", "convert", "lerobot", src, src / "meta" / "x.zarr")
    assert code == 1 and "lies inside the input" in cap.err
    assert sorted(p.relative_to(src) for p in src.rglob("*")) == before
