"""Entry point of robodual-specialist: registers its components lazily (no heavy imports here)."""

from robodual_core.hookspecs import hookimpl  # noqa: F401
