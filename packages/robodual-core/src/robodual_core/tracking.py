"""Experiment trackers (``--log tensorboard``, ``--log wandb``): sinks of what a command writes to its own files.

``metrics.jsonl`` (training) and ``results.json`` (evaluation) stay the source of truth; a :class:`Tracking` only
forwards the same records, so a run without trackers loses nothing and a tracker never holds a number the run
folder does not. Both trackers are optional extras, imported when a run asks for them:

- ``tensorboard``: event files in ``<run>/tensorboard/`` (``torch.utils.tensorboard.SummaryWriter``); a resumed
  run writes the same folder with ``purge_step`` = the resumed step + 1, so the steps it repeats are not shown twice;
- ``wandb``: one W&B run per run folder, its id kept in ``<run>/tracking.json``: a resumed run and the evaluations
  of its policy continue the same W&B run. Offline (``<run>/wandb/offline-run-*``, ``wandb sync`` uploads it) unless
  ``WANDB_MODE`` is set or the user is logged in (``WANDB_API_KEY`` or ``wandb login``). ``WANDB_PROJECT`` (default
  ``robodual``), ``WANDB_ENTITY`` and ``WANDB_RUN_GROUP`` apply as wandb defines them.

Every scalar is logged against one x axis, ``step`` (the training step; an evaluation logs at its checkpoint's
step), declared with ``define_metric`` on W&B so evaluations can be logged after training has moved on.
"""

from __future__ import annotations

import importlib.util
import io
import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from robodual_core.errors import MissingDependencyError, RobodualError

TRACKERS = ("tensorboard", "wandb")
INSTALL = {"tensorboard": "pip install 'robodual-core[tensorboard]'  (or: pip install tensorboard)",
           "wandb": "pip install 'robodual-core[wandb]'  (or: pip install wandb)"}
MODULE = {"tensorboard": "tensorboard", "wandb": "wandb"}
STATE_FILE = "tracking.json"
LOG_HELP = ("Experiment trackers: tensorboard, wandb (repeatable or comma-separated; wandb runs offline unless "
            "WANDB_MODE is set or you are logged in). metrics.jsonl / results.json stay the record.")


@runtime_checkable
class MetricSink(Protocol):
    """What the training loop feeds each line of ``metrics.jsonl`` to (``Trainer(metric_sinks=...)``)."""

    def start(self, step: int) -> None:
        """Called once before the first step with the step the run starts (or resumes) from."""

    def write(self, metrics: Mapping[str, Any]) -> None:
        """One ``metrics.jsonl`` record (it holds ``step``)."""


def parse_log(values: Iterable[str] | None, flag: str = "--log") -> list[str]:
    """Tracker names from ``--log`` values (repeatable, or comma-separated), each once, checked installed."""
    names: list[str] = []
    for value in values or ():
        for part in str(value).split(","):
            name = part.strip().lower()
            if not name:
                continue
            if name not in TRACKERS:
                raise RobodualError(f"{flag}: expected {' or '.join(TRACKERS)} (repeatable or comma-separated), "
                                    f"found '{part.strip()}'")
            if name not in names:
                names.append(name)
    for name in names:
        if importlib.util.find_spec(MODULE[name]) is None:
            raise MissingDependencyError(f"{flag} {name}: the Python package '{MODULE[name]}' is not installed; "
                                         f"install it with: {INSTALL[name]}")
    return names


def scalars(record: Mapping[str, Any], prefix: str = "", skip: Iterable[str] = ("step",)) -> dict[str, float]:
    """The finite numbers of ``record`` (nested dicts flattened with ``/``), keyed ``prefix + key``."""
    skipped = set(skip)
    out: dict[str, float] = {}

    def walk(obj: Any, key: str) -> None:
        if isinstance(obj, Mapping):
            for k, v in obj.items():
                if key or str(k) not in skipped:
                    walk(v, f"{key}/{k}" if key else str(k))
        elif isinstance(obj, bool):
            out[prefix + key] = float(obj)
        elif isinstance(obj, int | float) and math.isfinite(float(obj)):
            out[prefix + key] = float(obj)

    walk(record, "")
    return out


def run_root(path: Path) -> Path:
    """The run folder a policy path belongs to (a checkpoint ``RUN/checkpoints/<step>`` -> ``RUN``), else itself."""
    path = Path(path)
    if path.parent.name == "checkpoints" and (path.parent.parent / "config.json").is_file():
        return path.parent.parent
    return path


