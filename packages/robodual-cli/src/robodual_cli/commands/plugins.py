"""``robodual plugins``: list, show, install, uninstall."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from robodual_cli.console import err, out
from robodual_core.errors import RobodualError
from robodual_core.plugins import get_plugin_manager, reset_plugin_manager
from robodual_core.registry import KINDS

app = typer.Typer(help="List, show, install and uninstall robodual plugins.", no_args_is_help=True)

PROTECTED = {"robodual-core", "robodual-cli", "robodual-client"}
# The pins scripts/venv.sh installs first: every pip run here is constrained to them, so a plugin can never
# pull another torch (a multi-GB download that breaks the installed torchvision).
TORCH_CONSTRAINTS = ("torch==2.14.1", "torchvision==0.29.1")


def _registers(info) -> str:
    parts = [f"{kind}: {', '.join(names)}" for kind, names in sorted(info.registers.items())]
    if info.commands:
        parts.append("commands")
    return "; ".join(parts) or "-"


@app.command("list")
def list_plugins(json_out: bool = typer.Option(False, "--json", help="Machine-readable output on stdout.")) -> None:
    """Every installed plugin: name, distribution, version, what it registers, status."""
    infos = get_plugin_manager().plugin_infos()
    if json_out:
        out.print_json(json.dumps([vars(i) for i in infos]))
        return
    table = Table(title="robodual plugins (entry-point group 'robodual')")
    for col in ("name", "distribution", "version", "registers", "status"):
        table.add_column(col, overflow="fold")
    for i in infos:
        status = {"ok": "[green]ok[/]", "disabled": "[yellow]disabled[/]"}.get(i.status,
                                                                             f"[red]error[/]: {escape(i.error)}")
        table.add_row(escape(i.name), escape(i.distribution), escape(i.version), escape(_registers(i)), status)
    out.print(table)


@app.command("show")
def show(name: str = typer.Argument(..., help="Plugin name (see `robodual plugins list`).")) -> None:
    """What one plugin registers, with each entry's description or model summary."""
    pm = get_plugin_manager()
    infos = {i.name: i for i in pm.plugin_infos()}
    if name not in infos:
        raise RobodualError(f"unknown plugin '{name}'; installed plugins: {', '.join(sorted(infos)) or '(none)'}")
    info = infos[name]
    out.print(f"[bold]{info.name}[/]  {info.distribution} {info.version}  ({info.value})  status: {info.status}")
    if info.error:
        out.print(f"[red]{escape(info.error)}[/]")
    for kind in KINDS:
        for entry in pm.registry(kind).entries():
            if entry.plugin != name:
                continue
            out.print(f"  {kind[:-1] if kind.endswith('s') else kind} [cyan]{entry.name}[/]: "
                      f"{escape(entry.description)}")
            try:
                target = entry.load()
            except RobodualError as exc:  # one broken entry does not hide the others
                out.print(f"    [red]error[/]: {escape(str(exc))}")
                continue
            describe = getattr(target, "describe", None)
            if callable(describe):
                out.print("    " + str(describe()).replace("\n", "\n    "))


def _pip(*args: str) -> None:
    with tempfile.TemporaryDirectory(prefix="robodual-pip-") as tmp:
        cmd = [sys.executable, "-m", "pip", *args]
        if args[0] == "install":
            constraint = Path(tmp) / "torch-constraints.txt"
            constraint.write_text("\n".join(TORCH_CONSTRAINTS) + "\n")
            cmd[4:4] = ["-c", str(constraint)]
        err.print(f"$ {' '.join(cmd)}", markup=False, highlight=False, style="dim")
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        last = next((line for line in reversed(tail) if line.strip()), "no output")
        raise RobodualError(f"pip {args[0]} failed (exit {proc.returncode}): {last.strip()}")


def _snapshot() -> dict[str, object]:
    reset_plugin_manager()
    importlib.invalidate_caches()
    return {i.name: i for i in get_plugin_manager().plugin_infos()}


@app.command("install")
def install(
    spec: str = typer.Argument(..., help="A package name/requirement, or a local path to a plugin package."),
    editable: bool = typer.Option(False, "--editable", "-e", help="Install a local path in editable mode."),
) -> None:
    """Install a plugin with pip (for this interpreter) and report what it registered."""
    before = _snapshot()
    path = Path(spec)
    if path.exists():
        args = ["install", "-e", str(path.resolve())] if editable else ["install", str(path.resolve())]
    elif spec.startswith((".", "/", "~")):
        raise RobodualError(f"plugin path '{spec}' does not exist")
    else:
        args = ["install", spec]
    _pip(*args)
    after = _snapshot()
    new = [i for n, i in after.items() if n not in before]
    if not new:
        out.print(f"installed '{spec}', but it registers nothing in the 'robodual' entry-point group "
                  "(add [project.entry-points.robodual] to its pyproject.toml)")
        return
    for i in new:
        state = "ok" if i.status == "ok" else f"{i.status}: {i.error}"
        out.print(f"installed plugin [bold]{i.name}[/] ({i.distribution} {i.version}): {_registers(i)} [{state}]")


@app.command("uninstall")
def uninstall(name: str = typer.Argument(..., help="Plugin name or distribution name.")) -> None:
    """Uninstall the distribution that provides a plugin."""
    infos = _snapshot()
    dists = {i.distribution for i in infos.values()}
    if name in infos:
        dist = infos[name].distribution
    elif name in dists:
        dist = name
    else:
        raise RobodualError(f"unknown plugin '{name}'; installed plugins: {', '.join(sorted(infos)) or '(none)'}")
    if dist in PROTECTED:
        raise RobodualError(f"'{dist}' is part of robodual itself and cannot be uninstalled as a plugin")
    _pip("uninstall", "-y", dist)
    gone = [n for n, i in infos.items() if i.distribution == dist]
    out.print(f"uninstalled {dist} (plugins: {', '.join(gone)})")
