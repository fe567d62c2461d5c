"""The training loader (issue 33): worker counts (a number or ``auto``), frames shared with workers instead of read
again by each, and thread limits in the main process and in every worker."""

from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np
import pytest
import torch
from dataset_helpers import make_store
from torch import nn

from robodual_core.config import load_config
from robodual_core.data import WindowDataset
from robodual_core.data import loader as loader_mod
from robodual_core.data import sampler as sampler_mod
from robodual_core.data.loader import (
    AUTO_TOLERANCE,
    build_loader,
    check_num_workers,
    choose_num_workers,
    main_threads,
    resolve_num_workers,
)
from robodual_core.errors import ConfigError, RobodualError
from robodual_core.training import ResumableBatchSampler, Trainer, TrainerConfig


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("loader") / "a.zarr")


def _windows(store, **kw):
    return WindowDataset(store, obs_keys=["rgb_static", "depth_static", "proprio"], horizon=3, k_g=3, split="all",
                         image_size=6, **kw)


def _seeded_batches(ds, workers, epochs=2, batch_size=4):
    """The trainer's batches (SeededBatch: tau drawn from each batch's seed) through the trainer's loader."""
    sampler = ResumableBatchSampler(len(ds), batch_size, seed=5)
    loader = build_loader(ds, workers, batch_sampler=sampler, generator=torch.Generator().manual_seed(0))
    out = []
    for epoch in range(epochs):
        sampler.epoch = epoch
        out.extend(loader)
    return out


