"""``robodual plugins``: list, show, install, uninstall."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from robodual_cli.console import err, out
from robodual_core.errors import RobodualError
from robodual_core.plugins import (
    FIRST_PARTY,
    get_plugin_manager,
    normalize_name,
    plugin_code,
    reraise_real_interrupt,
    reset_plugin_manager,
)
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
    out.print(f"[bold]{escape(info.name)}[/]  {escape(info.distribution)} {escape(info.version)}  "
              f"({escape(info.value)})  status: {info.status}")
    if info.error:
        out.print(f"[red]{escape(info.error)}[/]")
    for kind in KINDS:
        for entry in pm.registry(kind).entries():
            if entry.plugin != name:
                continue
            out.print(f"  {kind[:-1] if kind.endswith('s') else kind} [cyan]{escape(entry.name)}[/]: "
                      f"{escape(entry.description)}")
            try:
                with plugin_code():
                    target = entry.load()
            except BaseException as exc:  # one broken entry does not hide the others, nor ends the command
                reraise_real_interrupt(exc)
                text = str(exc) if isinstance(exc, RobodualError) else f"{type(exc).__name__}: {exc}"
                out.print(f"    [red]error[/]: {escape((text.strip().splitlines() or [''])[0][:300])}")
                continue
            try:
                with plugin_code():
                    describe = getattr(target, "describe", None)
                    text = str(describe()) if callable(describe) else None
            except BaseException as exc:  # a plugin's describe() cannot end the command or print a traceback
                reraise_real_interrupt(exc)
                first = (str(exc).strip().splitlines() or [""])[0][:200]
                out.print(f"    [red]error[/]: {kind[:-1] if kind.endswith('s') else kind} '{escape(entry.name)}'"
                          f".describe() failed: {type(exc).__name__}{': ' + escape(first) if first else ''}")
                continue
            if text is not None:
                out.print("    " + escape(text).replace("\n", "\n    "))


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
        conflict = _conflict(f"{proc.stdout or ''}\n{proc.stderr or ''}")
        if conflict:
            raise RobodualError(f"pip {args[0]} failed (exit {proc.returncode}): {conflict}")
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        last = next((line for line in reversed(tail) if line.strip()), "no output")
        raise RobodualError(f"pip {args[0]} failed (exit {proc.returncode}): {last.strip()}")


def _conflict(text: str) -> str:
    """pip's 'ResolutionImpossible' in one line: which requirement conflicts (with the torch pins, named)."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "The conflict is caused by:"), None)
    if start is None:
        return ""
    causes = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        causes.append(line.strip())
    pinned = {c.split("==")[0]: c for c in TORCH_CONSTRAINTS}
    wants = [c for c in causes if " depends on " in c]
    for cause in wants:
        required = re.split(r"[\s<>=!~;\[]", cause.split(" depends on ", 1)[1].strip(), maxsplit=1)[0].lower()
        if required in pinned:
            return (f"{cause}, which conflicts with the pinned {pinned[required]} (this set-up's {required}; "
                    f"robodual installs plugins against it: use a plugin release that accepts {pinned[required]})")
    return "conflicting dependencies: " + "; ".join(causes) if causes else ""


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

    def state(i) -> tuple:
        return (i.distribution, i.version, i.location, i.value, i.status, i.error)

    new = [i for n, i in after.items() if n not in before or state(before[n]) != state(i)]
    if not new:
        out.print(f"installed '{spec}', but it registers nothing in the 'robodual' entry-point group "
                  "(add [project.entry-points.robodual] to its pyproject.toml)")
        return
    for i in new:
        status = "ok" if i.status == "ok" else f"{i.status}: {i.error}"
        out.print(f"installed plugin [bold]{escape(i.name)}[/] ({escape(i.distribution)} {escape(i.version)}): "
                  f"{escape(_registers(i))} \\[{escape(status)}]")
    broken = [i for i in new if i.status == "error"]
    if broken:  # pip succeeded, but what it installed does not load: not a success
        first = broken[0]
        more = f" (and {len(broken) - 1} more)" if len(broken) > 1 else ""
        raise RobodualError(f"'{spec}' was installed, but plugin {first.label()} does not load{more}: {first.error} "
                            f"(robodual plugins uninstall {first.distribution})")


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
    owner = next((i for i in infos.values() if i.distribution == dist), None)
    if owner is not None and not owner.builtin and normalize_name(dist) in FIRST_PARTY:  # pip would pick robodual's own
        raise RobodualError(f"'{dist}' at {owner.location} is named like robodual's own '{normalize_name(dist)}', so pip "
                            f"would uninstall robodual's; remove it from {owner.location} by hand")
    if normalize_name(dist) in PROTECTED:
        raise RobodualError(f"'{dist}' is part of robodual itself and cannot be uninstalled as a plugin")
    _pip("uninstall", "-y", dist)
    gone = [n for n, i in infos.items() if i.distribution == dist]
    out.print(f"uninstalled {dist} (plugins: {', '.join(gone)})")
