"""Entry point of the metaworld plugin: registers lazily (no heavy imports here)."""

from robodual_core.hookspecs import hookimpl  # noqa: F401
