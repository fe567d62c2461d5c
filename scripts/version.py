#!/usr/bin/env python3
"""One version for every robodual distribution.

The version is ``robodual_core.__version__`` (what ``robodual version`` prints). Every place that repeats it must
agree: the ``version`` of each ``packages/*/pyproject.toml``, every ``__version__`` in ``packages/*/src/*/__init__.py``
and every ``robodual-*==X`` pin (the ``robodual`` meta-distribution pins its parts exactly).

    python scripts/version.py            # print the version
    python scripts/version.py check      # exit 1 naming each place that disagrees (tests/packaging runs it)
    python scripts/version.py set 0.2.0  # rewrite every place (only the version strings change)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE_INIT = ROOT / "packages" / "robodual-core" / "src" / "robodual_core" / "__init__.py"

_VERSION = r'[0-9][0-9A-Za-z.+-]*'
PATTERNS = {
    "pyproject": re.compile(rf'^(version = ")({_VERSION})(")', re.M),
    "__version__": re.compile(rf'^(__version__ = ")({_VERSION})(")', re.M),
    "pin": re.compile(rf'("robodual-[a-z]+(?:\[[a-z0-9,-]+\])?==)({_VERSION})(")'),
}


def files() -> list[tuple[Path, str]]:
    """Every file holding the version, with the kind of place it is."""
    out = [(p, "pyproject") for p in sorted(ROOT.glob("packages/*/pyproject.toml"))]
    out += [(p, "__version__") for p in sorted(ROOT.glob("packages/*/src/*/__init__.py"))
            if PATTERNS["__version__"].search(p.read_text())]
    return out


def current() -> str:
    match = PATTERNS["__version__"].search(CORE_INIT.read_text())
    if not match:
        raise SystemExit(f"{CORE_INIT.relative_to(ROOT)} has no __version__")
    return match.group(2)


def places() -> list[tuple[str, str]]:
    """``(where, version)`` for every occurrence: ``packages/robodual/pyproject.toml: robodual-core==`` and so on."""
    found = []
    for path, kind in files():
        text, rel = path.read_text(), path.relative_to(ROOT)
        kinds = ("pyproject", "pin") if kind == "pyproject" else (kind,)
        for k in kinds:
            for m in PATTERNS[k].finditer(text):
                label = m.group(1).strip('" ')
                found.append((f"{rel}: {label.removesuffix(' =')}", m.group(2)))
    return found


def mismatches(version: str | None = None) -> list[str]:
    version = version or current()
    return [f"{where} has {found}, expected {version}" for where, found in places() if found != version]


def set_version(version: str) -> None:
    if not re.fullmatch(_VERSION, version):
        raise SystemExit(f"not a version: {version!r}")
    for path, kind in files():
        text = path.read_text()
        for k in (("pyproject", "pin") if kind == "pyproject" else (kind,)):
            text = PATTERNS[k].sub(lambda m: m.group(1) + version + m.group(3), text)
        path.write_text(text)


def main(argv: list[str]) -> int:
    if not argv:
        print(current())
        return 0
    if argv[0] == "check" and len(argv) == 1:
        bad = mismatches()
        for line in bad:
            print(line, file=sys.stderr)
        if not bad:
            print(f"robodual {current()}: {len(places())} places agree")
        return 1 if bad else 0
    if argv[0] == "set" and len(argv) == 2:
        set_version(argv[1])
        return main(["check"])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
