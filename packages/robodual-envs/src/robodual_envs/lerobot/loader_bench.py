"""``robodual bench lerobot-loader``: robodual's window loader against the real ``LeRobotDataset`` on the same
episodes, worker count by worker count (issue 33's "lead over LeRobotDataset").

One store (the one given, or a synthetic one shaped like the demo's: 30 episodes, 2 RGB views at 128 px) is
exported with ``dataset export lerobot`` (LeRobot v3.0, H.264, a keyframe every 2 frames as LeRobot records);
LeRobot's own writer then stores the same frames as images (:mod:`robodual_envs.lerobot.lerobot_side`). Every
measurement is a fresh process: robodual's loader in this interpreter, ``LeRobotDataset`` (video, decoded with
torchcodec; images) in the interpreter given with ``--lerobot-python``. The processes alternate round by round
(the order rotated), so the load of the machine drifts over all of them alike; the median of the rounds is
reported. Each side loads as its users would: robodual through the trainer's loader (frames shared before
workers start, threads set from the cores), LeRobot through a plain ``DataLoader`` at torch's default threads;
both over 8-step action chunks, batch 32, persistent workers, after two warm-up batches.

LeRobot needs a torch this project does not pin (lerobot 0.4.4 asks for torch<2.11), so it usually lives in a
side environment: ``--lerobot-python`` names its interpreter. That environment need not have robodual.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from robodual_core.errors import RobodualError

SIDE_SCRIPT = Path(__file__).with_name("lerobot_side.py")
LIBRARIES = ("robodual", "lerobot_video", "lerobot_image")
INSTALL_HINT = ("LeRobot (pip install lerobot) needs torch<2.11 while robodual pins torch 2.14.1: install it in a "
                "side environment and pass its interpreter with --lerobot-python (docs/benchmarks.md shows how)")


def _run_json(cmd: list[str], what: str, timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cmd``; its last stdout line must be one JSON object. Anything else is an error naming ``what``."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise RobodualError(f"{what}: no result after {timeout:.0f} s ({' '.join(cmd[:3])} ...)") from e
    except OSError as e:
        raise RobodualError(f"{what}: cannot run '{cmd[0]}': {e.strerror or e}") from e
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        raise RobodualError(f"{what}: '{cmd[0]}' exited with {proc.returncode}: {tail}")
    try:
        result = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        result = None
    if not isinstance(result, dict):
        found = repr(lines[-1][:120]) if lines else "no output"
        raise RobodualError(f"{what}: expected a JSON object on the last line of stdout, found {found}")
    return result


def check_lerobot_python(python: str) -> dict[str, Any]:
    """The versions of lerobot and of what sets its speed in ``python``'s environment, or a clear error."""
    try:
        got = _run_json([python, str(SIDE_SCRIPT), "version"], f"--lerobot-python {python}", 120)
    except RobodualError as e:
        raise RobodualError(f"{e}. {INSTALL_HINT}") from None
    if not isinstance(got.get("lerobot"), str):
        raise RobodualError(f"--lerobot-python {python}: expected its lerobot version, found {got!r}")
    return got


def default_lerobot_python() -> str | None:
    """This interpreter when ``lerobot`` imports in it, else None."""
    from importlib.util import find_spec

    return sys.executable if find_spec("lerobot") is not None else None


def robodual_timing(store: str, workers: str, batch: int, seconds: float, horizon: int) -> dict[str, Any]:
    """Samples/s of robodual's loader on ``store`` at ``workers`` (a count or ``auto``), in this process."""
    from robodual_core.data.bench_loader import BENCH_KEYS, first_batch_seconds, loader_throughput
    from robodual_core.data.loader import AUTO, choose_num_workers
    from robodual_core.data.sampler import WindowDataset
    from robodual_core.data.store import open_dataset

    t0 = time.perf_counter()
    chosen = None
    keys = [k for k in BENCH_KEYS if k in open_dataset(store).keys]
    if workers == AUTO:
        chosen = choose_num_workers(WindowDataset(store, obs_keys=keys, horizon=horizon, image_size=None,
                                                  split="all"), batch)["num_workers"]
    n = chosen if chosen is not None else int(workers)
    # a new dataset to its first batch (auto's choice made), as LeRobot's side times it
    choose_s = time.perf_counter() - t0
    first = choose_s + first_batch_seconds(Path(store), keys, None, batch, n, shared=True)
    got = loader_throughput(store, n, batch_size=batch, seconds=seconds, image_size=None, horizon=horizon)
    got["first_batch_s"] = first
    got["auto_num_workers"] = chosen
    got["process_seconds"] = time.perf_counter() - t0
    return got


