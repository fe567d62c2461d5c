"""Shared test settings: headless rendering, no hub access, small thread counts."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models gain nothing from a second thread, and on a busy 2-core machine OpenMP spin-waiting makes
# two threads several times slower than one.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Third-party plugins' import probes are cached (robodual_core.plugins); tests keep theirs out of ~/.cache.
os.environ.setdefault("ROBODUAL_PLUGIN_CACHE", os.path.join(__import__("tempfile").gettempdir(),
                                                            f"robodual-test-plugin-probes-{os.getpid()}.json"))

# torch._dynamo imports triton, which segfaults when it is first imported after MuJoCo has initialised EGL in the
# same process (seen with the Meta-World tests followed by the Trainer's diffusers imports). Importing it up front
# makes the suite independent of test order.
import shutil
import subprocess
import venv
from pathlib import Path

import pytest
import torch
import torch._dynamo

from robodual_core.scheduling import current_scheduling, restore_realtime_threads


@pytest.fixture
def run(capsys):
    """``robodual ARGS`` in this process: ``(exit code, captured stdout/stderr)``."""
    from robodual_cli.app import main

    def _run(*args):
        with pytest.raises(SystemExit) as exc:
            main([str(a) for a in args])
            raise SystemExit(0)
        return exc.value.code, capsys.readouterr()

    return _run


@pytest.fixture
def clean_venv():
    """``make(env_dir) -> python``: a venv with its own site-packages and pip only. When ensurepip fails, the failure
    shows pip's own output and the free disk space (a full disk is the usual cause) instead of a bare exit status."""

    def make(env_dir: Path) -> Path:
        venv.EnvBuilder(with_pip=False, system_site_packages=False, clear=True).create(env_dir)
        py = env_dir / "bin" / "python"
        got = subprocess.run([str(py), "-m", "ensurepip", "--upgrade", "--default-pip"], capture_output=True,
                             text=True, timeout=600)
        if got.returncode != 0:
            free = shutil.disk_usage(env_dir).free / 2**30
            pytest.fail(f"ensurepip in {env_dir} exited {got.returncode} with {free:.1f} GiB free there:\n"
                        f"{(got.stdout + got.stderr)[-3000:]}")
        return py

    return make


# the scheduling this process started with (fixtures of any scope run after it, so compare to it, not to a test's)
_SCHEDULING = current_scheduling()


@pytest.fixture(autouse=True)
def _scheduling_unchanged(request):
    """No test or fixture leaves a thread of this process real-time (SCHED_FIFO/RR) when the suite did not start so.
    SVT-AV1 as root once made the suite's process real-time (SCHED_FIFO 99) from a fixture's encode: every later
    child inherited it, and a busy loop at that priority starved the timing process beside it, hanging the run.
    (Threads a library lowers, like Mesa's at SCHED_BATCH, are its own business.)"""
    yield
    changed = restore_realtime_threads(_SCHEDULING)  # later tests run as the suite started either way
    assert not changed, (f"{request.node.nodeid} (or a fixture it uses) left {len(changed)} thread(s) of the test "
                         f"process at scheduling policy {sorted(set(changed))}; the suite started at "
                         f"{_SCHEDULING}")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