class Tracking:
    """The trackers of one run folder (``root``): :meth:`start`, :meth:`write` (a :class:`MetricSink`),
    :meth:`log`, :meth:`log_video`, :meth:`close`. Opened lazily: nothing is imported before :meth:`start`."""

    def __init__(self, names: list[str], root: str | Path, job: str, prefix: str = "",
                 config: Mapping[str, Any] | None = None, purge: bool = True):
        self.names, self.root, self.job, self.prefix = list(names), Path(root), job, prefix
        self.config = dict(config or {})
        self.purge = purge  # a training run purges what a resume repeats; an evaluation adds to a run, never purges
        self._tb: Any = None
        self._wandb: Any = None
        self._started = False
        self.notes: list[str] = []  # one line per tracker: where its files are

    # -- MetricSink -----------------------------------------------------------------------------
    def start(self, step: int = 0) -> None:
        if self._started:
            return
        self._started = True
        self.root.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():  # the libraries' import-time deprecation warnings are not the user's
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            if "tensorboard" in self.names:
                self._start_tensorboard(step)
            if "wandb" in self.names:
                self._start_wandb()

    def write(self, metrics: Mapping[str, Any]) -> None:
        step = metrics.get("step")
        self.log(scalars(metrics), step=int(step) if isinstance(step, int | float) else 0)

    # -- logging --------------------------------------------------------------------------------
    def log(self, values: Mapping[str, float], step: int, prefix: str | None = None) -> None:
        """Scalars at ``step``, each key under ``prefix`` (default: this tracking's)."""
        self.start(step)
        pre = self.prefix if prefix is None else prefix
        values = {pre + k: float(v) for k, v in values.items()}
        if not values:
            return
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(key, value, global_step=step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log({**values, "step": step})

    def log_video(self, key: str, path: str | Path, step: int, fps: int = 10) -> None:
        """An evaluation video file (mp4 or gif): a W&B video, a TensorBoard animated image (gif)."""
        self.start(step)
        path = Path(path)
        if self._wandb is not None:
            import wandb

            self._wandb.log({key: wandb.Video(str(path), format=path.suffix.lstrip(".") or "mp4"), "step": step})
        if self._tb is not None:
            frames = _read_frames(path)
            if frames:
                from tensorboard.compat.proto.summary_pb2 import Summary

                h, w = frames[0].shape[:2]
                image = Summary.Image(height=h, width=w, colorspace=3, encoded_image_string=_gif(frames, fps))
                self._tb._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=key, image=image)]), step)
                self._tb.flush()

    def summary(self, values: Mapping[str, float]) -> None:
        """Final numbers of the run (W&B run summary; TensorBoard has none: they are logged as scalars too)."""
        if self._wandb is not None:
            for key, value in values.items():
                self._wandb.summary[key] = value

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def __enter__(self) -> Tracking:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the trackers ---------------------------------------------------------------------------
    def _start_tensorboard(self, step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        log_dir = self.root / "tensorboard"
        # events of steps after the one resumed from were logged by the interrupted run and are logged again now
        purge = step + 1 if self.purge and step > 0 else None
        self._tb = SummaryWriter(log_dir=str(log_dir), purge_step=purge)
        self.notes.append(f"tensorboard: {log_dir} (tensorboard --logdir {log_dir})")

    def _start_wandb(self) -> None:
        import wandb

        state_path = self.root / STATE_FILE
        state = _read_state(state_path)
        record = state.get("wandb") if isinstance(state.get("wandb"), dict) else {}
        run_id = record.get("id") or _new_run_id()
        project = os.environ.get("WANDB_PROJECT") or record.get("project") or "robodual"
        mode = os.environ.get("WANDB_MODE") or ("online" if _wandb_logged_in() else "offline")
        if record.get("id") != run_id or record.get("project") != project:
            from robodual_core.io import atomic_write_json

            state["wandb"] = {"id": run_id, "project": project}
            atomic_write_json(state_path, state)
        run = wandb.init(project=project, id=run_id, resume="allow", dir=str(self.root), mode=mode,
                         name=self.root.resolve().name, job_type=self.job, config=self.config or None,
                         settings=wandb.Settings(silent=True, console="off"))
        run.define_metric("step")
        run.define_metric("*", step_metric="step")
        self._wandb = run
        where = getattr(run.settings, "sync_dir", None) or (self.root / "wandb")
        self.notes.append(f"wandb: run {run_id} ({mode})" + (f", {where}; upload with `wandb sync {where}`"
                                                             if mode == "offline" else ""))


def open_tracking(names: list[str], root: str | Path, job: str, prefix: str = "",
                  config: Mapping[str, Any] | None = None, purge: bool = True) -> Tracking | None:
    """A :class:`Tracking` when ``names`` asks for trackers, else None."""
    return Tracking(names, root, job, prefix=prefix, config=config, purge=purge) if names else None


def log_eval(names: list[str], policy: str | Path | None, out: Path, results: Mapping[str, Any], name: str,
             videos: Iterable[Path] = ()) -> list[str]:
    """Log an evaluation's ``results`` (what it wrote to ``out/results.json``) and its videos.

    The trackers are those of the policy's run folder (the same W&B run and TensorBoard folder as its training,
    at the step of the checkpoint evaluated) when the policy is a run or checkpoint folder with a config.json;
    else of ``out``. Keys: ``eval/<name>/<key>``. Returns the trackers' notes (where their files are)."""
    if not names:
        return []
    root, step = out, 0
    if policy:
        candidate = run_root(Path(policy))
        if (candidate / "config.json").is_file() and candidate.is_dir():
            root = candidate
            step = _checkpoint_step(Path(policy))
    drop = {"episodes", "step", "seed", "workers", "batch"}
    values = scalars({k: v for k, v in results.items() if k not in drop})
    with Tracking(names, root, job="eval", purge=False) as tracking:
        tracking.log(values, step=step, prefix=f"eval/{name}/")
        for i, video in enumerate(sorted(Path(v) for v in videos)):
            tracking.log_video(f"eval/{name}/video/{video.stem or i}", video, step=step)
        tracking.summary({f"eval/{name}/{k}": v for k, v in values.items()})
        return tracking.notes


def _checkpoint_step(policy: Path) -> int:
    """The training step of the checkpoint a policy path names (a run folder: its latest), else 0."""
    from robodual_core.checkpoint import checkpoint_steps

    if policy.parent.name == "checkpoints" and policy.name.isdigit():
        return int(policy.name)
    steps = checkpoint_steps(policy)
    return steps[-1] if steps else 0


def _new_run_id() -> str:
    """A W&B run id as wandb makes them (8 characters of [a-z0-9])."""
    import secrets
    import string

    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def _read_state(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        raise RobodualError(f"'{path}' is not valid JSON; expected the run's tracker ids ({{\"wandb\": {{\"id\": "
                            "...}}}}); delete it to start a new W&B run") from None
    if not isinstance(state, dict):
        raise RobodualError(f"'{path}' holds a {type(state).__name__}; expected a JSON object of tracker ids")
    return state


def _wandb_logged_in() -> bool:
    """An API key is at hand (``WANDB_API_KEY`` or a ``wandb login`` entry in ~/.netrc), read without a network
    call."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    import netrc

    host = (os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _read_frames(path: Path, max_frames: int = 120) -> list[Any]:
    """RGB frames (uint8 [H, W, 3]) of a gif (Pillow) or mp4 (PyAV), at most ``max_frames`` evenly spaced."""
    import numpy as np

    frames: list[Any] = []
    try:
        if path.suffix.lower() == ".gif":
            from PIL import Image, ImageSequence

            with Image.open(path) as im:
                frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)]
        else:
            import av

            with av.open(str(path)) as container:
                frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except (ImportError, OSError, ValueError) as exc:
        warnings.warn(f"video '{path}' not sent to TensorBoard: {exc}", stacklevel=3)
        return []
    if len(frames) > max_frames:
        idx = np.linspace(0, len(frames) - 1, max_frames).round().astype(int)
        frames = [frames[i] for i in idx]
    return frames


def _gif(frames: list[Any], fps: int) -> bytes:
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / max(fps, 1)),
                   loop=0)
    return buf.getvalue()


def tell(notes: Iterable[str]) -> None:
    """Where the trackers' files are, one line each on stderr."""
    from rich.console import Console

    console = Console(stderr=True, soft_wrap=True)
    for note in notes:
        console.print(note, markup=False, highlight=False)


def fit_tracked(trainer: Any, names: list[str], job: str, resume: bool = False) -> dict[str, float]:
    """``trainer.fit(resume)`` with the trackers ``names`` fed every metrics.jsonl record (keys ``train/...``),
    under the run's resolved config."""
    tracking = open_tracking(names, trainer.run_dir, job, prefix="train/", config=_run_config(trainer.run_dir))
    if tracking is None:
        return trainer.fit(resume=resume)
    trainer.metric_sinks.append(tracking)
    try:
        return trainer.fit(resume=resume)
    finally:
        tracking.close()
        tell(tracking.notes)


def _run_config(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "config.json"
    try:
        config = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}
