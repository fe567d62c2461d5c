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
from robodual_envs.metaworld.env import CAMERA_KEYS, DEFAULT_MAX_STEPS, MetaWorldEnv, check_env_flags
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
    visual: str = "default"  # MetaWorldEnv's visual: "random" gives each episode its own lighting

    def env_kwargs(self) -> dict[str, Any]:
        return {"task": self.tasks[0], "image_size": self.image_size, "cameras": list(self.cameras),
                "depth": self.depth, "seed": self.seed, "max_steps": self.max_steps, "visual": self.visual}


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
    from robodual_core.progress import progress_bar

    options = options or GenerateOptions()
    options.tasks = resolve_tasks(options.tasks)
    options.cameras = list(options.cameras)
    if options.episodes_per_task < 1:
        raise RobodualError(f"--episodes-per-task: expected a positive number, found {options.episodes_per_task}")
    if not options.action_noise >= 0 or not np.isfinite(options.action_noise):
        raise RobodualError(f"--action-noise: expected a finite standard deviation >= 0, found {options.action_noise}")
    if options.max_attempts < 1:
        raise RobodualError(f"--max-attempts: expected a positive number of placements per slot, found "
                            f"{options.max_attempts}")
    check_env_flags(options.image_size, options.max_steps)
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
    state = _resume_point(writer, len(slots))
    start = time.perf_counter() - state["seconds"]
    with progress_bar(progress) as bar:
        job = bar.add_task("Meta-World demos", total=len(slots), completed=state["slots_done"])
        results = ordered_map(_generate_slot, slots[state["slots_done"]:], workers, _init_worker, (options,),
                              finalizer=_close_worker)
        for result in results:
            state = {**state, "slots_done": state["slots_done"] + 1,
                     "attempts": state["attempts"] + result["attempts"],
                     "sim_steps": state["sim_steps"] + result["sim_steps"],
                     "seconds": time.perf_counter() - start}
            if result["success"]:
                state.update(episodes=state["episodes"] + 1, steps=state["steps"] + result["steps"],
                             episode_seeds=[*state["episode_seeds"], result["seed"]])
                # the slot's counters go in before its episode commits, as pending: a crash between the two
                # leaves a store whose episode count says which of the two records holds
                writer.set_attrs(generator_pending=state)
                writer.add_episode(result["arrays"], instruction=result["instruction"], task=result["task"])
            else:
                state["failed_slots"] = [*state["failed_slots"], [result["task"], result["index"]]]
            writer.set_attrs(generator_progress=state, generator_pending=None)
            bar.update(job, completed=state["slots_done"], description=f"Meta-World demos ({result['task']})")
    # counters cover every segment of a resumed run; simulated steps include failed attempts (all rendered)
    seconds = time.perf_counter() - start
    summary = {"episodes": state["episodes"], "steps": state["steps"], "failed_slots": state["failed_slots"],
               "attempts": state["attempts"], "sim_steps": state["sim_steps"], "seconds": seconds,
               "sim_steps_per_s": state["sim_steps"] / max(seconds, 1e-9)}
    writer.set_attrs(generation={**{k: v for k, v in summary.items() if k != "steps"},
                                 "episode_seeds": state["episode_seeds"]})
    for name in ("generator_progress", "generator_pending"):  # resume bookkeeping: not part of the dataset
        if name in writer.root.attrs:
            del writer.root.attrs[name]
    summary["path"] = str(writer.finalize())
    return summary


_FRESH = {"slots_done": 0, "episodes": 0, "steps": 0, "attempts": 0, "sim_steps": 0, "seconds": 0.0,
          "failed_slots": [], "episode_seeds": []}


def _resume_point(writer: Any, total_slots: int) -> dict[str, Any]:
    """The generation counters of the slots already handled in a resumed partial store (zeros when new).

    ``generator_progress`` holds the counters after the last finished slot; a successful slot also writes
    its counters as ``generator_pending`` before its episode commits. So the store's committed episode count
    matches exactly one of the two, and whatever it holds beyond that (an uncommitted tail) the writer drops.
    """
    attrs = writer.root.attrs
    candidates = [dict(attrs.get("generator_pending") or {}), dict(attrs.get("generator_progress") or _FRESH)]
    for state in candidates:
        if set(_FRESH) <= set(state) and int(state["episodes"]) == writer.num_episodes:
            if int(state["steps"]) != writer.num_steps or not 0 <= int(state["slots_done"]) <= total_slots:
                break
            return {**_FRESH, **state}
    found = {name: dict(attrs.get(name) or {}).get("episodes") for name in ("generator_progress", "generator_pending")}
    raise RobodualError(f"cannot resume '{writer.partial}': it holds {writer.num_episodes} committed episodes but "
                        f"its generation counters record {found}; pass --overwrite to start again")

