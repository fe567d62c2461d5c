"""User-facing errors: the CLI prints them as one line (no traceback unless ``--debug``)."""

from __future__ import annotations


class RobodualError(Exception):
    """An error caused by the user's input: a file, key, flag or name that is wrong.

    The message must say what was expected, what was found and, where possible, how to fix it.
    """


class ConfigError(RobodualError):
    """A config file or ``--set`` override that does not match the config schema."""


class RegistryError(RobodualError, KeyError):
    """A name that is not registered; the message lists what is."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class MissingDependencyError(RobodualError, ImportError):
    """An optional dependency is not installed; the message names the install command."""


def require(module: str, install_hint: str):
    """Import ``module`` lazily, or raise a one-line error naming how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"this needs the Python module '{module}', which is not importable ({exc}). Install it with: {install_hint}"
        ) from exc