def lerobot_loader_report(store: Path | None, lerobot_python: str, workers: tuple[str, ...] = ("0", "1", "2"),
                          rounds: int = 3, seconds: float = 3.0, batch: int = 32, horizon: int = 8,
                          conditions: tuple[str, ...] = ("quiet",), progress: Callable[[str], None] | None = None,
                          timeout: float = 600) -> dict[str, Any]:
    """Side-by-side samples/s per worker count of robodual's loader and ``LeRobotDataset`` (video, images), under
    each condition (``quiet``; ``busy``: beside a busy-loop process), the conditions alternating within a round.
    The first condition's figures are also at the top of the report."""
    from robodual_core.data.bench_loader import busy_core, demo_like_store
    from robodual_envs.lerobot.export import export_lerobot

    for condition in conditions:
        if condition not in ("quiet", "busy"):
            raise ValueError(f"condition '{condition}'; expected quiet or busy")
    say = progress or (lambda text: None)
    versions = check_lerobot_python(lerobot_python)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    with tempfile.TemporaryDirectory(prefix="robodual-bench-lerobot-loader-") as tmp:
        src = store
        if src is None:
            say("writing a synthetic store shaped like the demo's")
            src = demo_like_store(Path(tmp) / "demo_like.zarr")
        say("exporting it as a LeRobot v3.0 dataset (H.264)")
        exported = export_lerobot(src, Path(tmp) / "lerobot_video", progress=False)
        say("storing its frames as images with LeRobot's writer")
        _run_json([lerobot_python, str(SIDE_SCRIPT), "images", str(Path(tmp) / "lerobot_video"),
                   str(Path(tmp) / "lerobot_image")], "LeRobot image dataset", timeout, env)
        roots = {"lerobot_video": Path(tmp) / "lerobot_video", "lerobot_image": Path(tmp) / "lerobot_image"}
        jobs = [(c, lib, w) for c in conditions for w in workers for lib in LIBRARIES
                if not (lib != "robodual" and w == "auto")]  # auto is robodual's; LeRobot has no such setting
        runs: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] = {c: {lib: {} for lib in LIBRARIES}
                                                                       for c in conditions}
        for c, lib, w in jobs:
            runs[c][lib][w] = []
        for r in range(rounds):
            order = jobs[r % len(jobs):] + jobs[:r % len(jobs)]
            for i, (c, lib, w) in enumerate(order):
                say(f"round {r + 1}/{rounds}: {lib}, {w} workers, {c} ({i + 1}/{len(order)})")
                if lib == "robodual":
                    cmd = [sys.executable, "-m", "robodual_envs.lerobot.loader_bench", str(src), w, str(batch),
                           str(seconds), str(horizon)]
                else:
                    cmd = [lerobot_python, str(SIDE_SCRIPT), "time", str(roots[lib]), "--workers", w,
                           "--batch", str(batch), "--seconds", str(seconds), "--horizon", str(horizon)]
                busy = busy_core() if c == "busy" else None
                try:
                    runs[c][lib][w].append(_run_json(cmd, f"{lib} with {w} workers ({c})", timeout, env))
                finally:
                    if busy is not None:
                        busy.kill()
                        busy.wait()
    by_condition = {c: _summary(runs[c]) for c in conditions}
    leads = [x for c in by_condition.values() for by in c["robodual_over_lerobot"].values() for x in by.values()
             if x is not None]
    return {
        "store": "synthetic demo-like (30 episodes, 2 RGB at 128 px; removed after the run)" if store is None
        else str(store),
        "frames": exported["frames"], "episodes": exported["episodes"], "video_encoder": exported["encoder"],
        "gop": 2, "batch_size": batch, "action_chunk": horizon, "rounds": rounds, "seconds_per_run": seconds,
        "lerobot": versions["lerobot"], "lerobot_environment": versions, "lerobot_python": lerobot_python,
        **{k: v for k, v in by_condition[conditions[0]].items()}, "condition": conditions[0],
        "conditions": by_condition,
        "goals": {"min_lead_over_lerobot": min(leads) if leads else None,
                  "lead_at_least_2x_at_every_worker_count": bool(leads) and min(leads) >= 2.0},
    }


def _summary(runs: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """Medians over rounds and robodual's lead per LeRobot variant and worker count, for one condition."""
    from robodual_core.data.loader import median

    rates = {lib: {w: round(median([x["samples_per_s"] for x in v]), 1) for w, v in by.items() if v}
             for lib, by in runs.items()}
    first = {lib: {w: round(median([x["first_batch_s"] for x in v]), 3) for w, v in by.items()
                   if v and all("first_batch_s" in x for x in v)} for lib, by in runs.items()}
    lead = {lib: {w: round(rates["robodual"][w] / rates[lib][w], 2) if rates[lib].get(w) else None
                  for w in rates[lib]} for lib in LIBRARIES[1:]}
    return {"samples_per_s": rates, "first_batch_s": first, "robodual_over_lerobot": lead, "runs": runs}


def main(argv: list[str] | None = None) -> int:
    """``python -m robodual_envs.lerobot.loader_bench STORE WORKERS BATCH SECONDS HORIZON``: one robodual timing
    (the bench runs it as a process of its own), one JSON object on stdout."""
    args = sys.argv[1:] if argv is None else argv
    store, workers, batch, seconds, horizon = args
    print(json.dumps(robodual_timing(store, workers, int(batch), float(seconds), int(horizon))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
