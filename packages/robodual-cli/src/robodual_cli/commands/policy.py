"""``robodual policy export RUN OUT``: a self-contained policy folder with a model card (robodual_core.policy_folder)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from robodual_cli.console import err, out
from robodual_core.cli_groups import group

HELP = "Export trained policies as self-contained folders with a model card."


def register(app: typer.Typer) -> None:
    policy = group(app, "policy")
    policy.info.help = HELP

    @policy.command("export")
    def export(
        run: Path = typer.Argument(..., metavar="RUN", help="A specialist run or checkpoint folder (with the generalist it was "
                                   "trained with: a dual-system policy), or a generalist run or checkpoint folder."),
        out_dir: Path = typer.Argument(..., metavar="OUT", help="The policy folder to write (README.md model card, policy.json, "
                                       "checkpoints, configs, evaluation results)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it is a policy folder."),
        json_out: bool = typer.Option(False, "--json", help="Print the manifest (policy.json) on stdout."),
    ) -> None:
        """Write RUN's policy to OUT: the specialist and the generalist it needs (byte-for-byte copies, training
        state left out), configs, normalization statistics, evaluation results and a README.md model card with
        YAML metadata. `--policy OUT` and `robodual serve --policy OUT` load it; every file's sha256 is checked."""
        from robodual_core.policy_folder import export_policy

        manifest = export_policy(run, out_dir, overwrite=overwrite)
        if json_out:
            out.print_json(json.dumps(manifest))
            return
        size = sum(f["bytes"] for f in manifest["files"].values())
        base = manifest.get("requires_base")
        out.print(f"{manifest['kind']} policy written to {out_dir} ({len(manifest['files'])} files, "
                  f"{size / 2**20:.1f} MiB); model card {out_dir / 'README.md'}")
        if base:
            err.print(f"note: the generalist is a LoRA adapter on '{base['base']}', which is not copied; it must be "
                      "present where the policy is loaded", markup=False, highlight=False)
