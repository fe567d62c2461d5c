"""What both studies share: the study folder (frozen config, progress file, resumable stages), Wilson
intervals, task validation and the specialist configs.

A study folder holds ``study.json`` (which study, its resolved config, the git commit it started at) and
``progress.json`` (one record per finished stage: seconds, units of work, anything the stage printed as
JSON). A stage recorded there is skipped on rerun; a stage interrupted half-way is redone (training runs
continue from their latest checkpoint, data generation from its last committed episode). Both files are
written atomically. The config is fixed when the folder is created: a rerun with another config is
refused, so evaluation seeds and budgets cannot be changed after results are seen.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from robodual_cli.console import err
from robodual_core.bench import cpu_model
from robodual_core.errors import RobodualError
from robodual_core.io import atomic_write_json
from robodual_core.outputs import check_output, remove_output

FORMAT = 1
Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% by default); ``(0, 1)`` when ``n == 0``."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"wilson_interval: expected 0 <= successes <= n, found successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def robodual(*args: str) -> list[str]:
    return [sys.executable, "-m", "robodual_cli.app", *args]


def git_commit(cwd: Path | None = None) -> str:
    """``HEAD`` of the repository holding this code, with ``+dirty`` when tracked files differ from it."""
    here = cwd or Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "unknown (not a git checkout)"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=30)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown (git not available)"


def resolve_tasks(spec: list[str], flag: str) -> list[str]:
    """``mt10``/``mt50`` or Meta-World task names (``-v3`` optional) -> validated names, order kept: the
    Meta-World plugin's own resolution, reached through the registry."""
    from robodual_core.plugins import registry

    return registry("envs").get("metaworld").resolve_tasks(list(spec), flag)


