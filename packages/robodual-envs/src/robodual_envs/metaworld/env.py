"""Meta-World as a robodual :class:`~robodual_core.interfaces.Environment`.

Observation arrays (canonical dataset keys):

- ``rgb_static``  [H, W, 3] uint8: the ``corner2`` camera (or the first of ``cameras``), flipped on both
  axes because Meta-World's corner cameras render upside down;
- ``rgb_gripper`` [H, W, 3] uint8: the wrist camera ``gripperPOV`` (the second of ``cameras``);
- ``depth_static`` / ``depth_gripper`` [H, W] float32 in metres, clipped to ``depth_max`` (only with ``depth=True``);
- ``proprio`` [11] float32: hand xyz (m), gripper opening (0 closed .. 1 open), the 7 arm joint angles (rad);
- ``state`` [39] float32: Meta-World's full state vector (hand, object poses, previous frame, goal). Policies
  that learn from pixels must not use it; the scripted expert does.

Actions are 4-D in [-1, 1]: end-effector xyz delta (1 = 1 cm per step) and gripper effort (+1 closes).
Object placements are drawn from the task's own random reset space with a generator seeded by ``seed``:
the same seed gives the same placement, and unlike ``metaworld.MT10`` (50 fixed placements per task)
there is no limit on how many distinct placements a dataset or an evaluation sees.
Rendering is the fast setting: no multisampling, shadows, reflections or skybox.

Two distribution shifts for generalization studies (paper Table 3's spirit), both off by default:

- ``visual``: "default" (Meta-World's scene), "random" (each episode's lights get a brightness in [0.6, 1.4] and
  a colour cast of [0.8, 1.2] per channel, drawn from the episode seed: the visual variety of a broad corpus) or
  "shift" (one fixed dim, warm lighting inside the random range: a change a broad corpus covers and plain
  demonstrations do not);
- ``placement_scale``: the task's reset space (object and goal placements) widened (> 1) around its centre, so
  evaluation placements can lie outside every demonstration's range.
"""

from __future__ import annotations

import os
import threading
import warnings
from typing import Any

import numpy as np

from robodual_core.errors import RobodualError
from robodual_core.interfaces import Environment, EnvSpec, StepObservation
from robodual_envs.metaworld.tasks import MT10, instruction_for, resolve_tasks

# mujoco picks its GL backend when first imported; headless machines need EGL (or osmesa, if the user says so).
os.environ.setdefault("MUJOCO_GL", "egl")

CAMERA_KEYS = ("static", "gripper")
PROPRIO_DIM = 11
STATE_DIM = 39
ACTION_DIM = 4
DEFAULT_MAX_STEPS = 250
VISUALS = ("default", "random", "shift")
SHIFT_LIGHT = (0.7 * 1.15, 0.7 * 0.95, 0.7 * 0.82)  # brightness 0.7 x a warm cast, inside the random range
CAMERAS = ("topview", "corner", "corner2", "corner3", "corner4", "behindGripper", "gripperPOV")


def check_env_flags(image_size: int, max_steps: int) -> None:
    """``--image-size`` and ``--max-steps`` in range, named as on the command line."""
    if not 16 <= image_size <= 1024:
        raise RobodualError(f"--image-size: expected 16..1024 pixels, found {image_size}")
    if max_steps < 1:
        raise RobodualError(f"--max-steps: expected a positive number of steps, found {max_steps}")


def _require_metaworld() -> None:
    from robodual_core.errors import require

    require("metaworld", "pip install 'robodual-envs[metaworld]'")


# Every GL call of this process's renderers (context creation, rendering, release) holds this lock: Mesa's software
# rasterizer crashed (segfault in swrast_dri.so) when episodes in several threads (eval --batch) created, used and
# released their contexts at once. Rendering is CPU-bound on one core per process, so serializing it costs nothing.
GL_LOCK = threading.RLock()


