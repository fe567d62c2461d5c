"""Entry point of the metaworld plugin: registers lazily (no heavy imports here).

The environment is ``registry("envs").get("metaworld")`` (:class:`robodual_envs.metaworld.env.MetaWorldEnv`);
evaluation and demo generation are the ``eval metaworld`` and ``dataset generate metaworld`` commands
(:func:`robodual_envs.metaworld.evaluate.evaluate`, :func:`robodual_envs.metaworld.generate.generate_dataset`).
"""

from robodual_core.hookspecs import hookimpl


@hookimpl
def robodual_register_envs(registry):
    registry.register("metaworld", "robodual_envs.metaworld.env:MetaWorldEnv",
                      "Meta-World (MuJoCo, 50 tasks, MT10) with scripted experts: the embedded default benchmark")


@hookimpl
def robodual_register_commands(app):
    from robodual_core.cli_groups import group
    from robodual_envs.metaworld import commands

    generate = group(group(app, "dataset"), "generate")
    if not generate.info.help:
        generate.info.help = "Generate datasets from simulators with scripted experts."
    generate.command("metaworld")(commands.generate_command)
    group(app, "eval").command("metaworld")(commands.eval_command)
