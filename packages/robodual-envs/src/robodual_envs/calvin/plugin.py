"""Entry point of the calvin plugin: registers lazily (no heavy imports here)."""

from robodual_core.hookspecs import hookimpl


@hookimpl
def robodual_register_dataset_converters(registry):
    registry.register("calvin", "robodual_envs.calvin.convert:CalvinConverter",
                      "raw CALVIN (episode_*.npz + lang_annotations) -> Zarr, one episode per annotated window")


@hookimpl
def robodual_register_envs(registry):
    registry.register("calvin", "robodual_envs.calvin.env:CalvinEnv",
                      "CALVIN PlayTable (calvin_env, installed from its git repository) with the task oracle")


@hookimpl
def robodual_register_commands(app):
    from robodual_core.cli_groups import group
    from robodual_envs.calvin.commands import eval_command

    group(app, "eval").command("calvin")(eval_command)