def _assert_same(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    else:
        assert a == b


def test_worker_batches_equal_in_process_batches_without_workers_reading_the_store(store, monkeypatch):
    """2 workers serve the batches 0 workers serve, batch for batch over 2 epochs (tau draws included), and the
    workers read no frames from the store: they map the frames the main process read once into shared memory."""
    parent = os.getpid()
    real = sampler_mod.read_shared

    def read_in_parent_only(arr, *a, **kw):
        if os.getpid() != parent:  # a worker reading the whole store again: the pre-issue-33 loader
            raise AssertionError("a loader worker read the frames from the store itself")
        return real(arr, *a, **kw)

    monkeypatch.setattr(sampler_mod, "read_shared", read_in_parent_only)  # inherited by the forked workers
    without = _seeded_batches(_windows(store), 0)
    ds = _windows(store)
    with_workers = _seeded_batches(ds, 2)
    assert len(with_workers) == len(without) == 2 * (len(ds) // 4)
    assert len({int(t) for b in without for t in b["tau"]}) > 1  # tau is drawn, so equality means something
    for a, b in zip(with_workers, without, strict=True):
        _assert_same(a, b)
    assert set(ds._shared) == {"rgb_static", "depth_static"} and all(t.is_shared() for t in ds._shared.values())


def test_shared_frames_equal_the_store(store):
    ds = _windows(store).share_memory()
    from robodual_core.data import open_dataset

    for key in ("rgb_static", "depth_static"):
        np.testing.assert_array_equal(ds._shared[key].numpy(), np.asarray(open_dataset(store).array(key)[:]))
    # read block by block (several blocks here): the same values
    arr = open_dataset(store).array("rgb_static")
    np.testing.assert_array_equal(sampler_mod.read_shared(arr, block_bytes=1).numpy(), np.asarray(arr[:]))


class ThreadProbe(torch.utils.data.Dataset):
    """Each sample reports the threads of the process that made it."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        try:
            from threadpoolctl import threadpool_info

            pools = max((p["num_threads"] for p in threadpool_info()), default=1)
        except ImportError:
            pools = 1
        return {"torch": torch.tensor(torch.get_num_threads()), "pools": torch.tensor(pools),
                "omp_env": torch.tensor(int(os.environ.get("OMP_NUM_THREADS", "0"))),
                "pid": torch.tensor(os.getpid())}


def test_thread_settings_applied_in_workers_and_in_process(monkeypatch):
    """The parent runs 2 threads everywhere (torch, the BLAS/OpenMP pools, OMP_NUM_THREADS): workers forked from
    it run 1 of each; a 0-worker loader reads and collates with 1 torch thread and gives the 2 back."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with threadpoolctl.threadpool_limits(limits=2):
            assert max(p["num_threads"] for p in threadpoolctl.threadpool_info()) == 2
            batches = list(build_loader(ThreadProbe(), 2, batch_size=2, generator=torch.Generator().manual_seed(0)))
        assert {int(p) for b in batches for p in b["pid"]} != {os.getpid()}  # really made in workers
        for key in ("torch", "pools", "omp_env"):
            assert {int(v) for b in batches for v in b[key]} == {1}, key
        # no workers: the batches are read and collated with one thread, and the model's threads come back
        batches = list(build_loader(ThreadProbe(), 0, batch_size=2))
        assert {int(v) for b in batches for v in b["torch"]} == {1}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_main_threads_never_oversubscribe_nor_raise():
    assert main_threads(2, cores=2, current=2) == 1
    assert main_threads(1, cores=8, current=8) == 7
    assert main_threads(0, cores=4, current=2) == 2  # an explicit lower setting stands
    assert main_threads(8, cores=2, current=2) == 1
    rec = resolve_num_workers(3, ThreadProbe(), 2, cores=4)
    assert rec["num_workers"] == 3 and rec["main_threads"] == max(1, min(torch.get_num_threads(), 1))
    # cores other processes hold are given up too: beside one busy core on two, one thread
    assert main_threads(0, cores=2, current=2, busy=1) == 1
    assert main_threads(0, cores=8, current=8, busy=3) == 5
    assert main_threads(1, cores=2, current=2, busy=5) == 1


def test_main_threads_give_up_a_core_another_process_keeps_busy(monkeypatch):
    import subprocess
    import sys

    from robodual_core.data.loader import busy_cores

    if not os.path.exists("/proc/stat"):
        pytest.skip("busy_cores reads /proc (Linux)")
    spinner = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 20: pass"])
    try:
        time.sleep(0.3)
        assert busy_cores(0.5) >= 1  # the spinner, whatever else runs
        before = torch.get_num_threads()
        torch.set_num_threads(min(2, os.cpu_count() or 1))
        try:
            rec = resolve_num_workers(0, ThreadProbe(), 2, cores=2)
        finally:
            torch.set_num_threads(before)
        assert rec["busy_cores"] >= 1 and rec["main_threads"] == 1
    finally:
        spinner.kill()
        spinner.wait()


class Costly(torch.utils.data.Dataset):
    """A batch costs ``main_s`` seconds in the main process and ``worker_s`` in a worker (sleeps: no CPU needed)."""

    def __init__(self, main_s, worker_s):
        self.parent, self.main_s, self.worker_s = os.getpid(), main_s, worker_s

    def __len__(self):
        return 64

    def __getitems__(self, idx):
        time.sleep(self.main_s if os.getpid() == self.parent else self.worker_s)
        return [{"x": torch.tensor(float(i))} for i in idx]


@pytest.mark.parametrize("main_s, worker_s, want_workers", [(0.08, 0.0, True), (0.0, 0.08, False)])
def test_auto_takes_workers_only_where_they_pay(main_s, worker_s, want_workers):
    rec = choose_num_workers(Costly(main_s, worker_s), 4, cores=2, rounds=2, round_seconds=0.05, max_batches=8)
    assert rec["candidates"] == [0, 1, 2] and set(rec["samples_per_s"]) == {"0", "1", "2"}
    assert (rec["num_workers"] > 0) == want_workers, rec
    rates = {int(k): v for k, v in rec["over_0_workers"].items()}
    assert rates[0] == 1.0 and rates[rec["num_workers"]] >= (1 - AUTO_TOLERANCE) * max(rates.values())
    # fewer workers win near-ties: no count below the choice is within the tolerance
    assert all(rates[w] < (1 - AUTO_TOLERANCE) * max(rates.values()) for w in rates if w < rec["num_workers"])


def test_auto_judges_each_count_against_0_workers_in_the_same_round(monkeypatch):
    """The machine's load drifts between rounds: 1 worker beats 0 in two rounds of three by 10%, but 0 workers
    happened to run in the quiet round, so the medians of the raw rates (2500 vs 2000) would pick 0."""
    import robodual_core.data.loader as loader

    drifting = {0: [3000.0, 1000.0, 2500.0], 1: [3300.0, 1100.0, 2000.0], 2: [2400.0, 800.0, 1500.0]}
    calls = []

    def fake_time_in_turn(loaders, rounds, samples):
        calls.append(rounds)
        return {w: list(drifting[w][:rounds]) for w in loaders}

    monkeypatch.setattr(loader, "time_in_turn", fake_time_in_turn)
    rec = choose_num_workers(Costly(0.0, 0.0), 4, cores=2, rounds=3, round_seconds=0.01, max_batches=4)
    assert calls == [1, 3]  # a warm-up round, then the timed ones
    assert rec["samples_per_s"] == {"0": 2500.0, "1": 2000.0, "2": 1500.0}
    assert rec["over_0_workers"] == {"0": 1.0, "1": 1.1, "2": 0.8} and rec["num_workers"] == 1, rec


def test_auto_on_one_core_is_zero_without_measuring():
    rec = choose_num_workers(Costly(1.0, 0.0), 4, cores=1)
    assert rec["num_workers"] == 0 and rec["samples_per_s"] == {} and rec["seconds"] < 0.5


class ActionModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def loss(self, batch):
        loss = ((batch["action"].mean() - self.w) ** 2).sum()
        return loss, {}

    def robodual_config(self):
        return {"family": "test_loader"}


@pytest.fixture
def quick_auto(monkeypatch):
    """auto measures on 2 cores (even on a 1-core machine), in short epochs."""
    monkeypatch.setattr(loader_mod, "available_cores", lambda: 2)
    monkeypatch.setattr(loader_mod, "AUTO_MAX_BATCHES", 6)


def test_auto_is_the_default_picks_a_valid_count_and_is_recorded(store, tmp_path, quick_auto):
    cfg = TrainerConfig(steps=3, batch_size=4, warmup_steps=0, log_every=1, ckpt_every=3, device="cpu")
    assert cfg.num_workers == "auto"
    trainer = Trainer(ActionModel(), _windows(store), cfg, tmp_path, show_progress=False)
    trainer.fit()
    record = json.loads((tmp_path / "loader.json").read_text())
    assert record["setting"] == "auto" and record["candidates"] == [0, 1, 2]
    assert record["num_workers"] in record["candidates"] and set(record["samples_per_s"]) == {"0", "1", "2"}
    assert record["main_threads"] >= 1 and record["cores"] == 2
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3]
    assert {x["num_workers"] for x in lines} == {record["num_workers"]}
    assert trainer._loader().num_workers == record["num_workers"]


def test_auto_measurement_keeps_the_global_rng(store, tmp_path, quick_auto):
    cfg = TrainerConfig(steps=1, batch_size=4, device="cpu")
    trainer = Trainer(ActionModel(), _windows(store), cfg, tmp_path, show_progress=False)
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    trainer._loader()  # 0 workers read batches in this process: tau draws without a batch seed use torch's RNG
    assert trainer.loader_record["samples_per_s"]
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_state[1])


