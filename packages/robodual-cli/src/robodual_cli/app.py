"""The ``robodual`` Typer app.

Built-in groups live here; everything else arrives through ``robodual_register_commands``. Nothing at
module level imports torch or a model library: ``robodual --help`` stays fast.
"""

from __future__ import annotations

import os
import sys
from importlib import metadata

import typer

from robodual_cli.commands import plugins as plugins_cmd
from robodual_cli.console import err, out
from robodual_core import __version__
from robodual_core.cli_groups import group
from robodual_core.errors import RobodualError
from robodual_core.plugins import get_plugin_manager

LIBRARIES = ("robodual-core", "torch", "torchvision", "transformers", "diffusers", "peft", "timm", "zarr",
             "numpy", "pluggy", "typer", "rich", "safetensors", "metaworld", "mujoco")


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="robodual",
        help="Dual-system robot manipulation policies: a slow VLA generalist and a fast diffusion specialist.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        rich_markup_mode="rich",
        add_completion=False,
    )

    @app.callback()
    def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors.")) -> None:
        if debug:
            os.environ["ROBODUAL_DEBUG"] = "1"

    @app.command()
    def version() -> None:
        """Print the robodual version."""
        out.print(f"robodual {__version__}")

    @app.command()
    def info(json_out: bool = typer.Option(False, "--json", help="Machine-readable output on stdout.")) -> None:
        """Versions, device and plugins: what a bug report needs."""
        import json
        import platform

        data: dict[str, object] = {"python": platform.python_version(), "platform": platform.platform()}
        for lib in LIBRARIES:
            try:
                data[lib] = metadata.version(lib)
            except metadata.PackageNotFoundError:
                data[lib] = "not installed"
        try:
            import torch

            data["device"] = (f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available()
                              else f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)")
        except ImportError:
            data["device"] = "torch not installed"
        data["plugins"] = {i.name: (i.status if i.status != "error" else f"error: {i.error}")
                           for i in get_plugin_manager().plugin_infos()}
        if json_out:
            out.print_json(json.dumps(data))
            return
        for key, value in data.items():
            if key == "plugins":
                out.print("[bold]plugins[/]")
                for name, status in value.items():  # type: ignore[union-attr]
                    out.print(f"  {name}: {status}", markup=False, highlight=False)  # a plugin's text, not markup
            else:
                out.print(f"[bold]{key}[/]: {value}")

    app.add_typer(plugins_cmd.app, name="plugins")
    for name in ("dataset", "train", "generalist", "eval", "bench"):
        group(app, name)
    _builtin_commands(app)
    pm = get_plugin_manager()
    pm.register_commands(app)
    failed = pm.failed()
    if failed:  # robodual --help says which plugins failed (their commands are missing)
        from rich.markup import escape

        lines = [f"{escape(i.label())}: {escape(i.error)}" for i in failed]
        app.info.epilog = "Plugins in error (see robodual plugins list): " + "; ".join(lines)
    return app


def _builtin_commands(app: typer.Typer) -> None:
    """Commands that ship with the CLI itself (they reach plugins through the registry)."""
    from robodual_cli.commands import builtin

    builtin.register(app)


def main(argv: list[str] | None = None) -> None:
    from typer.exceptions import TyperException  # typer vendors click: its usage errors derive from this

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("ROBODUAL_DEBUG") == "1"
    try:
        command = typer.main.get_command(build_app())
        rc = command.main(args=args, prog_name="robodual", standalone_mode=False)
        if isinstance(rc, int) and rc:  # without standalone mode, typer.Exit(n) is returned, not raised
            sys.exit(rc)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except TyperException as exc:
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        err.print(f"error: {message}", markup=False, highlight=False)
        sys.exit(getattr(exc, "exit_code", 2))
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except RobodualError as exc:
        if debug:
            raise
        err.print(f"error: {exc}", markup=False, highlight=False)
        sys.exit(1)
    except Exception as exc:
        if debug:
            raise
        if _is_client_error(exc):  # robodual_client's errors are one-line messages like RobodualError
            err.print(f"error: {exc}", markup=False, highlight=False)
        else:
            err.print(f"error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", markup=False,
                      highlight=False)
        sys.exit(1)


def _is_client_error(exc: BaseException) -> bool:
    """An error of robodual_client, tested without importing it (the CLI reaches it only through the core)."""
    errors = sys.modules.get("robodual_client.errors")
    return errors is not None and isinstance(exc, errors.ClientError)


if __name__ == "__main__":
    main()
