"""Entry point (group ``robodual``): registers the ``bow_mlp`` generalist family without importing torch."""

from robodual_core.hookspecs import hookimpl


@hookimpl
def robodual_register_generalists(registry):
    registry.register("bow_mlp", "robodual_example_generalist.family:FAMILY",
                      "MLP over a downsampled frame + hashed bag of words -> action chunks and latents (example)")
