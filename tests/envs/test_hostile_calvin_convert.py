"""Hostile raw CALVIN folders (issue 21): `robodual dataset convert calvin` refuses each in one line naming the file
and what is wrong, before anything is written."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from test_calvin_convert import SAMPLE, fake_calvin

pytestmark = pytest.mark.hostile




def _ann(d: Path) -> dict:
    from robodual_envs.calvin.pickle_safe import load_npy

    return load_npy(d / "lang_annotations" / "auto_lang_ann.npy")


def _save_ann(d: Path, ann) -> None:
    np.save(d / "lang_annotations" / "auto_lang_ann.npy", np.array(ann, dtype=object), allow_pickle=True)


def _edit_ann(edit):
    def apply(d: Path) -> None:
        ann = _ann(d)
        edit(ann)
        _save_ann(d, ann)
    return apply


def _ids(value, dtype=np.int64):
    return lambda d: np.save(d / "ep_start_end_ids.npy", np.asarray(value, dtype=dtype))


def _truncate(name):
    def apply(d: Path) -> None:
        f = d / name
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return apply


class _Eval:
    def __reduce__(self):
        return (eval, ("1",))


ANN = "lang_annotations/auto_lang_ann.npy"
IDS = "ep_start_end_ids.npy"
# case: (damage of the training folder of a 20-frame fake with windows (0,7), (5,12), (13,19), file, needles)
CASES = {
    "sequence end past the last frame": (_ids([[0, 25]]), IDS, ["[25]", "frames 0..19"]),
    "sequence start past the last frame": (_ids([[0, 19], [30, 40]]), IDS, ["[30, 40]"]),
    "ep_start_end_ids.npy missing": (lambda d: (d / IDS).unlink(), IDS, ["does not exist"]),
    "ep_start_end_ids of floats": (_ids([[0.0, 19.0]], np.float64), IDS, ["float64", "[N, 2]"]),
    "ep_start_end_ids one-dimensional": (_ids([0, 19]), IDS, ["shape (2,)"]),
    "ep_start_end_ids start after end": (_ids([[19, 0]]), IDS, ["(19, 0)"]),
    "ep_start_end_ids negative": (_ids([[-4, 19]]), IDS, ["(-4, 19)"]),
    "ep_start_end_ids overlapping": (_ids([[0, 10], [5, 19]]), IDS, ["overlap"]),
    "ep_start_end_ids empty": (_ids(np.zeros((0, 2))), IDS, ["no sequences"]),
    "ep_start_end_ids pickled dict": (lambda d: np.save(d / IDS, np.array({"a": 1}, dtype=object), allow_pickle=True),
                                      IDS, ["dict"]),
    "ep_start_end_ids truncated": (_truncate(IDS), IDS, ["not a readable .npy"]),
    "ep_lens disagrees": (lambda d: np.save(d / "ep_lens.npy", np.array([7])), "ep_lens.npy", ["[20]"]),
    "window across two sequences": (_ids([[0, 9], [10, 19]]), ANN, ["info.indx[1] is (5, 12)", "across sequence"]),
    "window past the last frame": (_edit_ann(lambda a: a["info"].__setitem__("indx", [(0, 7), (13, 25), (1, 2)])),
                                   ANN, ["(13, 25)", "past the last frame"]),
    "window before the first sequence": (_ids([[5, 19]]), ANN, ["info.indx[0] is (0, 7)", "before the first frame"]),
    "lang_annotations folder missing": (lambda d: shutil.rmtree(d / "lang_annotations"), "auto_lang_ann.npy",
                                        ["does not exist"]),
    "auto_lang_ann.npy missing": (lambda d: (d / ANN).unlink(), ANN, ["does not exist"]),
    "auto_lang_ann.npy an int array": (lambda d: np.save(d / ANN, np.arange(3)), ANN, ["expected"]),
    "auto_lang_ann.npy truncated": (_truncate(ANN), ANN, ["not a readable .npy"]),
    "auto_lang_ann.npy without language": (_edit_ann(lambda a: a.pop("language")), ANN, ["'language'"]),
    "info.indx an int": (_edit_ann(lambda a: a["info"].__setitem__("indx", 3)), ANN, ["info.indx is a int"]),
    "info.indx pair of floats": (_edit_ann(lambda a: a["info"].__setitem__("indx", [(0.5, 7), (5, 12), (13, 19)])),
                                 ANN, ["info.indx[0] is (0.5, 7)"]),
    "info.indx triple": (_edit_ann(lambda a: a["info"].__setitem__("indx", [(0, 7, 9), (5, 12), (13, 19)])),
                         ANN, ["info.indx[0] is (0, 7, 9)"]),
    "info.indx negative start": (_edit_ann(lambda a: a["info"].__setitem__("indx", [(-2, 7), (5, 12), (13, 19)])),
                                 ANN, ["(-2, 7)"]),
    "info.indx empty": (_edit_ann(lambda a: (a["info"].__setitem__("indx", []), a["language"].update(
        ann=[], task=[], emb=np.zeros((0, 1, 384), np.float32)))), ANN, ["no annotated windows"]),
    "instructions not strings": (_edit_ann(lambda a: a["language"].__setitem__("ann", [1, 2, 3])), ANN,
                                 ["language.ann[0]", "expected strings"]),
    "fewer instructions than windows": (_edit_ann(lambda a: a["language"].__setitem__("ann", ["a", "b"])), ANN,
                                        ["language.ann has 2"]),
    "embeddings for too few windows": (_edit_ann(lambda a: a["language"].__setitem__(
        "emb", np.zeros((2, 1, 384), np.float32))), ANN, ["language.emb has shape (2, 384)"]),
    "embeddings not numbers": (_edit_ann(lambda a: a["language"].__setitem__("emb", ["x", "y", "z"])), ANN,
                               ["language.emb is not a numeric array"]),
    "embeddings with NaN": (_edit_ann(lambda a: a["language"].__setitem__(
        "emb", np.full((3, 1, 384), np.nan, np.float32))), ANN, ["language.emb contains NaN"]),
    "annotation pickle calling eval": (lambda d: _save_ann(d, {"info": {"indx": [(0, 3)]}, "x": _Eval()}), ANN,
                                       ["refusing to load global 'builtins.eval'"]),
    "end frame of a sequence deleted": (lambda d: (d / "episode_0000019.npz").unlink(), IDS, ["[19]",
                                                                                              "frames 0..18"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_damaged_raw_calvin_refused_before_writing(tmp_path, run, case):
    damage, name, needles = CASES[case]
    src = fake_calvin(tmp_path / "raw")
    damage(src / "training")
    dst = tmp_path / "out.zarr"
    code, cap = run("dataset", "convert", "calvin", src, dst, "--workers", 1)
    assert code == 1, (cap.out, cap.err)
    lines = [line for line in cap.err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "run with --debug" not in lines[0], cap.err
    assert str(src / "training") in lines[0] and name in lines[0], lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not dst.exists() and not dst.with_name("out.zarr.partial").exists()


def _copy_sample(dst: Path) -> Path:
    shutil.copytree(SAMPLE / "training", dst)
    for f in (dst, *dst.rglob("*")):  # the sample's files are read-only
        f.chmod(0o755 if f.is_dir() else 0o644)
    return dst


def test_frames_without_lang_annotations_name_what_is_missing(tmp_path, run):
    """A split folder of frames without lang_annotations/ (given as SRC) says so, not 'found: nothing'."""
    split = _copy_sample(tmp_path / "frames")
    shutil.rmtree(split / "lang_annotations")
    code, cap = run("dataset", "convert", "calvin", split, tmp_path / "out.zarr")
    assert code == 1 and "holds CALVIN frame files (episode_*.npz) but no 'lang_annotations/' folder" in cap.err
    assert str(split / "lang_annotations" / "auto_lang_ann.npy") in cap.err


def test_real_sample_with_ids_past_its_last_frame(tmp_path, run):
    """The real sample's own ep_start_end_ids.npy, pointing one frame past the last file, is refused."""
    split = _copy_sample(tmp_path / "training")
    last = max(int(p.stem.split("_")[1]) for p in split.glob("episode_*.npz"))
    np.save(split / "ep_start_end_ids.npy", np.array([[0, last + 1]]))
    code, cap = run("dataset", "convert", "calvin", split, tmp_path / "out.zarr")
    assert code == 1 and f"refers to frame id(s) [{last + 1}]" in cap.err and "ep_start_end_ids.npy" in cap.err
