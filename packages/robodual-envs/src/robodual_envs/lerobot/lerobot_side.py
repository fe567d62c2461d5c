"""The LeRobot half of ``robodual bench lerobot-loader``, run as a script by the interpreter given with
``--lerobot-python`` (an environment where ``lerobot`` imports; it need not have robodual).

It imports only the standard library, torch and lerobot, so it runs in a side environment. Two commands:

- ``images SRC DST``: write DST, a LeRobot dataset with the frames of the LeRobot video dataset SRC stored as
  images (LeRobot's own writer: ``LeRobotDataset.create(use_videos=False)``, ``add_frame``, ``save_episode``).
- ``time ROOT --workers N --batch B --seconds S --horizon H``: samples/s of a shuffled ``DataLoader`` over
  ``LeRobotDataset(ROOT)`` with ``H``-step action chunks (``delta_timestamps``), after two warm-up batches,
  its workers persistent; prints one JSON object on its last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _open(root: str, horizon: int | None):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata

    meta = LeRobotDatasetMetadata("local/bench", root=root)
    delta = {"action": [i / meta.fps for i in range(horizon)]} if horizon else None
    backend = "torchcodec" if meta.video_keys else None
    return LeRobotDataset("local/bench", root=root, delta_timestamps=delta, video_backend=backend)


def images(src: str, dst: str) -> dict:
    import torch
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = _open(src, None)
    features = {}
    for key, ft in ds.meta.features.items():
        if key in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
            continue
        features[key] = dict(ft, dtype="image", info=None) if ft["dtype"] == "video" else dict(ft)
    out = LeRobotDataset.create("local/bench-images", fps=ds.meta.fps, features=features, root=dst,
                                use_videos=False)
    episode = None
    for i in range(len(ds)):
        item = ds[i]
        if episode is not None and int(item["episode_index"]) != episode:
            out.save_episode()
        episode = int(item["episode_index"])
        frame = {"task": item["task"]}
        for key, ft in features.items():
            value = item[key]
            if ft["dtype"] == "image":  # the video reader gives float CHW in [0, 1]; the writer takes uint8 HWC
                value = (value.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0)
            frame[key] = value
        out.add_frame(frame)
    out.save_episode()
    out.finalize()
    return {"root": dst, "frames": len(ds), "episodes": ds.meta.total_episodes}


def timing(root: str, workers: int, batch: int, seconds: float, horizon: int) -> dict:
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    t0 = time.perf_counter()
    ds = _open(root, horizon)
    sampler = RandomSampler(ds, replacement=True, num_samples=10**9, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=True,
                        persistent_workers=workers > 0)
    it = iter(loader)
    next(it)
    first = time.perf_counter() - t0
    next(it)
    samples, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        samples += next(it)["action"].shape[0]
    elapsed = time.perf_counter() - start
    keys = sorted(k for k in ds.meta.features if k.startswith("observation."))
    return {"samples_per_s": samples / elapsed, "samples": samples, "seconds": elapsed, "first_batch_s": first,
            "frames": len(ds), "obs_keys": keys, "video": bool(ds.meta.video_keys),
            "torch_threads": torch.get_num_threads(), "lerobot": _version()}


def _version() -> str:
    from importlib.metadata import version

    import lerobot  # noqa: F401  (an environment without it fails here, with Python's own message)

    return version("lerobot")


def _others() -> dict[str, str | None]:
    """Versions of the packages that set LeRobot's loading speed (datasets changed it several-fold in 4.x)."""
    from importlib.metadata import PackageNotFoundError, version

    got: dict[str, str | None] = {}
    for name in ("torch", "datasets", "torchcodec", "pyarrow"):
        try:
            got[name] = version(name)
        except PackageNotFoundError:
            got[name] = None
    return got


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lerobot_side")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("images")
    p.add_argument("src")
    p.add_argument("dst")
    p = sub.add_parser("time")
    p.add_argument("root")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--horizon", type=int, default=8)
    sub.add_parser("version")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder: never the Hub
    if args.cmd == "version":
        result = {"lerobot": _version(), **_others()}
    elif args.cmd == "images":
        result = images(args.src, args.dst)
    else:
        result = timing(args.root, args.workers, args.batch, args.seconds, args.horizon)
    sys.stdout.flush()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
