"""Entry point (group ``robodual``): registers the force/torque encoder without importing torch."""

from robodual_core.hookspecs import hookimpl


@hookimpl
def robodual_register_sensors(registry):
    registry.register("force_torque", "robodual_example_modality.encoder:ForceTorqueEncoder",
                      "wrist force/torque [6] -> 2 tokens (example third-party plugin)")