class StudyFolder:
    """One study's folder: frozen config, progress of its stages, subprocess stages that are skipped when done."""

    # experiment trackers (--log) passed to every train/eval stage; each stage logs to its own run folder, and the
    # W&B runs of one study share a group (WANDB_RUN_GROUP); not part of the frozen config
    log: tuple[str, ...] = ()

    def __init__(self, root: Path, study: str, config: dict[str, Any], overwrite: bool = False,
                 defaults: dict[str, Any] | None = None, inputs: tuple[Path, ...] = ()) -> None:
        # defaults: the config class's defaults; a key added to it after the folder was started is accepted at
        # its default value (and recorded), so a study started by older code still resumes
        self.root, self.study, self.config, self.defaults = root, study, config, defaults or {}
        self.meta_path, self.progress_path = root / "study.json", root / "progress.json"
        self.logs = root / "logs"
        self.ran: list[str] = []  # stages run (not skipped) by this invocation
        self._commit_noted = False
        # a folder (not a file), never an input (ablations' --from), inside one or holding one
        check_output(root, flag="--out", expect="folder", inputs=inputs)
        if overwrite and root.exists():
            self._clear()
        self._open()

    # -- folder ------------------------------------------------------------------------------------
    def _clear(self) -> None:
        # study.json is the study folder's marker: nothing else is deleted
        remove_output(self.root, legacy=lambda p: (p / "study.json").is_file(), what="a study folder")

    def _read_json(self, path: Path, what: str) -> Any:
        try:
            return json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise RobodualError(f"{what} '{path}' is unreadable or corrupt ({type(exc).__name__}); expected JSON "
                                f"written by robodual study; delete the folder or pass --overwrite") from None

    def _open(self) -> None:
        if self.meta_path.is_file():
            meta = self._read_json(self.meta_path, "study file")
            if not isinstance(meta, dict) or "study" not in meta or not isinstance(meta.get("config"), dict):
                raise RobodualError(f"study file '{self.meta_path}': expected an object with 'study' and 'config', "
                                    f"found {str(meta)[:80]}; delete the folder or pass --overwrite")
            if meta["study"] != self.study:
                raise RobodualError(f"--out '{self.root}' holds a '{meta['study']}' study, not '{self.study}'; "
                                    "use another --out")
            self.progress = self._load_progress()  # a damaged progress file is named before any other mismatch
            added = {k: v for k, v in self.config.items()
                     if k not in meta["config"] and k in self.defaults and self.defaults[k] == v}
            if added and {**meta["config"], **added} == self.config:
                meta["config"] = self.config
                meta["added_keys"] = {**meta.get("added_keys", {}), **added}
                atomic_write_json(self.meta_path, meta)
            if meta["config"] != self.config:
                changed = sorted(k for k in set(meta["config"]) | set(self.config)
                                 if meta["config"].get(k) != self.config.get(k))
                raise RobodualError(f"--out '{self.root}' was started with another config (differs in "
                                    f"{', '.join(changed)}); the config is fixed when a study starts, so its seeds "
                                    "and budgets cannot change after results are seen: use another --out or "
                                    "--overwrite")
            self.meta = meta
        else:
            if self.root.exists() and any(self.root.iterdir()):
                raise RobodualError(f"--out '{self.root}' is not empty and holds no study.json; use an empty or new "
                                    "folder")
            self.root.mkdir(parents=True, exist_ok=True)
            self.meta = {"study": self.study, "format": FORMAT, "config": self.config, "git_commit": git_commit(),
                         "cpu": cpu_model(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
            atomic_write_json(self.meta_path, self.meta)
            self.progress = self._load_progress()

    def _load_progress(self) -> dict[str, dict[str, Any]]:
        if not self.progress_path.exists():
            return {}
        data = self._read_json(self.progress_path, "progress file")
        stages = data.get("stages") if isinstance(data, dict) else None
        if not isinstance(stages, dict) or not all(isinstance(v, dict) and "seconds" in v for v in stages.values()):
            raise RobodualError(f"progress file '{self.progress_path}': expected {{\"stages\": {{name: {{\"seconds\": "
                                f"...}}}}}}, found {str(data)[:80]}; delete it to redo every stage, or pass "
                                "--overwrite")
        return stages

    # -- stages ------------------------------------------------------------------------------------
    def done(self, name: str) -> bool:
        return name in self.progress

    def record(self, name: str) -> dict[str, Any]:
        return self.progress[name]

    def _note_commit(self) -> None:
        """Before each stage runs: the report names every commit and CPU model that ran stages of this study (a
        rerun that only rewrites the report names none). Asked of git before every stage, not once per invocation: a stage is a
        subprocess that imports the code on disk, so a commit (or an edit) made while a long study runs changes
        the stages after it, and the study records that too (``"during": true``)."""
        commit, cpu = git_commit(), cpu_model()
        seen = [self.meta, *self.meta.get("resumed", [])]
        last_cpu = next((r["cpu"] for r in reversed(seen) if "cpu" in r), None)  # older folders name none
        if commit != seen[-1]["git_commit"] or (last_cpu is not None and cpu != last_cpu):
            entry = {"git_commit": commit, "cpu": cpu, "at": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
            if self._commit_noted:
                entry["during"] = True  # the code changed under this invocation, between two of its stages
            self.meta["resumed"] = [*self.meta.get("resumed", []), entry]
            atomic_write_json(self.meta_path, self.meta)
        self._commit_noted = True

    def mark(self, name: str, **info: Any) -> None:
        self.progress[name] = info
        atomic_write_json(self.progress_path, {"study": self.study, "stages": self.progress})

    def run(self, name: str, cmd: list[str], threads: int = 1, units: float | None = None, kind: str = "",
            json_stdout: bool = False, work: Any = None, run_dir: Path | None = None) -> dict[str, Any]:
        """Run ``cmd`` (a ``robodual`` command) unless stage ``name`` is done; returns its progress record.

        ``run_dir``: the training run the stage writes; one without a checkpoint is started again.
        ``work()``, called after the stage, gives the seconds of its own work (training loop, simulated
        episodes) as the stage measured them, so the rest is start-up and I/O (used by the time estimate)."""
        if self.done(name):
            err.print(f"[green]✓[/] {name}: done already")
            return self.record(name)
        if run_dir is not None and run_dir.exists() and not has_checkpoint(run_dir):
            # interrupted before its first checkpoint: nothing to resume, and its metrics would count twice
            shutil.rmtree(run_dir)
            cmd = [c for c in cmd if c != "--resume"]
        self._note_commit()
        if self.log and len(cmd) > 3 and cmd[3] in ("train", "eval"):
            cmd = [*cmd, "--log", ",".join(self.log)]
        shown = " ".join(shlex.quote(c) for c in ["robodual", *cmd[3:]])
        err.print(f"[bold cyan]▶ {name}[/]\n  $ {shown}")
        self.logs.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"),
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads))}
        if self.log:
            env.setdefault("WANDB_RUN_GROUP", f"{self.study}-{self.root.resolve().name}")
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        log = self.logs / f"{name.replace(' ', '_').replace('/', '_')}.txt"
        log.write_text(f"$ {shown}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
        if proc.returncode != 0:
            tail = (proc.stderr or "").strip().splitlines()[-1:] or ["(no output)"]
            raise RobodualError(f"study stage '{name}' failed (exit {proc.returncode}): {tail[0]}; log: {log}")
        info: dict[str, Any] = {"seconds": seconds, "kind": kind or name.split()[0], "units": units}
        if json_stdout:
            try:
                info["output"] = json.loads(proc.stdout.strip().splitlines()[-1])
            except (ValueError, IndexError):
                raise RobodualError(f"study stage '{name}': expected a JSON summary on stdout; log: {log}") from None
        if work is not None:
            info["work_seconds"] = float(work())
        self.mark(name, **info)
        self.ran.append(name)
        err.print(f"  [green]done[/] in {seconds:.0f} s")
        return info

    def compute(self, name: str, fn: Any) -> Any:
        """An in-process stage (e.g. a check over finished results), recorded like the others."""
        if self.done(name):
            return self.record(name).get("output")
        self._note_commit()
        t0 = time.perf_counter()
        output = fn()
        self.mark(name, seconds=time.perf_counter() - t0, kind="check", units=None, output=output)
        self.ran.append(name)
        return output


# -- training configs -----------------------------------------------------------------------------------
def small_vit(key: str, image_size: int, width: int, depth: int) -> dict[str, Any]:
    # no pretrained weights can be downloaded: a small trainable ViT replaces the paper's frozen DINO ViT-S/16
    return {"name": key, "options": {"backbone": "vit", "image_size": image_size, "width": width, "depth": depth,
                                     "heads": 4, "head_dim": width // 4}}


def specialist_config(cfg: Any, store: Path | None, steps: int, seed: int) -> dict[str, Any]:
    """The study's specialist (the demo's: DiT at CPU width, two cameras, proprio); ``store`` adds the
    instruction-embedding sensor (the specialist-only variant)."""
    sensors = [small_vit("rgb_static", cfg.image_size, cfg.encoder_width, cfg.encoder_depth),
               small_vit("rgb_gripper", cfg.image_size, cfg.encoder_width, cfg.encoder_depth)]
    if store is not None:
        sensors.append({"name": "language", "options": {"store": str(store)}})
    return {
        # the paper's conditioning sources, pinned: the studies' arms ("dual", "dual_paper", the ablations' base)
        # are defined against it, whatever the library default is (issue 30 changed it to "actions")
        "model": {"hidden": cfg.specialist_hidden, "depth": cfg.specialist_depth, "heads": 4, "sensors": sensors,
                  "generalist_inputs": "both"},
        "data": {"image_size": None, "val_ratio": cfg.val_ratio},
        "trainer": {"steps": steps, "batch_size": cfg.batch_size, "num_workers": 0, "lr": 3e-4,
                    "warmup_steps": min(100, max(1, steps // 10)), "ckpt_every": min(500, steps), "seed": seed,
                    "ema_decay": 0.995},
    }


def specialist_sets(cfg: Any, key: str = "specialist_set") -> list[str]:
    """``--set`` options for ``train specialist`` from the study's ``specialist_set`` list (ablations), or
    another list key of the config (``dual_set``)."""
    out: list[str] = []
    for item in getattr(cfg, key):
        if "=" not in item:
            raise RobodualError(f"config key '{key}': expected items like 'model.conditioner=film', "
                                f"found '{item}'")
        out += ["--set", item]
    return out


def eval_stage(study: StudyFolder, name: str, policy: Path, kind: str, out: Path, tasks: list[str],
               cfg: Any, extra: list[str] | None = None) -> dict[str, Any]:
    """Stage ``name``: ``eval metaworld`` of ``policy`` on the study's fixed placements (``cfg``'s eval_episodes,
    eval_seed, max_steps, workers, eval_batch); returns its results (:func:`read_results`)."""
    study.run(name, robodual(
        "eval", "metaworld", "--policy", str(policy), "--kind", kind, "--tasks", ",".join(tasks), "--episodes",
        str(cfg.eval_episodes), "--seed", str(cfg.eval_seed), "--max-steps", str(cfg.max_steps),
        "--workers", str(cfg.workers), "--batch", str(cfg.eval_batch), "--out", str(out), "--videos", "0",
        *latency_flags(cfg), *(extra or [])),
        units=cfg.eval_episodes * len(tasks) * cfg.max_steps, kind="eval",
        work=lambda: eval_work_seconds(out / "results.json"))
    return read_results(out / "results.json")


def latency_flags(cfg: Any) -> list[str]:
    """``--latency`` of a study's evaluations (config key ``latency``; none at zero, as before the key existed)."""
    latency = getattr(cfg, "latency", None)
    if latency is None or (latency.generalist == 0 and latency.specialist == 0):
        return []
    return ["--latency", f"generalist={latency.generalist},specialist={latency.specialist}"]


def finetune_stage(study: StudyFolder, name: str, init: Path, store: Path, out: Path, steps: int, cfg: Any) -> None:
    """Stage ``name``: the generalist in ``init`` fine-tuned on ``store`` (``train generalist --init``) for
    ``steps`` at ``cfg``'s batch size, seed and thread count; resumable like every training stage."""
    if out.exists() and not has_checkpoint(out):  # interrupted before its first checkpoint: start it again
        shutil.rmtree(out)
    study.run(name, robodual(
        "train", "generalist", "--dataset", str(store), "--out", str(out),
        *(["--init", str(init)] if not (out / "config.json").is_file() else []),
        "--steps", str(steps), "--set", f"trainer.batch_size={cfg.batch_size}", "--set", "trainer.num_workers=0",
        "--set", f"trainer.ckpt_every={min(500, steps)}", "--set", f"data.val_ratio={cfg.val_ratio}",
        "--set", f"trainer.seed={cfg.generalist_seed}", *resume_flag(out)), threads=cfg.threads,
        units=steps * cfg.batch_size, kind="train_generalist", run_dir=out,
        work=lambda: training_seconds(out, cfg.batch_size))


def has_checkpoint(run_dir: Path) -> bool:
    ckpts = run_dir / "checkpoints"
    return ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir())


def resume_flag(run_dir: Path) -> list[str]:
    return ["--resume"] if (run_dir / "config.json").is_file() else []


def training_seconds(run_dir: Path, batch_size: int, up_to_step: int | None = None) -> float:
    """Seconds of optimizer steps up to ``up_to_step``, from metrics.jsonl (samples/s of each logged interval):
    the training loop's own time, without process start-up, data loading at start or checkpoint writes."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return float("nan")
    total, prev = 0.0, 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        step, rate = int(rec["step"]), float(rec.get("samples_per_s") or 0.0)
        last = step if up_to_step is None else min(step, up_to_step)  # a checkpoint inside a logged interval
        if rate > 0 and last > prev:
            total += (last - prev) * batch_size / rate
        if up_to_step is not None and step >= up_to_step:
            break
        prev = step
    return total


def read_results(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    return {"success_rate": data["success_rate"],
            "tasks": {t: {"successes": r["successes"], "episodes": r["episodes"]} for t, r in data["tasks"].items()},
            "seeds": sorted({int(e["seed"]) for e in data["episodes"]}),
            "episodes": len(data["episodes"]), "successes": int(sum(e["success"] for e in data["episodes"]))}


def eval_work_seconds(results: Path) -> float:
    data = json.loads(results.read_text())
    return float(sum(e["policy_s"] + e["env_s"] for e in data["episodes"]))


def generate_work_seconds(store: Path) -> float:
    attrs = json.loads((store / "zarr.json").read_text()).get("attributes", {})
    return float((attrs.get("generation") or {}).get("seconds", float("nan")))


def store_episode_seeds(store: Path) -> list[int]:
    """The placement seeds of a generated store's episodes (``generation.episode_seeds`` in its attributes)."""
    attrs = json.loads((store / "zarr.json").read_text()).get("attributes", {})
    return [int(s) for s in (attrs.get("generation") or {}).get("episode_seeds", [])]


def episode_rows(results: Path, policy: str, seed: int, **extra: Any) -> list[dict[str, Any]]:
    """One row per evaluated episode of ``results`` (an ``eval metaworld`` results.json): what a reader needs to
    recompute every number of a report (policy, training seed, task, placement seed, success, steps)."""
    data = json.loads(Path(results).read_text())
    return [{"policy": policy, "seed": seed, "task": e["task"], "placement": int(e["seed"]),
             "success": bool(e["success"]), "steps": int(e["length"]), **extra} for e in data["episodes"]]


def write_episode_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """``rows`` as JSON lines, written atomically (the per-episode results committed beside a report)."""
    from robodual_core.io import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
