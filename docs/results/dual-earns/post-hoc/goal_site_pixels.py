"""Pixels of the goal site at reset, per camera and image size, for the study's target tasks (post-hoc: see README.md).

Run from this folder: `MUJOCO_GL=egl python goal_site_pixels.py`; prints, per image size and task, the mean goal-site
pixels per camera and the placements where it shows none, and writes goal-site-64px.png.
"""
import os

os.environ.setdefault("MUJOCO_GL", "egl")
import mujoco
import numpy as np
from PIL import Image

from robodual_envs.metaworld.env import MetaWorldEnv

TASKS, CAMS, SEEDS = ["peg-insert-side-v3", "pick-place-v3", "push-v3"], ["corner2", "gripperPOV"], range(30)
tiles = []
for size in (64, 128):
    env = MetaWorldEnv(image_size=size, cameras=CAMS)
    for task in TASKS:
        counts = {cam: [] for cam in CAMS}
        for seed in SEEDS:
            env.reset(task=task, seed=seed)
            model = env._env.model
            goal = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, "goal")
            row = []
            for cam in CAMS:
                shown = env.render_camera(cam)
                alpha = model.site_rgba[goal, 3]
                model.site_rgba[goal, 3] = 0  # the same frame without the goal site
                hidden = env.render_camera(cam)
                model.site_rgba[goal, 3] = alpha
                mask = np.abs(shown.astype(int) - hidden.astype(int)).sum(-1) > 30
                counts[cam].append(int(mask.sum()))
                if size == 64 and seed == 0:
                    marked = shown.copy()
                    marked[mask] = [255, 0, 255]
                    row += [shown, marked]
            if row:
                tiles.append(np.concatenate(row, 1))
        print(size, task, {cam: (float(np.mean(c)), int(np.sum(np.array(c) == 0))) for cam, c in counts.items()})
    env.close()
grid = np.concatenate(tiles, 0)
Image.fromarray(grid).resize((grid.shape[1] * 4, grid.shape[0] * 4), Image.NEAREST).save("goal-site-64px.png")
