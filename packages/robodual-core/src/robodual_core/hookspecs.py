"""The hooks a robodual plugin may implement (entry-point group ``robodual``).

A plugin module defines any of these functions decorated with ``robodual_core.hookimpl``.
Each ``register_*`` hook receives the :class:`~robodual_core.registry.Registry` of its kind and calls
``registry.register(name, target, description)``: ``target`` is the object named below, or a lazy
``"module:attr"`` string naming it (imported on first use, so listing plugins imports nothing heavy).
Hooks return nothing. A name already registered (a built-in's, or another plugin's) is refused, naming both.
docs/plugins.md is the guide.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import typer

    from robodual_core.registry import Registry

hookspec = pluggy.HookspecMarker("robodual")
hookimpl = pluggy.HookimplMarker("robodual")


@hookspec
def robodual_register_sensors(registry: Registry) -> None:
    """Register :class:`~robodual_core.interfaces.SensorEncoder` factories: ``factory(**options)`` -> an
    encoder (an ``nn.Module``); ``options`` are a sensor config's ``options``."""


@hookspec
def robodual_register_conditioners(registry: Registry) -> None:
    """Register :class:`~robodual_core.interfaces.Conditioner` classes."""


@hookspec
def robodual_register_generalists(registry: Registry) -> None:
    """Register :class:`~robodual_core.interfaces.GeneralistFamily` objects (one per family name): what
    ``train generalist --set model.family=NAME``, ``generalist cache``/``merge`` and the runtime call."""


@hookspec
def robodual_register_specialists(registry: Registry) -> None:
    """Register :class:`~robodual_core.interfaces.SpecialistFamily` entries (a specialist class with a
    ``load_runner`` classmethod is one), by the ``family`` its checkpoints' model_config.json names."""


@hookspec
def robodual_register_envs(registry: Registry) -> None:
    """Register :class:`~robodual_core.interfaces.Environment` factories."""


@hookspec
def robodual_register_dataset_converters(registry: Registry) -> None:
    """Register :class:`~robodual_core.interfaces.DatasetConverter` classes."""


@hookspec
def robodual_register_commands(app: typer.Typer) -> None:
    """Add Typer commands. ``robodual_core.cli_groups.group(app, "train")`` returns a sub-group."""
