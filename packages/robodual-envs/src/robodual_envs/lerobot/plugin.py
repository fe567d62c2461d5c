"""Entry point of the lerobot plugin: registers lazily (no heavy imports here)."""

from robodual_core.hookspecs import hookimpl


@hookimpl
def robodual_register_dataset_converters(registry):
    registry.register("lerobot", "robodual_envs.lerobot.convert:LeRobotConverter",
                      "LeRobot dataset (v3.0, v2.1) -> Zarr, videos decoded with PyAV, one episode per episode")


@hookimpl
def robodual_register_commands(app):
    from robodual_core.cli_groups import group
    from robodual_envs.lerobot import commands

    export = group(group(app, "dataset"), "export")
    if not export.info.help:
        export.info.help = "Write a Zarr store in another dataset format."
    export.command("lerobot")(commands.export_command)
    bench = group(app, "bench")
    bench.command("lerobot")(commands.bench_command)
    bench.command("lerobot-loader")(commands.loader_bench_command)
