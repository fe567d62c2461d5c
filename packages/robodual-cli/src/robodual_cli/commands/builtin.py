"""Registers the CLI's own command modules on the app (each module owns one group's built-in commands)."""

from __future__ import annotations

import importlib

import typer

# Modules with a ``register(app)`` function; each is owned by one feature area.
MODULES = ("robodual_cli.commands.dataset", "robodual_cli.commands.demo", "robodual_cli.commands.eval_offline",
           "robodual_cli.commands.bench_runtime", "robodual_cli.commands.serve", "robodual_cli.commands.study",
           "robodual_cli.commands.policy")


def register(app: typer.Typer) -> None:
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(app)
