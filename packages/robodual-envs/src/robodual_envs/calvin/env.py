"""The CALVIN PlayTable simulator (calvin_env, imported lazily) behind robodual's interfaces.

Two ways to build it: from a dataset's ``validation/.hydra/merged_config.yaml`` (what the official
evaluation does: the dataset's robot, scene and cameras), or from calvin_env's own configuration with a
chosen scene (``D`` by default) for users without the dataset. Rendering is headless: EGL (the default,
as in the official evaluation; software OpenGL where there is no GPU) or pybullet's TinyRenderer.

Observations use the dataset keys the converter (:mod:`robodual_envs.calvin.convert`) writes, with the
same preprocessing: ``rgb_static`` [200, 200, 3] and ``rgb_gripper`` [84, 84, 3] uint8 (or resized to
``image_size`` exactly like ``convert --image-size``), ``depth_static`` / ``depth_gripper`` float32 metres,
``tactile`` [160, 120, 6] uint8 and ``depth_tactile`` [160, 120, 2] float32 when tactile sensing is on,
``proprio`` = ``robot_obs[:6] + robot_obs[-1:]`` float32, and the raw ``robot_obs`` [15] / ``scene_obs``
[24] float64. Actions are 7-D relative end-effector actions (the dataset's ``rel_actions``): xyz and euler
deltas in [-1, 1] (x 0.02 m, x 0.05 rad) and a gripper command sent as exactly +1 (open) or -1 (close).

:class:`StandInCalvinEnv` is a small deterministic simulator with the same interface and observation
keys; tests and ``--simulator standin`` use it to exercise the protocol without calvin_env.
"""

from __future__ import annotations

import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from robodual_core.errors import MissingDependencyError, RobodualError
from robodual_core.interfaces import Environment, EnvSpec, StepObservation
from robodual_envs.calvin import protocol

INSTALL_HINT = ("calvin_env is not installed (it is not on PyPI): git clone --recurse-submodules "
                "https://github.com/mees/calvin_env && pip install -e calvin_env/tacto && pip install -e calvin_env")
RENDERERS = ("egl", "tiny")
FPS = 30.0
ACTION_DIM = 7


def require_calvin_env() -> None:
    """Refuse, with the install hint, when calvin_env is not installed: found without importing it (importing
    it early would load its rendering stack before the policy's; see calvin.runner)."""
    import importlib.util

    if importlib.util.find_spec("calvin_env") is None:
        raise MissingDependencyError(INSTALL_HINT)


def import_calvin_env() -> Any:
    try:
        import calvin_env
    except ImportError as exc:
        raise MissingDependencyError(f"{INSTALL_HINT} ({exc})") from None
    return calvin_env


def merged_config_path(path: str | Path) -> Path:
    """``merged_config.yaml`` itself, or the one under ``PATH/.hydra`` or ``PATH/validation/.hydra``."""
    path = Path(path)
    for candidate in (path, path / ".hydra" / "merged_config.yaml", path / "validation" / ".hydra" / "merged_config.yaml"):
        if candidate.is_file():
            return candidate
    raise RobodualError(f"--dataset-config '{path}': expected a merged_config.yaml file, or a CALVIN dataset folder "
                        "holding validation/.hydra/merged_config.yaml; found neither")


def check_dataset_config(path: str | Path, tactile: bool = False) -> Path:
    """The ``merged_config.yaml`` for ``path`` (see :func:`merged_config_path`), refused in one line when it
    is not YAML or lacks what the simulator is built from. Needs no calvin_env, so a typo costs no worker."""
    import yaml

    file = merged_config_path(path)
    try:
        cfg = yaml.safe_load(file.read_text())
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
        where = getattr(exc, "problem_mark", None)
        raise RobodualError(f"--dataset-config '{file}' is not valid YAML"
                            f"{f' (line {where.line + 1})' if where else ''}: {type(exc).__name__}") from None
    if not isinstance(cfg, dict):
        raise RobodualError(f"--dataset-config '{file}': expected a mapping with env, cameras, scene and robot "
                            f"sections, found {type(cfg).__name__}")
    missing = [key for key in ("env", "cameras", "scene", "robot") if not isinstance(cfg.get(key), dict)]
    if missing:
        raise RobodualError(f"--dataset-config '{file}' has no {', '.join(repr(k) for k in missing)} section(s); "
                            "expected a CALVIN rendering merged_config.yaml")
    cameras = sorted(cfg["cameras"])
    if not {"static", "gripper"} <= set(cameras):
        raise RobodualError(f"--dataset-config '{file}' configures cameras {cameras}; expected 'static' and 'gripper'")
    if tactile and "tactile" not in cameras:
        raise RobodualError(f"--tactile asked for tactile sensing but '{file}' configures no 'tactile' camera "
                            f"(cameras: {cameras})")
    return file


