"""Command groups shared by the CLI and plugins (DESIGN.md section 10).

Plugins add commands with ``group(app, "train").command("specialist")(fn)``; the group is created
once, whatever registers first.
"""

from __future__ import annotations

from typing import Any

GROUP_HELP = {
    "plugins": "List, show, install and uninstall robodual plugins.",
    "dataset": "Convert, inspect, validate and view Zarr datasets.",
    "train": "Train a generalist or a specialist.",
    "generalist": "Merge LoRA adapters and cache generalist outputs.",
    "eval": "Evaluate policies in closed loop or offline.",
    "bench": "Benchmarks that write JSON.",
}


def group(app: Any, name: str) -> Any:
    """The sub-``Typer`` named ``name`` of ``app``, created on first use."""
    import typer

    for info in app.registered_groups:
        if info.name == name:
            return info.typer_instance
    sub = typer.Typer(help=GROUP_HELP.get(name, ""), no_args_is_help=True, rich_markup_mode="rich")
    app.add_typer(sub, name=name)
    return sub
