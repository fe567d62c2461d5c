#!/usr/bin/env python3
"""Carry a long study's finished results to another machine (or a fresh checkout) without its checkpoints.

A study folder (``robodual study ...``) holds training runs with checkpoints (tens of MB each), generated
datasets and small result files. When a study spans sessions on machines that may not keep ``studies/``, this
script packs what cannot be redone cheaply (every stage's record, configs, logs, evaluation results) and a
SHA-256 manifest of every checkpoint file. Restoring it marks the stages that produced the dropped files (dataset
generation, caches, trainings, derived runs) as not done, so the study's usual command reruns them. Their new
checkpoints are then checked against the manifest (``verify``): CPU training at a fixed seed and thread count is
expected to repeat bit for bit, and a mismatch is reported, never hidden. Finished evaluations are not rerun.

    python scripts/study_carry.py pack studies/latency-base studies/latency-sweep --out carry.tar.gz
    python scripts/study_carry.py restore carry.tar.gz --into studies
    python scripts/study_carry.py verify carry.tar.gz --into studies     # after the study's command reran them
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import tarfile
import tempfile
import zlib
from pathlib import Path

from robodual_core.io import atomic_write_json

# stages whose outputs the pack drops (the study reruns them): name prefixes, as robodual's studies name them
REDONE = ("generate ", "cache ", "train ", "derive ")
MANIFEST = "carry-manifest.json"


def sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def kept(rel: Path) -> bool:
    """Whether a study folder's file goes into the pack: everything but datasets, checkpoints and videos."""
    parts = rel.parts
    return not (parts[0] == "data" or "checkpoints" in parts or rel.suffix in (".mp4", ".gif")
                or any(p.endswith(".partial") for p in parts))


def pack(folders: list[Path], out: Path) -> dict:
    for folder in folders:
        if not (folder / "study.json").is_file() or not (folder / "progress.json").is_file():
            raise SystemExit(f"error: '{folder}' is not a study folder: expected study.json and progress.json in it")
    manifest: dict = {"studies": {}}
    tmp = tempfile.NamedTemporaryFile(dir=out.parent, prefix=out.name, suffix=".tmp", delete=False)
    try:
        with tmp, tarfile.open(fileobj=tmp, mode="w:gz") as tar:
            for folder in folders:
                sums, files = {}, 0
                for path in sorted(folder.rglob("*")):
                    if not path.is_file() or path.is_symlink():
                        continue
                    rel = path.relative_to(folder)
                    if "checkpoints" in rel.parts and rel.suffix == ".safetensors":
                        sums[rel.as_posix()] = sha256(path)
                    if kept(rel):
                        tar.add(path, arcname=f"{folder.name}/{rel.as_posix()}", recursive=False)
                        files += 1
                manifest["studies"][folder.name] = {"files": files, "checkpoints": sums}
            data = json.dumps(manifest, indent=1, sort_keys=True).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        os.replace(tmp.name, out)
    finally:
        Path(tmp.name).unlink(missing_ok=True)  # a failed pack leaves nothing behind
    return manifest


def read_manifest(archive: Path) -> dict:
    try:
        with tarfile.open(archive, "r:gz") as tar:
            member = tar.extractfile(MANIFEST)
            return json.loads(member.read())
    except (OSError, EOFError, zlib.error, tarfile.TarError, KeyError, AttributeError, ValueError) as exc:
        raise SystemExit(f"error: '{archive}': expected a study_carry.py pack (a .tar.gz with {MANIFEST}), "
                         f"could not read it: {exc}") from None


def restore(archive: Path, into: Path) -> dict[str, list[str]]:
    manifest = read_manifest(archive)
    for name in manifest["studies"]:
        if (into / name / "study.json").exists():
            raise SystemExit(f"error: '{into / name}' already holds a study; restore into an empty place")
    into.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = [m for m in tar.getmembers() if m.name != MANIFEST]
            # the data filter refuses links, devices and paths outside `into`
            tar.extractall(into, members=members, filter="data")
    except (OSError, EOFError, zlib.error, tarfile.TarError) as exc:
        raise SystemExit(f"error: '{archive}': cannot restore it into '{into}': {exc}") from None
    redo: dict[str, list[str]] = {}
    for name in manifest["studies"]:
        progress = into / name / "progress.json"
        data = json.loads(progress.read_text())
        redo[name] = [s for s in data["stages"] if s.startswith(REDONE)]
        data["stages"] = {s: v for s, v in data["stages"].items() if s not in redo[name]}
        atomic_write_json(progress, data)
    return redo


def verify(archive: Path, into: Path) -> list[str]:
    """The checkpoint files whose SHA-256 differs from the pack's (or that are missing)."""
    bad = []
    for name, entry in read_manifest(archive)["studies"].items():
        for rel, digest in entry["checkpoints"].items():
            path = into / name / rel
            if not path.is_file():
                bad.append(f"{name}/{rel}: missing")
            elif sha256(path) != digest:
                bad.append(f"{name}/{rel}: sha256 differs")
    return bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="pack study folders' results and checkpoint checksums")
    p.add_argument("folders", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    for cmd in ("restore", "verify"):
        s = sub.add_parser(cmd)
        s.add_argument("archive", type=Path)
        s.add_argument("--into", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.cmd == "pack":
        manifest = pack(args.folders, args.out)
        for name, entry in manifest["studies"].items():
            print(f"{name}: {entry['files']} files, {len(entry['checkpoints'])} checkpoint checksums")
        print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")
        return 0
    if args.cmd == "restore":
        for name, stages in restore(args.archive, args.into).items():
            print(f"{args.into / name}: {len(stages)} stages to rerun: {', '.join(stages) or 'none'}")
        return 0
    bad = verify(args.archive, args.into)
    for line in bad:
        print(line)
    print("every checkpoint matches" if not bad else f"{len(bad)} checkpoint files differ from the pack")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