def scene_name(scene: str) -> str:
    """``D`` -> ``calvin_scene_D``; full names pass through."""
    return scene if scene.startswith("calvin_scene_") else f"calvin_scene_{scene}"


def preprocess(raw: dict[str, Any], image_size: int | None = None) -> dict[str, np.ndarray]:
    """calvin_env's ``get_obs()`` dict -> dataset keys, preprocessed as the converter does."""
    from robodual_envs.calvin.convert import IMAGE_KEYS, PROPRIO_INDEX, RESIZABLE, _resize

    rgb, depth = raw.get("rgb_obs", {}), raw.get("depth_obs", {})
    sources = {**rgb, **depth}
    out: dict[str, np.ndarray] = {}
    for key, (source, modality) in IMAGE_KEYS.items():
        if source not in sources:
            continue
        x = np.ascontiguousarray(sources[source])
        x = x.astype(np.uint8) if modality in ("rgb", "tactile") else x.astype(np.float32)
        if image_size and key in RESIZABLE:
            x = _resize(x[None], image_size, depth=modality == "depth")[0]
        out[key] = x
    robot_obs = np.asarray(raw["robot_obs"], dtype=np.float64)
    out["robot_obs"] = robot_obs
    out["scene_obs"] = np.asarray(raw["scene_obs"], dtype=np.float64)
    out["proprio"] = robot_obs[PROPRIO_INDEX].astype(np.float32)
    return out


def to_env_action(action: Any) -> np.ndarray:
    """A policy's 7-D relative action -> what calvin_env's ``Robot.apply_action`` accepts.

    The six pose deltas are clipped to [-1, 1] (the range of ``rel_actions``); the gripper becomes exactly
    +1 (open, > 0) or -1 (close), which calvin_env asserts.
    """
    a = np.asarray(action, dtype=np.float64).reshape(-1)
    if a.shape != (ACTION_DIM,):
        raise RobodualError(f"the policy returned an action of shape {np.shape(action)}; CALVIN expects 7 values "
                            "(relative xyz, relative euler xyz, gripper)")
    if not np.isfinite(a).all():
        raise RobodualError(f"the policy returned a non-finite action {a.tolist()}")
    out = np.clip(a, -1.0, 1.0)
    out[-1] = 1.0 if a[-1] > 0 else -1.0
    return out