class MetaWorldEnv(Environment):
    """One Meta-World task at a time (``reset(task=...)`` switches task) rendered to numpy arrays."""

    fps = 80.0  # Meta-World's control period: frame_skip 5 x 2.5 ms
    # "mt10"/"mt50"/task names -> validated task names, for callers that reach the env through the registry
    resolve_tasks = staticmethod(resolve_tasks)

    def __init__(
        self,
        task: str = "reach-v3",
        image_size: int = 128,
        cameras: tuple[str, ...] | list[str] = ("corner2", "gripperPOV"),
        depth: bool = False,
        seed: int = 0,
        max_steps: int = DEFAULT_MAX_STEPS,
        depth_max: float = 3.0,
        terminate_on_success: bool = True,
        visual: str = "default",
        placement_scale: float = 1.0,
    ):
        _require_metaworld()
        if visual not in VISUALS:
            raise RobodualError(f"visual: expected one of {', '.join(VISUALS)}, found '{visual}'")
        if not (np.isfinite(placement_scale) and 0 < placement_scale <= 4):
            raise RobodualError(f"placement_scale: expected a factor in (0, 4] (1 = the task's own placements), "
                                f"found {placement_scale}")
        self.visual, self.placement_scale = visual, float(placement_scale)
        cameras = tuple(cameras)
        if not 1 <= len(cameras) <= 2:
            raise RobodualError(f"cameras: expected 1 or 2 Meta-World cameras (static, then gripper), found {cameras}")
        for cam in cameras:
            if cam not in CAMERAS:
                raise RobodualError(f"cameras: unknown Meta-World camera '{cam}'; expected one of {', '.join(CAMERAS)}")
        if not 16 <= int(image_size) <= 1024:
            raise RobodualError(f"image_size: expected 16..1024 pixels, found {image_size}")
        if max_steps < 1:
            raise RobodualError(f"max_steps: expected a positive number of steps, found {max_steps}")
        self.task = resolve_tasks(task, flag="task")[0]
        self.image_size = int(image_size)
        self.cameras = cameras
        self.depth = bool(depth)
        self.seed = int(seed)
        self.max_steps = int(max_steps)
        self.depth_max = float(depth_max)
        self.terminate_on_success = terminate_on_success
        self._envs: dict[str, Any] = {}
        self._renderers: dict[str, Any] = {}
        self._env: Any = None
        self._state: np.ndarray | None = None
        self._steps = 0
        self._success = False
        self._done = True
        self.instruction = ""
        self.spec = EnvSpec(observation_keys=self.observation_keys(), action_dim=ACTION_DIM, fps=self.fps,
                            max_steps=self.max_steps, tasks=list(MT10))

    # -- description -----------------------------------------------------------------------------
    def observation_keys(self) -> dict[str, tuple[tuple[int, ...], str]]:
        s = self.image_size
        keys: dict[str, tuple[tuple[int, ...], str]] = {}
        for role, _ in zip(CAMERA_KEYS, self.cameras, strict=False):
            keys[f"rgb_{role}"] = ((s, s, 3), "uint8")
            if self.depth:
                keys[f"depth_{role}"] = ((s, s), "float32")
        keys["proprio"] = ((PROPRIO_DIM,), "float32")
        keys["state"] = ((STATE_DIM,), "float32")
        return keys

    # -- simulator -------------------------------------------------------------------------------
    def has_simulator(self, task: str) -> bool:
        """Whether this environment already built ``task``'s simulator (a reset to it then builds none)."""
        return task in self._envs

    def _make(self, task: str) -> Any:
        if task not in self._envs:
            from metaworld.env_dict import ALL_V3_ENVIRONMENTS

            env = ALL_V3_ENVIRONMENTS[task]()
            # What metaworld.MT10's tasks set, but with placements drawn from a seeded generator (see module doc).
            env._partially_observable = False
            if "sawyer_observation_space" in env.__dict__:  # a cached property built for the old observability
                del env.sawyer_observation_space
            env._set_task_called = True
            env._freeze_rand_vec = False
            env.seeded_rand_vec = True
            env.max_path_length = self.max_steps + 1
            env.model.vis.quality.offsamples = 0
            env.model.vis.global_.offwidth = max(env.model.vis.global_.offwidth, self.image_size)
            env.model.vis.global_.offheight = max(env.model.vis.global_.offheight, self.image_size)
            env._robodual_light = env.model.light_diffuse.copy()
            space = env._random_reset_space
            if self.placement_scale != 1.0 and space is not None:
                from gymnasium.spaces import Box

                centre, half = (space.high + space.low) / 2, (space.high - space.low) / 2
                env._random_reset_space = Box(centre - self.placement_scale * half,
                                              centre + self.placement_scale * half, dtype=np.float64)
            self._envs[task] = env
        return self._envs[task]

    def _renderer(self, task: str) -> Any:
        if task not in self._renderers:
            import mujoco

            with GL_LOCK:
                renderer = mujoco.Renderer(self._envs[task].model, self.image_size, self.image_size)
            for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION,
                         mujoco.mjtRndFlag.mjRND_SKYBOX):
                renderer.scene.flags[flag] = 0
            self._renderers[task] = renderer
        return self._renderers[task]

    def render_camera(self, camera: str, depth: bool = False) -> np.ndarray:
        """One camera of the current state: [H, W, 3] uint8, or [H, W] float32 metres with ``depth``."""
        renderer = self._renderer(self.task)
        renderer.update_scene(self._env.data, camera=camera)
        with GL_LOCK:
            if depth:
                renderer.enable_depth_rendering()
                try:
                    img = np.minimum(renderer.render(), self.depth_max).astype(np.float32)
                finally:
                    renderer.disable_depth_rendering()
            else:
                img = renderer.render()
        if camera.startswith("corner"):  # these cameras render rotated by 180 degrees
            img = img[::-1, ::-1]
        return np.ascontiguousarray(img)

    def _observation(self) -> StepObservation:
        arrays: dict[str, np.ndarray] = {}
        for role, cam in zip(CAMERA_KEYS, self.cameras, strict=False):
            arrays[f"rgb_{role}"] = self.render_camera(cam)
            if self.depth:
                arrays[f"depth_{role}"] = self.render_camera(cam, depth=True)
        state = self._state
        assert state is not None
        qpos = np.asarray(self._env.data.qpos[:7])
        arrays["proprio"] = np.concatenate([state[:4], qpos]).astype(np.float32)
        arrays["state"] = state.astype(np.float32)
        return StepObservation(arrays=arrays, instruction=self.instruction)

    # -- Environment -----------------------------------------------------------------------------
    def reset(self, task: str | None = None, seed: int | None = None) -> StepObservation:
        if task is not None:
            self.task = resolve_tasks(task, flag="task")[0]
        if seed is not None:
            self.seed = int(seed)
        self._env = self._make(self.task)
        self._apply_visual()
        self._env.seed(self.seed)
        state, _ = self._env.reset()
        # Meta-World's reset runs reset_model twice, the first time from the previous episode's state, and sets
        # the goal site in the model after its last mj_forward: the first frame would show a goal site left by
        # the previous episode (a reused simulator rendered other pixels than a fresh one). Recompute it.
        import mujoco

        mujoco.mj_forward(self._env.model, self._env.data)
        self._state = np.asarray(state, dtype=np.float64)
        self._steps, self._success, self._done = 0, False, False
        self.instruction = instruction_for(self.task, self.seed)
        return self._observation()

    def light_gain(self) -> np.ndarray:
        """The RGB gain applied to every light of this episode's scene (``visual``)."""
        if self.visual == "shift":
            return np.array(SHIFT_LIGHT)
        if self.visual == "random":
            rng = np.random.default_rng([self.seed, 0x715])
            return rng.uniform(0.6, 1.4) * rng.uniform(0.8, 1.2, size=3)
        return np.ones(3)

    def _apply_visual(self) -> None:
        env = self._env
        env.model.light_diffuse[:] = env._robodual_light * self.light_gain()[None, :]

    def step(self, action: np.ndarray) -> tuple[StepObservation, float, bool, dict[str, Any]]:
        if self._done:
            raise RobodualError("MetaWorldEnv.step: the episode is over (success or max_steps); call reset() first")
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (ACTION_DIM,):
            raise RobodualError(f"MetaWorldEnv.step: expected a {ACTION_DIM}-D action (dx, dy, dz, gripper), "
                                f"found shape {action.shape}")
        if not np.all(np.isfinite(action)):
            raise RobodualError(f"MetaWorldEnv.step: the action has non-finite values: {action.tolist()}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state, reward, _, _, info = self._env.step(np.clip(action, -1.0, 1.0))
        self._state = np.asarray(state, dtype=np.float64)
        self._steps += 1
        self._success = self._success or bool(info.get("success", 0.0))
        truncated = self._steps >= self.max_steps
        self._done = truncated or (self._success and self.terminate_on_success)
        out = {"success": self._success, "steps": self._steps, "truncated": truncated and not self._success}
        return self._observation(), float(reward), self._done, out

    def success(self) -> bool:
        return self._success

    @property
    def steps(self) -> int:
        return self._steps

    @property
    def state(self) -> np.ndarray:
        """Meta-World's 39-D state vector of the current step (for scripted experts)."""
        assert self._state is not None, "call reset() first"
        return self._state

    def close(self) -> None:
        with GL_LOCK:
            for renderer in self._renderers.values():
                renderer.close()
            self._renderers.clear()
            for env in self._envs.values():
                env.close()
        self._envs.clear()
        self._env = None

    def __enter__(self) -> MetaWorldEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing left to release
            pass

