"""Entry point of robodual-generalist: registers its components lazily (no heavy imports here)."""

from __future__ import annotations

from robodual_core.hookspecs import hookimpl


@hookimpl
def robodual_register_generalists(registry):
    # GeneralistFamily objects (robodual_core.interfaces): train, cache, merge and run through the registry
    registry.register("openvla", "robodual_generalist.families:OPENVLA",
                      "OpenVLA / Prismatic (DINOv2+SigLIP, LLaMA) with action-chunk tokens; native loading, LoRA")
    registry.register("hf_vlm", "robodual_generalist.families:HF_VLM",
                      "any local Hugging Face VLM (AutoModelForImageTextToText + its processor) with action tokens")


@hookimpl
def robodual_register_commands(app):
    from robodual_core.cli_groups import group
    from robodual_generalist import commands

    group(app, "train").command("generalist")(commands.train_generalist)
    group(app, "generalist").command("merge")(commands.merge)
    group(app, "generalist").command("cache")(commands.cache)
    group(app, "bench").command("generalist")(commands.bench_generalist)