@dataclasses.dataclass
class Wrapped:
    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)


@pytest.mark.parametrize("text", ["0", "2", "auto", "AUTO", " 3"])
def test_num_workers_accepts_counts_and_auto(text):
    cfg = load_config(Wrapped, None, [f"trainer.num_workers={text}"])
    value = cfg.trainer.num_workers
    assert value == ("auto" if text.strip().lower() == "auto" else int(text))


@pytest.mark.hostile
@pytest.mark.parametrize("text, shown", [("-1", "-1"), ("lots", "'lots'"), ("2.5", "'2.5'"), ("true", "'true'"),
                                         ("1000", "1000"), ("", "''"), ("[2]", "'[2]'")])
def test_bad_num_workers_refused_in_one_line(text, shown):
    with pytest.raises(ConfigError) as err:
        load_config(Wrapped, None, [f"trainer.num_workers={text}"])
    msg = str(err.value)
    assert "\n" not in msg and "config key 'trainer.num_workers' must be 'auto' or an integer" in msg, msg
    assert msg.endswith(f"found {shown}"), msg


@pytest.mark.hostile
@pytest.mark.parametrize("value", [-2, 2.0, True, None, "many", 10**6])
def test_bad_num_workers_in_code_refused_before_any_worker(value, store, tmp_path):
    cfg = TrainerConfig(steps=1, batch_size=4, device="cpu")
    cfg.num_workers = value  # set after construction: the Trainer checks again
    with pytest.raises(ConfigError, match=r"^config key 'trainer.num_workers' must be 'auto' or an integer"):
        Trainer(ActionModel(), _windows(store), cfg, tmp_path, show_progress=False)
    with pytest.raises(RobodualError, match=r"^num_workers is .*; expected 'auto' or an integer in \[0, 256\]$"):
        build_loader(ThreadProbe(), value)
    with pytest.raises(RobodualError, match="trainer.num_workers is"):
        check_num_workers(value)


