"""The hooks a robodual plugin may implement (entry-point group ``robodual``).

A plugin module defines any of these functions decorated with ``robodual_core.hookimpl``.
Each ``register_*`` hook receives a :class:`~robodual_core.registry.Registry` and calls
``registry.register(name, target, description)``.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("robodual")
hookimpl = pluggy.HookimplMarker("robodual")


@hookspec
def robodual_register_sensors(registry):
    """Register :class:`~robodual_core.interfaces.SensorEncoder` factories."""


@hookspec
def robodual_register_conditioners(registry):
    """Register :class:`~robodual_core.interfaces.Conditioner` classes."""


@hookspec
def robodual_register_generalists(registry):
    """Register generalist model families."""


@hookspec
def robodual_register_specialists(registry):
    """Register specialist model families."""


@hookspec
def robodual_register_envs(registry):
    """Register :class:`~robodual_core.interfaces.Environment` factories."""


@hookspec
def robodual_register_dataset_converters(registry):
    """Register :class:`~robodual_core.interfaces.DatasetConverter` classes."""


@hookspec
def robodual_register_commands(app):
    """Add Typer commands. ``robodual_core.cli_groups.group(app, "train")`` returns a sub-group."""