class _ChainEnvMixin(Environment):
    """robodual's generic :class:`Environment` API on top of the protocol methods.

    ``reset(task, seed)`` starts from official chain ``seed`` (mod 1000) and sets the task (default: that
    chain's first subtask); ``step`` reports ``info["success"]`` from the task oracle.
    """

    _task: str | None = None
    _start_info: Any = None
    _last_success = False

    def reset(self, task: str | None = None, seed: int | None = None) -> StepObservation:
        chain = protocol.chains((seed or 0) % protocol.NUM_CHAINS, 1)[0]
        self._task = task or chain.subtasks[0]
        if self._task not in protocol.tasks():
            raise RobodualError(f"unknown CALVIN task '{self._task}'; expected one of {', '.join(protocol.tasks())}")
        obs = self.reset_to(np.asarray(chain.robot_obs), np.asarray(chain.scene_obs))
        self._start_info, self._last_success = self.info(), False
        return StepObservation(obs, protocol.tasks()[self._task]["validation_instruction"])

    def step(self, action: np.ndarray) -> tuple[StepObservation, float, bool, dict[str, Any]]:  # type: ignore[override]
        obs = self.step_obs(action)
        self._last_success = self._task is not None and self.solved(self._task, self._start_info, self.info())
        instruction = protocol.tasks()[self._task]["validation_instruction"] if self._task else ""
        return StepObservation(obs, instruction), float(self._last_success), self._last_success, \
            {"success": self._last_success}

    def success(self) -> bool:
        return self._last_success

    # the protocol's ChainEnv methods, implemented by each simulator
    def step_obs(self, action: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def reset_to(self, robot_obs: np.ndarray, scene_obs: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def info(self) -> Any:
        raise NotImplementedError

    def solved(self, task: str, start_info: Any, info: Any) -> bool:
        raise NotImplementedError


class CalvinEnv(_ChainEnvMixin):
    """calvin_env's ``PlayTableSimEnv`` with the official task oracle.

    ``dataset_config``: a ``merged_config.yaml`` or a dataset folder (see :func:`merged_config_path`); when
    None, calvin_env's own configuration with ``scene``. With a dataset config, ``scene`` (if given)
    replaces the dataset's scene, as ``get_env(..., scene=...)`` does.
    """

    def __init__(self, dataset_config: str | Path | None = None, scene: str | None = "D", renderer: str = "egl",
                 tactile: bool = False, image_size: int | None = None, seed: int = 0):
        if renderer not in RENDERERS:
            raise RobodualError(f"--renderer is '{renderer}'; expected one of {', '.join(RENDERERS)}")
        calvin_env = import_calvin_env()
        import hydra
        from calvin_env.envs.tasks import Tasks

        self.image_size = image_size
        if not getattr(calvin_env, "__file__", None):
            raise MissingDependencyError(f"'calvin_env' imports as a bare folder {list(calvin_env.__path__)}, not the "
                                         f"installed package (run from another directory); {INSTALL_HINT}")
        root = Path(calvin_env.__file__).resolve().parents[1]
        cfg = (self._dataset_config(root, dataset_config, scene, tactile) if dataset_config is not None
               else self._own_config(root, scene or "D", tactile))
        cfg.env.use_egl = renderer == "egl"
        cfg.env.seed = seed
        self._env = hydra.utils.instantiate(cfg.env, show_gui=False, use_vr=False, use_scene_info=True)
        self._oracle = Tasks(protocol.oracle_specs())
        obs = self._observe(self._env.get_obs())
        self.spec = EnvSpec({k: (v.shape, str(v.dtype)) for k, v in obs.items()}, ACTION_DIM, FPS, protocol.EP_LEN,
                            tasks=list(protocol.tasks()))

    @staticmethod
    def _cameras_ok(cfg: Any, tactile: bool, source: str) -> None:
        from omegaconf import OmegaConf

        OmegaConf.set_struct(cfg, False)
        names = set(cfg.cameras.keys())
        missing = {"static", "gripper"} - names
        if missing:
            raise RobodualError(f"{source} configures cameras {sorted(names)}; expected 'static' and 'gripper'")
        if tactile and "tactile" not in names:
            raise RobodualError(f"--tactile asked for tactile sensing but {source} configures no 'tactile' camera "
                                f"(cameras: {sorted(names)})")
        for name in names - {"static", "gripper"} - ({"tactile"} if tactile else set()):
            del cfg.cameras[name]

    def _dataset_config(self, root: Path, path: str | Path, scene: str | None, tactile: bool) -> Any:
        from omegaconf import OmegaConf

        file = merged_config_path(path)
        cfg = OmegaConf.load(file)
        for key in ("env", "cameras", "scene", "robot"):
            if key not in cfg:
                raise RobodualError(f"'{file}' has no '{key}' section; expected a CALVIN rendering merged_config.yaml")
        self._cameras_ok(cfg, tactile, f"'{file}'")
        if scene is not None:
            cfg.scene = OmegaConf.load(self._scene_file(root, scene))
        data_path = Path(str(cfg.scene.get("data_path", "data")))
        if data_path.is_absolute() and not data_path.is_dir():  # recorded on another machine
            cfg.scene.data_path = "data"
        return cfg

    def _own_config(self, root: Path, scene: str, tactile: bool) -> Any:
        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra

        self._scene_file(root, scene)
        cameras = "static_gripper_tactile" if tactile else "static_and_gripper"
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(root / "conf"), version_base=None):
            cfg = compose("config_data_collection",
                          overrides=[f"cameras={cameras}", f"scene={scene_name(scene)}", "use_vr=false"])
        self._cameras_ok(cfg, tactile, "calvin_env's configuration")
        return cfg

    @staticmethod
    def _scene_file(root: Path, scene: str) -> Path:
        file = root / "conf" / "scene" / f"{scene_name(scene)}.yaml"
        if not file.is_file():
            found = sorted(p.stem for p in (root / "conf" / "scene").glob("calvin_scene_*.yaml"))
            raise RobodualError(f"--scene '{scene}': calvin_env has no '{file.name}'; available: {', '.join(found)}")
        return file

    def _observe(self, raw: dict[str, Any]) -> dict[str, np.ndarray]:
        return preprocess(raw, self.image_size)

    def reset_to(self, robot_obs: np.ndarray, scene_obs: np.ndarray) -> dict[str, np.ndarray]:
        return self._observe(self._env.reset(robot_obs=np.asarray(robot_obs), scene_obs=np.asarray(scene_obs)))

    def step_obs(self, action: np.ndarray) -> dict[str, np.ndarray]:
        raw, _, _, _ = self._env.step(to_env_action(action))
        return self._observe(raw)

    def info(self) -> Any:
        return self._env.get_info()

    def solved(self, task: str, start_info: Any, info: Any) -> bool:
        return bool(self._oracle.get_task_info_for_set(start_info, info, {task}))

    def close(self) -> None:
        env, self._env = getattr(self, "_env", None), None
        if env is not None:
            env.close()
            env.cid = -1  # its __del__ closes again, and pybullet raises on a second disconnect


class StandInCalvinEnv(_ChainEnvMixin):
    """A deterministic stand-in for calvin_env with the same keys, shapes and dtypes (scores mean nothing).

    The end effector moves by ``0.02 * action[:3]`` per step. Each task has a fixed direction
    (:meth:`direction`); a subtask is solved once the end effector has moved ``distance`` metres along it
    since the subtask started (5 full-speed steps by default), except tasks listed in ``unsolvable``.
    ``step_delay`` seconds of sleep per step stand in for physics and rendering when timing the harness.
    """

    def __init__(self, image_size: int | None = None, tactile: bool = False, distance: float = 0.1,
                 unsolvable: list[str] | tuple[str, ...] = (), step_delay: float = 0.0, seed: int = 0):
        self.image_size, self.tactile, self.distance = image_size, tactile, distance
        self.unsolvable, self.step_delay = set(unsolvable), step_delay
        self.robot_obs = np.zeros(15)
        self.scene_obs = np.zeros(24)
        obs = self._observe()
        self.spec = EnvSpec({k: (v.shape, str(v.dtype)) for k, v in obs.items()}, ACTION_DIM, FPS, protocol.EP_LEN,
                            tasks=list(protocol.tasks()))

    @staticmethod
    def direction(task: str) -> np.ndarray:
        v = np.random.default_rng(zlib.crc32(task.encode())).normal(size=3)
        return v / np.linalg.norm(v)

    def _observe(self) -> dict[str, np.ndarray]:
        static, gripper = (self.image_size or 200), (self.image_size or 84)
        level = int(abs(self.robot_obs[:3].sum()) * 1000) % 256
        raw: dict[str, Any] = {
            "rgb_obs": {"rgb_static": np.full((static, static, 3), level, np.uint8),
                        "rgb_gripper": np.full((gripper, gripper, 3), level, np.uint8)},
            "depth_obs": {"depth_static": np.ones((static, static), np.float32),
                          "depth_gripper": np.ones((gripper, gripper), np.float32)},
            "robot_obs": self.robot_obs.copy(), "scene_obs": self.scene_obs.copy(),
        }
        if self.tactile:
            raw["rgb_obs"]["rgb_tactile"] = np.zeros((160, 120, 6), np.uint8)
            raw["depth_obs"]["depth_tactile"] = np.zeros((160, 120, 2), np.float32)
        return preprocess(raw)

    def reset_to(self, robot_obs: np.ndarray, scene_obs: np.ndarray) -> dict[str, np.ndarray]:
        self.robot_obs = np.array(robot_obs, dtype=np.float64)
        self.scene_obs = np.array(scene_obs, dtype=np.float64)
        return self._observe()

    def step_obs(self, action: np.ndarray) -> dict[str, np.ndarray]:
        a = to_env_action(action)
        if self.step_delay:
            time.sleep(self.step_delay)
        self.robot_obs[:3] += 0.02 * a[:3]
        self.robot_obs[-1] = a[-1]
        return self._observe()

    def info(self) -> np.ndarray:
        return self.robot_obs[:3].copy()

    def solved(self, task: str, start_info: Any, info: Any) -> bool:
        if task in self.unsolvable:
            return False
        return float(np.dot(np.asarray(info) - np.asarray(start_info), self.direction(task))) >= self.distance - 1e-9


def make_chain_env(simulator: str = "calvin", **kwargs: Any) -> _ChainEnvMixin:
    """``simulator`` ('calvin' or 'standin') built with ``kwargs``."""
    if simulator == "calvin":
        return CalvinEnv(**kwargs)
    if simulator == "standin":
        return StandInCalvinEnv(**kwargs)
    raise RobodualError(f"--simulator is '{simulator}'; expected 'calvin' or 'standin'")
