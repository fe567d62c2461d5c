"""Hostile numbers (issue 28): a store or a policy whose numbers are wrong is refused in one line, never trained on,
validated or reported as a result.

Classes: statistics that are not the data's (validate recomputes them; the loader refuses a q99 dimension they
collapse), metadata that disagrees with the arrays (action width vs action_space, zero-width keys), chunks that an
old store cannot tell from zeros (the loader refuses them), NaN in what eval offline reads or returns, and
declared shapes that would exhaust memory or time (refused from the metadata, before any chunk is visited).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from dataset_helpers import MODALITIES, episode, make_store

from robodual_core.data import DatasetWriter, WindowDataset, open_dataset
from robodual_core.data.validate import validate_store
from robodual_core.errors import RobodualError

pytestmark = pytest.mark.hostile


def one_line_error(code, cap, *needles):
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


def edit_attrs(store: Path, edit) -> None:
    meta = json.loads((store / "zarr.json").read_text())
    edit(meta["attributes"])
    (store / "zarr.json").write_text(json.dumps(meta))


def edit_array_meta(store: Path, name: str, edit) -> None:
    path = store / name / "zarr.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


@pytest.fixture
def store(tmp_path):
    return make_store(tmp_path / "s.zarr")


def window(store, **kw):
    return WindowDataset(store, obs_keys=["rgb_static"], horizon=2, k_g=2, split="train", val_ratio=0.0, **kw)


# -- statistics that are not the data's -------------------------------------------------------------------------
def _set_stat(field, dim, value):
    def edit(attrs):
        attrs["stats"]["action"][field][dim] = value
    return edit


STATS = {
    # the reported case: q01 = q99 (a normalizer that maps every action to one value)
    "q01 equals q99": (lambda a: a["stats"]["action"].update(q01=[1.0, 1.0, 1.0], q99=[1.0, 1.0, 1.0]),
                       "attrs stats['action']"),
    "q99 below q01": (lambda a: a["stats"]["action"].update(q99=list(np.array(a["stats"]["action"]["q01"]) - 1)),
                      "expected min <= q01 <= q99 <= max"),
    "negative std": (_set_stat("std", 0, -1.0), "std -1"),
    "mean outside min..max": (_set_stat("mean", 2, 1e6), "min <= mean <= max"),
    # consistent in itself, but not this store's: only recomputing finds it
    "q01 shifted within range": (lambda a: a["stats"]["action"]["q01"].__setitem__(
        0, (a["stats"]["action"]["q01"][0] + a["stats"]["action"]["q99"][0]) / 2), "but the data give"),
    "max of proprio stale": (lambda a: a["stats"]["proprio"]["max"].__setitem__(0, a["stats"]["proprio"]["max"][0] + 5),
                             "attrs stats['proprio']['max'] dim 0"),
}


@pytest.mark.parametrize("case", sorted(STATS))
def test_statistics_that_are_not_the_datas_fail_validate(store, run, case):
    edit, needle = STATS[case]
    assert validate_store(store) == []
    edit_attrs(store, edit)
    problems = validate_store(store)
    assert any(needle in p for p in problems), problems
    code, cap = run("dataset", "validate", store)
    assert code == 1 and needle in cap.out


def test_a_collapsed_q99_dimension_is_not_trained_on(store):
    """q01 = q99 inside a dimension whose values vary: every target would be one end of [-1, 1] and every output
    would unnormalize to q01; refused, naming the key, the dimension and the way out."""
    edit_attrs(store, lambda a: a["stats"]["action"].update(q01=[0.0, 0.0, 0.0], q99=[0.0, 0.0, 0.0]))
    refused(lambda: window(store), "'action' dim 0", "q01 = q99", "data.normalization.action=min_max")
    ds = window(store, normalization={"action": "min_max"})  # the way out works
    x = ds.normalizer.normalize("action", np.asarray(open_dataset(store).array("action")[:]))
    assert x.min() == -1 and x.max() == 1


@pytest.mark.parametrize("edit,needle", [
    # min = max while the quantiles differ: no data has these; min_max would map every value to 0
    (lambda e: e.update(min=[0.0] * 3, max=[0.0] * 3), "expected min <= q01 <= q99 <= max"),
    # every field says constant but std says the values vary
    (lambda e: e.update(min=[0.0] * 3, max=[0.0] * 3, q01=[0.0] * 3, q99=[0.0] * 3, mean=[0.0] * 3),
     "both vary"),
], ids=["min-equals-max", "std-disagrees"])
@pytest.mark.parametrize("mode", ["min_max", "mean_std", "q99"])
def test_statistics_no_data_can_have_are_not_trained_on(store, edit, needle, mode):
    edit_attrs(store, lambda a: edit(a["stats"]["action"]))
    refused(lambda: window(store, normalization={"action": mode}), "'action'", needle)


def test_a_constant_dimension_is_not_collapsed(tmp_path):
    """A dimension that never varies (min = max) has nothing to lose: trained as before."""
    path = tmp_path / "c.zarr"
    with DatasetWriter(path, fps=10, modalities=MODALITIES, action_space={"dim": 3}) as w:
        for e in range(3):
            ep = episode(e, 5)
            ep["action"][:, 2] = 7.0
            w.add_episode(ep, instruction="x", task="t")
    assert validate_store(path) == []
    assert len(window(path)) > 0


# -- metadata that disagrees with the arrays ---------------------------------------------------------------------
def test_action_width_must_match_the_action_space(store, tmp_path):
    edit_attrs(store, lambda a: a["action_space"].update(dim=7))
    assert any("says dim 7" in p for p in validate_store(store, full=False))
    refused(lambda: open_dataset(store), "data/action has 3 values per step", "dim 7")
    refused(lambda: window(store), "dim 7")
    with pytest.raises(RobodualError, match="action_space says dim 4"):
        with DatasetWriter(tmp_path / "w.zarr", fps=10, modalities=MODALITIES, action_space={"dim": 4}) as w:
            w.add_episode(episode(0, 3), instruction="x", task="t")


def test_zero_width_keys_are_refused(store, tmp_path):
    ep = episode(0, 3)
    ep["action"] = np.zeros((3, 0), np.float32)
    with pytest.raises(RobodualError, match="zero-sized"):
        with DatasetWriter(tmp_path / "z.zarr", fps=10, modalities=MODALITIES) as w:
            w.add_episode(ep, instruction="x", task="t")
    edit_array_meta(store, "data/proprio", lambda m: (m.__setitem__("shape", [m["shape"][0], 0]),
                                                        m["chunk_grid"]["configuration"].__setitem__(
                                                            "chunk_shape", [m["chunk_grid"]["configuration"]
                                                                            ["chunk_shape"][0], 1])))
    refused(lambda: open_dataset(store), "data/proprio", "zero-sized")


# -- chunks an old store cannot tell from zeros --------------------------------------------------------------------
def test_an_old_store_with_a_missing_chunk_is_not_trained_on(store, run):
    import zarr

    root = zarr.open_group(str(store), mode="r+")
    del root.attrs["all_chunks_stored"]
    assert len(window(store)) > 0  # whole, it trains as before
    (store / "data" / "action" / "c" / "0" / "0").unlink()
    refused(lambda: window(store), "data/action", "is missing", "dataset merge")
    code, cap = run("dataset", "validate", store)  # and validate says so: the statistics were the lost data's
    assert code == 1 and "but the data give" in cap.out and "written before robodual stored every chunk" in cap.err


# -- declared shapes that would exhaust memory or time -------------------------------------------------------------
HUGE = {
    "10^13 action steps": ("data/action", lambda m: m.__setitem__("shape", [10**13, 3]), "data/action"),
    "frames of 10^5 x 10^5": ("data/rgb_static", lambda m: m.__setitem__("shape", [m["shape"][0], 10**5, 10**5, 3]),
                              "data/rgb_static"),
    "10^12 episodes": ("meta/episode_ends", lambda m: m.__setitem__("shape", [10**12]), "meta/episode_ends"),
}


@pytest.mark.parametrize("case", sorted(HUGE))
@pytest.mark.parametrize("old_layout", [False, True], ids=["new", "old-layout"])
def test_a_declared_shape_beyond_the_files_is_refused_at_once(store, run, case, old_layout):
    name, edit, needle = HUGE[case]
    if old_layout:
        edit_attrs(store, lambda a: a.pop("all_chunks_stored"))
    edit_array_meta(store, name, edit)
    t0 = time.perf_counter()
    problems = validate_store(store)
    assert any(needle in p for p in problems), problems
    refused(lambda: open_dataset(store), needle)
    for argv in (["dataset", "info", store], ["dataset", "view", store, "-o", store.parent / "v.png"],
                 ["dataset", "stats", store]):
        one_line_error(*run(*argv), needle)
    assert time.perf_counter() - t0 < 60


def test_episode_ranges_are_bounded_before_they_are_built(store, run, tmp_path):
    t0 = time.perf_counter()
    for spec in ("0-999999999999", "0-3,2-999999999999999999999", "-5-2", "3-1"):
        one_line_error(*run("dataset", "split", store, "--out", tmp_path / "sp", "--val-episodes", spec),
                       "--val-episodes")
    assert time.perf_counter() - t0 < 30 and not (tmp_path / "sp").exists()


# -- eval offline: NaN in what it reads or what the policy returns -------------------------------------------------
class FakePolicy:
    observation_spec = None

    def __init__(self, nan_at: int | None = None):
        self.nan_at, self.t = nan_at, 0

    def reset(self):
        self.t = 0

    def step(self, obs, instruction):
        self.t += 1
        a = np.zeros(3, np.float32)
        if self.nan_at is not None and self.t > self.nan_at:
            a[1] = np.nan
        return a


@pytest.fixture
def offline(store, run, tmp_path, monkeypatch):
    import robodual_core.runtime as runtime

    policy_dir = tmp_path / "policy"
    policy_dir.mkdir()

    def go(policy, *extra):
        monkeypatch.setattr(runtime, "load_policy", lambda *args, **kwargs: policy)
        return run("eval", "offline", "--policy", policy_dir, "--dataset", store, "--split", "all",
                   "--out", tmp_path / "ev", *extra)
    return go


def test_eval_offline_refuses_nan_instead_of_reporting_it(store, offline, tmp_path):
    code, cap = offline(FakePolicy())
    assert code == 0, cap.err
    assert np.isfinite(json.loads((tmp_path / "ev" / "results.json").read_text())["l1"])
    one_line_error(*offline(FakePolicy(nan_at=2)), "the policy's actions", "NaN", "step 2")
    import zarr

    arr = zarr.open_group(str(store), mode="r+")["data/proprio"]
    values = np.asarray(arr[:])
    values[6, 1] = np.nan  # episode 1, step 1 (episodes of 5, 3, 7, 4 steps)
    arr[:] = values
    one_line_error(*offline(FakePolicy()), "data/proprio", "episode 1, step 1", "NaN")
