"""Entry point of the lerobot plugin: registers lazily (no heavy imports here)."""

from robodual_core.hookspecs import hookimpl


@hookimpl
def robodual_register_dataset_converters(registry):
    registry.register("lerobot", "robodual_envs.lerobot.convert:LeRobotConverter",
                      "LeRobot dataset (v3.0, v2.1) -> Zarr, videos decoded with PyAV, one episode per episode")


@hookimpl
def robodual_register_commands(app):
    from robodual_envs.lerobot import bench, export

    export.add_command(app)
    bench.add_command(app)
