"""One simulator and one policy in one process, running official chains by index.

The policy is built first, and when it uses torch, ``torch._dynamo`` (which imports triton) is imported
before the simulator creates its OpenGL context: on Mesa's llvmpipe, EGL loads an LLVM that triton's own
LLVM crashes against (a segmentation fault) when triton comes second, as it does when diffusers or
``torch.compile`` import it lazily during the first policy step. Imported first, both run.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from robodual_envs.calvin import protocol
from robodual_envs.calvin.spec import ENV_FACTORY, EvalSpec, target


def video_frame(obs: dict[str, Any]) -> Any:
    """The static camera with the gripper camera scaled to its height beside it: [H, W1 + W2, 3] uint8."""
    import numpy as np

    static = obs["rgb_static"]
    if "rgb_gripper" not in obs:
        return static
    g = obs["rgb_gripper"]
    h = static.shape[0]
    rows = np.linspace(0, g.shape[0] - 1, h).round().astype(int)
    cols = np.linspace(0, g.shape[1] - 1, round(g.shape[1] * h / g.shape[0])).round().astype(int)
    return np.concatenate([static, g[rows][:, cols]], axis=1)


def import_before_gl() -> None:
    """Import what must not be imported after an EGL context exists (see the module docstring)."""
    if "torch" not in sys.modules:
        return  # a policy without torch (scripted, remote) brings no triton
    try:
        import torch._dynamo  # noqa: F401  (imports triton where it is installed)
    except Exception:  # a torch without dynamo: nothing of it can be imported late either
        pass
    try:
        import triton  # noqa: F401
    except Exception:
        pass


class ChainRunner:
    """A policy and a simulator, built once per process (in that order), running chains by index."""

    def __init__(self, spec: EvalSpec):
        self.spec = spec
        self.instructions = (protocol.Instructions.from_file(spec.instructions, spec.seed) if spec.instructions
                             else protocol.Instructions.official())
        self.policy = target(spec.policy_factory)(**spec.policy_kwargs)
        import_before_gl()
        try:
            self.env = target(ENV_FACTORY)(**spec.env_kwargs)
        except BaseException:
            self._close(self.policy)
            raise

    def run(self, index: int, video: bool, on_step: Any = None) -> dict[str, Any]:
        chain = protocol.chains(index, 1)[0]
        frames: list[Any] = []
        on_frame = (lambda obs, _instruction: frames.append(video_frame(obs))) if video else None
        try:
            record = protocol.run_chain(self.env, self.policy, chain, self.instructions, self.spec.max_steps,
                                        on_step=on_step, on_frame=on_frame)
        except Exception as exc:  # recorded, the next chain resets the simulator
            return protocol.failed_record(chain, f"{type(exc).__name__}: {exc}", 1)
        if frames and self.spec.video_dir:
            from robodual_envs.common.video import write_video

            try:
                record["video"] = str(write_video(Path(self.spec.video_dir) / f"chain_{index:04d}.mp4", frames))
            except Exception as exc:  # a missing encoder must not cost the result
                record["video_error"] = f"{type(exc).__name__}: {exc}"
        return record

    @staticmethod
    def _close(obj: Any) -> None:
        close = getattr(obj, "close", None)
        if callable(close):
            close()

    def close(self) -> None:
        for obj in (self.policy, self.env):
            self._close(obj)
