"""Entry point of robodual-generalist: registers its components lazily (no heavy imports here)."""

from robodual_core.hookspecs import hookimpl  # noqa: F401
