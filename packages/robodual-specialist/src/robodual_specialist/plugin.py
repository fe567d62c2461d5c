"""Entry point of robodual-specialist: registers its components lazily (no heavy imports here)."""

from robodual_core.hookspecs import hookimpl


@hookimpl
def robodual_register_specialists(registry):
    registry.register("dit", "robodual_specialist.model:DiTSpecialist",
                      "diffusion transformer specialist (RoboDual 3.2): DDIM, CFG, shifted-window conditioning")


@hookimpl
def robodual_register_conditioners(registry):
    registry.register("cross_attention", "robodual_specialist.conditioners:CrossAttentionConditioner",
                      "action tokens attend to generalist + sensor tokens (default)")
    registry.register("film", "robodual_specialist.conditioners:FiLMConditioner",
                      "pooled condition tokens regress a per-channel scale and shift")
    registry.register("in_context", "robodual_specialist.conditioners:InContextConditioner",
                      "condition tokens join the self-attention as prefix keys/values")


@hookimpl
def robodual_register_commands(app):
    from robodual_core.cli_groups import group
    from robodual_specialist import commands

    group(app, "train").command("specialist")(commands.train_specialist)
    group(app, "bench").command("specialist")(commands.bench_specialist)