@pytest.mark.hostile
def test_bad_num_workers_from_the_cli_is_one_line(run, tmp_path):
    code, cap = run("train", "specialist", "--dataset", tmp_path / "none.zarr", "--out", tmp_path / "run",
                    "--set", "trainer.num_workers=several")
    assert code == 1 and cap.err.strip().count("\n") == 0, cap.err
    assert "config key 'trainer.num_workers' must be 'auto' or an integer in [0, 256], found 'several'" in cap.err
    code, cap = run("bench", "loader", "--workers", "0,two", "--out", tmp_path / "b.json")
    assert code == 1 and cap.err.strip().count("\n") == 0 and "--workers item 'two'" in cap.err, cap.err
    assert not (tmp_path / "b.json").exists()


def test_loader_goals_judge_auto_by_the_fixed_setting_it_chose():
    """auto's choice is judged by that setting's side-by-side rate; auto's own loader (the same setting timed
    again) gives the run's noise, reported apart."""
    from robodual_core.data.bench_loader import _goals

    def cond(rates, chosen):
        return {"samples_per_s": rates, "auto": {"num_workers": chosen}}

    out = {"conditions": {"quiet": cond({"0": 2500.0, "1": 2000.0, "2": 1600.0, "auto": 2000.0}, 0),
                          "busy": cond({"0": 900.0, "1": 1200.0, "2": 1000.0, "auto": 1320.0}, 1)}}
    g = _goals(out, [0, 1, 2])
    assert g["quiet"]["auto_choice_over_best_fixed"] == 1.0
    assert g["quiet"]["auto_over_best_fixed"] == pytest.approx(0.8)
    assert g["quiet"]["auto_timed_over_same_fixed"] == pytest.approx(0.8)
    assert "auto_choice_over_0_workers" not in g["quiet"]
    assert g["busy"]["auto_choice_over_best_fixed"] == 1.0
    assert g["busy"]["auto_choice_over_0_workers"] == pytest.approx(1200 / 900)
    assert g["busy"]["auto_timed_over_same_fixed"] == pytest.approx(1.1)
    assert g["busy_over_quiet"]["0"] == pytest.approx(0.36)
    wrong = _goals({"conditions": {"quiet": cond({"0": 1000.0, "2": 500.0, "auto": 520.0}, 2)}}, [0, 2])
    assert wrong["quiet"]["auto_choice_over_best_fixed"] == pytest.approx(0.5)
