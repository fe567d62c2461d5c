"""Entry point of robodual-sensors: registers its components lazily (no heavy imports here)."""

from __future__ import annotations

from robodual_core.hookspecs import hookimpl

SENSORS = {
    "rgb_static": ("RGBStaticEncoder", "static RGB camera: frozen DINO ViT-S/16 + perceiver resampler"),
    "rgb_gripper": ("RGBGripperEncoder", "gripper RGB camera: frozen DINO ViT-S/16 + perceiver resampler"),
    "depth_static": ("DepthStaticEncoder", "static depth: ViT (6x256, 1 channel) + perceiver resampler"),
    "depth_gripper": ("DepthGripperEncoder", "gripper depth: ViT (6x256, 1 channel) + perceiver resampler"),
    "tactile": ("TactileEncoder", "tactile (2 DIGIT, 6 channels): ViT (6x256) + perceiver resampler"),
}


@hookimpl
def robodual_register_sensors(registry):
    for name, (cls, description) in SENSORS.items():
        registry.register(name, f"robodual_sensors.encoders:{cls}", description)
    registry.register("language", "robodual_sensors.language:LanguageEncoder",
                      "instruction: frozen sentence-transformers embedding projected to 1 token")


@hookimpl
def robodual_register_commands(app):
    from robodual_core.cli_groups import group
    from robodual_sensors import commands

    group(app, "bench").command("sensors")(commands.bench_sensors)
    group(app, "dataset").command("embed-language")(commands.embed_language)
