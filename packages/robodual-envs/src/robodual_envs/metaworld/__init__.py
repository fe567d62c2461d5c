"""Meta-World, robodual's embedded default benchmark.

- :class:`~robodual_envs.metaworld.env.MetaWorldEnv`: the Environment (fast headless rendering, canonical keys);
- :func:`~robodual_envs.metaworld.generate.generate_dataset`: scripted-expert demonstrations as a Zarr store
  (``robodual dataset generate metaworld``);
- :func:`~robodual_envs.metaworld.evaluate.evaluate`: closed-loop success of any Policy, sharded over processes
  (``robodual eval metaworld``);
- :mod:`~robodual_envs.metaworld.tasks`: task lists (MT10) and natural-language instructions.

Nothing here imports mujoco or metaworld at import time.
"""
