"""Scripted-expert demonstrations of Meta-World tasks, written as a robodual Zarr store.

Each episode slot ``(task, i)`` gets its own seed (independent of task order and worker count); a slot
whose expert fails is retried with a new placement, up to ``max_attempts`` times, so only successful
episodes are kept. With ``action_noise > 0`` the executed action is the expert's plus Gaussian noise
while the recorded ``action`` stays the expert's clean one (DART-style): the data visits states the
expert alone would not, and the labels still say how to recover.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robodual_core.errors import RobodualError
from robodual_envs.metaworld.env import CAMERA_KEYS, DEFAULT_MAX_STEPS, MetaWorldEnv
from robodual_envs.metaworld.parallel import ordered_map
from robodual_envs.metaworld.tasks import episode_seed, resolve_tasks

ACTION_SPACE = {
    "type": "continuous",
    "dim": 4,
    "components": ["dx", "dy", "dz", "gripper"],
    "range": [-1.0, 1.0],
    "frame": "end-effector position delta in the world frame; 1.0 = 1 cm per step",
    "gripper": "gripper effort: +1 closes, -1 opens",
}
PROPRIO_LAYOUT = ["hand_x", "hand_y", "hand_z", "gripper_opening", "joint_0", "joint_1", "joint_2", "joint_3",
                  "joint_4", "joint_5", "joint_6"]


@dataclass
class GenerateOptions:
    tasks: list[str] = field(default_factory=lambda: ["mt10"])
    episodes_per_task: int = 10
    image_size: int = 128
    cameras: list[str] = field(default_factory=lambda: ["corner2", "gripperPOV"])
    depth: bool = False
    seed: int = 0
    max_steps: int = DEFAULT_MAX_STEPS
    action_noise: float = 0.0
    max_attempts: int = 5

    def env_kwargs(self) -> dict[str, Any]:
        return {"task": self.tasks[0], "image_size": self.image_size, "cameras": list(self.cameras),
                "depth": self.depth, "seed": self.seed, "max_steps": self.max_steps}


def modalities(options: GenerateOptions) -> dict[str, str]:
    mods: dict[str, str] = {}
    for role, _ in zip(CAMERA_KEYS, options.cameras, strict=False):
        mods[f"rgb_{role}"] = "rgb"
        if options.depth:
            mods[f"depth_{role}"] = "depth"
    mods.update({"proprio": "proprio", "state": "lowdim", "action": "action"})
    return mods


# -- one episode (runs in a worker process) ----------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _init_worker(options: GenerateOptions) -> None:
    _WORKER.clear()
    _WORKER["options"] = options


def _close_worker() -> None:
    env = _WORKER.pop("env", None)
    if env is not None:  # release EGL contexts before the interpreter tears down (else EGL errors at exit)
        env.close()
    _WORKER.clear()


def _env() -> MetaWorldEnv:
    if "env" not in _WORKER:
        _WORKER["env"] = MetaWorldEnv(**_WORKER["options"].env_kwargs())
    return _WORKER["env"]


def record_expert_episode(env: MetaWorldEnv, task: str, seed: int, action_noise: float = 0.0) -> dict[str, Any]:
    """Run the scripted expert once from placement ``seed``; returns arrays ``{key: [T, ...]}`` and outcome."""
    from robodual_envs.metaworld.expert import expert_action, expert_for

    expert = expert_for(task)
    rng = np.random.default_rng(seed)
    obs = env.reset(task, seed)
    frames: dict[str, list[np.ndarray]] = {k: [] for k in obs.arrays}
    actions: list[np.ndarray] = []
    done = False
    info: dict[str, Any] = {"success": False}
    while not done:
        action = expert_action(expert, env.state)
        for key, value in obs.arrays.items():
            frames[key].append(value)
        actions.append(action)
        executed = action if action_noise <= 0 else np.clip(action + rng.normal(0.0, action_noise, 4), -1, 1)
        obs, _, done, info = env.step(executed)
    arrays = {key: np.stack(values) for key, values in frames.items()}
    arrays["action"] = np.stack(actions).astype(np.float32)
    return {"arrays": arrays, "instruction": obs.instruction, "success": bool(info["success"]),
            "steps": len(actions)}


def _generate_slot(job: tuple[str, int]) -> dict[str, Any]:
    """Episode slot ``(task, i)``: retry new placements until the expert succeeds (or give up)."""
    task, index = job
    options: GenerateOptions = _WORKER["options"]
    env = _env()
    start = time.perf_counter()
    steps = 0
    for attempt in range(options.max_attempts):
        seed = episode_seed(options.seed, task, index, salt=0, attempt=attempt)
        result = record_expert_episode(env, task, seed, options.action_noise)
        steps += result["steps"]
        if result["success"]:
            result.update(task=task, index=index, seed=seed, attempts=attempt + 1, sim_steps=steps,
                          seconds=time.perf_counter() - start)
            return result
    return {"task": task, "index": index, "success": False, "attempts": options.max_attempts, "sim_steps": steps,
            "seconds": time.perf_counter() - start}


# -- the whole dataset ---------------------------------------------------------------------------------
def generate_dataset(out: str | Path, options: GenerateOptions | None = None, workers: int = 1,
                     overwrite: bool = False, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Write ``options.episodes_per_task`` successful expert episodes of each task to the store ``out``.

    Returns a summary: episodes, steps, failed slots, attempts, seconds and recorded steps per second.
    """
    from robodual_core.data import DatasetWriter

    options = options or GenerateOptions()
    options.tasks = resolve_tasks(options.tasks)
    options.cameras = list(options.cameras)
    if options.episodes_per_task < 1:
        raise RobodualError(f"--episodes-per-task: expected a positive number, found {options.episodes_per_task}")
    if options.action_noise < 0:
        raise RobodualError(f"--action-noise: expected a standard deviation >= 0, found {options.action_noise}")
    if workers < 1:
        raise RobodualError(f"--workers: expected a positive number of processes, found {workers}")
    MetaWorldEnv(**options.env_kwargs()).close()  # validates cameras and sizes before anything is written

    from importlib.metadata import version

    settings = {**asdict(options), "proprio": PROPRIO_LAYOUT, "metaworld": version("metaworld")}
    writer = DatasetWriter(out, fps=MetaWorldEnv.fps, modalities=modalities(options), action_space=ACTION_SPACE,
                           overwrite=overwrite, resume=resume,
                           attrs={"source": "metaworld", "generator": settings})
    # slots episode-major, so an interrupted store already covers every task
    slots = [(task, i) for i in range(options.episodes_per_task) for task in options.tasks]
    done_slots, seeds = _resume_point(writer)
    summary = {"episodes": writer.num_episodes, "steps": writer.num_steps, "failed_slots": [], "attempts": 0,
               "sim_steps": 0}
    start = time.perf_counter()
    with _progress(progress) as bar:
        job = bar.add_task("Meta-World demos", total=len(slots), completed=done_slots)
        results = ordered_map(_generate_slot, slots[done_slots:], workers, _init_worker, (options,),
                              finalizer=_close_worker)
        for n, result in enumerate(results, start=done_slots + 1):
            summary["attempts"] += result["attempts"]
            summary["sim_steps"] += result["sim_steps"]
            if result["success"]:
                writer.add_episode(result["arrays"], instruction=result["instruction"], task=result["task"])
                seeds.append(result["seed"])
                summary["episodes"] += 1
                summary["steps"] += result["steps"]
            else:
                summary["failed_slots"].append([result["task"], result["index"]])
            writer.set_attrs(generator_progress={"slots_done": n, "episodes": writer.num_episodes,
                                                 "episode_seeds": seeds})
            bar.update(job, completed=n, description=f"Meta-World demos ({result['task']})")
    seconds = time.perf_counter() - start
    # simulated steps include failed attempts; every one of them was rendered
    summary.update(seconds=seconds, sim_steps_per_s=summary["sim_steps"] / max(seconds, 1e-9))
    writer.set_attrs(generation={**{k: v for k, v in summary.items() if k != "steps"}, "episode_seeds": seeds})
    summary["path"] = str(writer.finalize())
    return summary


def _resume_point(writer: Any) -> tuple[int, list[int]]:
    """Slots already handled in a resumed partial store and the placement seeds of its episodes.

    ``generator_progress`` is written after each slot; a crash between an episode's commit and that write
    leaves exactly one committed episode more than it records (its seed is then unknown: recorded as -1).
    """
    progress = dict(writer.root.attrs.get("generator_progress") or {})
    recorded = int(progress.get("episodes", 0))
    extra = writer.num_episodes - recorded
    seeds = [int(s) for s in progress.get("episode_seeds", [])][:recorded] + [-1] * extra
    return int(progress.get("slots_done", 0)) + extra, seeds


def _progress(enabled: bool) -> Any:
    from robodual_core.progress import progress_bar

    return progress_bar(enabled)
