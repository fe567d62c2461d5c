"""The manifest of a policy folder (``policy.json``; robodual_core.policy_folder writes it): a leaf module, so
robodual_core.checkpoint can find the checkpoint in a policy folder without importing the exporter."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from robodual_core.errors import RobodualError

MANIFEST = "policy.json"
FORMAT = 1


def is_policy_folder(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_manifest(path: str | Path) -> dict[str, Any]:
    file = Path(path) / MANIFEST
    try:
        manifest = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise RobodualError(f"policy manifest '{file}' is unreadable ({type(exc).__name__}); expected the JSON "
                            "that robodual policy export writes") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or \
            manifest.get("checkpoint") not in ("specialist", "generalist"):
        raise RobodualError(f"policy manifest '{file}': expected format {FORMAT} with checkpoint 'specialist' or "
                            f"'generalist', found format {manifest.get('format') if isinstance(manifest, dict) else manifest!r}")
    return manifest


def policy_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder a policy folder's policy is loaded from (its specialist, or its only generalist)."""
    path = Path(path)
    ckpt = path / read_manifest(path)["checkpoint"]
    if not (ckpt / "model.safetensors").is_file():
        raise RobodualError(f"policy folder '{path}' lacks {ckpt.name}/model.safetensors; export it again")
    return ckpt


def verify_policy_folder(path: str | Path) -> dict[str, Any]:
    """Check every file the manifest lists (size, then sha256); one line naming the first that differs."""
    path = Path(path)
    manifest = read_manifest(path)
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise RobodualError(f"policy manifest '{path / MANIFEST}' lists no files; export the policy again")
    for rel, want in sorted(files.items()):
        file = path / rel
        if not file.is_file():
            raise RobodualError(f"policy folder '{path}': '{rel}' is missing (listed in {MANIFEST}); export it again")
        if file.stat().st_size != want.get("bytes") or _sha256(file) != want.get("sha256"):
            raise RobodualError(f"policy folder '{path}': '{rel}' does not match its sha256 in {MANIFEST} (changed or "
                                "damaged since export); export the policy again")
    return manifest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
