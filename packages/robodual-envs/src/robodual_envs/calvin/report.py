"""The tables ``robodual eval calvin`` prints (``--json`` prints the results themselves)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def print_results(report: dict[str, Any], out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"CALVIN: {report['num_chains']} chains (success rate by number of tasks completed in a row)")
    for i in range(1, 6):
        table.add_column(str(i), justify="right")
    table.add_column("Avg. Len.", justify="right")
    table.add_row(*(f"{report['chain_sr'][str(i)] * 100:.1f}%" for i in range(1, 6)), f"{report['avg_len']:.2f}")
    console.print(table)
    tasks = Table(title="per task")
    for name in ("task", "success", "attempted", "rate"):
        tasks.add_column(name, justify="left" if name == "task" else "right")
    for name, info in sorted(report["task_info"].items(), key=lambda kv: -kv[1]["success_rate"]):
        tasks.add_row(name, str(info["success"]), str(info["total"]), f"{info['success_rate'] * 100:.1f}%")
    console.print(tasks)
    perf = report["performance"]
    if perf["chains_run"]:
        console.print(f"{perf['chains_run']} chains run with {perf['workers']} worker(s) in {perf['wall_s']:.1f} s: "
                      f"simulator {perf['sim_steps_per_s'] or 0:.1f} steps/s ({(perf['sim_share'] or 0) * 100:.0f}% "
                      f"of the time), policy {perf['policy_steps_per_s'] or 0:.1f} steps/s "
                      f"({(perf['policy_share'] or 0) * 100:.0f}%); about {perf['estimated_hours_for_1000_chains']:.1f} "
                      "h for 1000 chains at this rate")
    if report["errors"]:
        console.print(f"[yellow]{len(report['errors'])} chain(s) failed with an error[/] (counted as 0 completed), "
                      f"first: chain {report['errors'][0]['chain']}: {report['errors'][0]['error']}")
    console.print(f"results: {out / 'results.json'}")
