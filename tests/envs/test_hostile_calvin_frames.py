"""Hostile CALVIN frames (issue 28): a frame whose arrays are shorter than CALVIN's is refused in one line naming
the file and key (it failed with raw IndexError text); a frame path that exists but is not a regular file is named
for what it is (a FIFO, a folder, a device), not reported as missing, and never read (a FIFO would block, /dev/zero
never end)."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from test_calvin_convert import convert, fake_calvin, frame

from robodual_core.errors import RobodualError

pytestmark = pytest.mark.hostile


def refused(fn, *needles):
    t0 = time.perf_counter()
    with pytest.raises(RobodualError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg and time.perf_counter() - t0 < 60
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


@pytest.mark.parametrize("key,shape", [("robot_obs", (10,)), ("robot_obs", (16,)), ("scene_obs", (3,)),
                                       ("rel_actions", (6,)), ("actions", (7, 1))])
def test_raw_arrays_of_the_wrong_width_are_refused(tmp_path, key, shape):
    """Every frame alike (so the check against the first frame cannot catch it): CALVIN's widths are fixed."""
    src = fake_calvin(tmp_path / "raw")
    for path in sorted((src / "training").glob("episode_*.npz")):
        f = frame(int(path.stem.split("_")[1]))
        f[key] = np.zeros(shape, f[key].dtype)
        np.savez_compressed(path, **f)
    refused(lambda: convert(src, tmp_path / "out.zarr"), key, str(shape), "episode_")
    assert not (tmp_path / "out.zarr").exists()


def _fifo(path):
    path.unlink()
    os.mkfifo(path)


def _folder(path):
    path.unlink()
    path.mkdir()


def _dev_zero(path):
    path.unlink()
    path.symlink_to("/dev/zero")


@pytest.mark.parametrize("make,needle", [(_fifo, "FIFO"), (_folder, "a folder"), (_dev_zero, "character device")],
                         ids=["fifo", "folder", "dev-zero"])
def test_a_frame_path_that_is_not_a_file_is_named_for_what_it_is(tmp_path, make, needle):
    src = fake_calvin(tmp_path / "raw")
    bad = src / "training" / "episode_0000012.npz"
    make(bad)
    msg = refused(lambda: convert(src, tmp_path / "out.zarr"), str(bad), needle)
    assert "does not exist" not in msg
