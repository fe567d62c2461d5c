"""DESIGN.md section 1: every robodual import points at robodual_core (the microkernel rule)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "packages"
PACKAGES = ["core", "sensors", "specialist", "generalist", "envs", "cli", "client"]


def robodual_imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("robodual_")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("robodual_"):
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("pkg", PACKAGES)
def test_packages_import_only_the_kernel_and_themselves(pkg):
    src = ROOT / f"robodual-{pkg}" / "src"
    # the torch-free robot client sits below the kernel: it imports no robodual package, anyone may import it
    allowed = {f"robodual_{pkg}"} if pkg == "client" else {"robodual_core", "robodual_client", f"robodual_{pkg}"}
    bad = []
    for path in src.rglob("*.py"):
        for lineno, module in robodual_imports(path):
            if module.split(".")[0] not in allowed:
                bad.append(f"{path.relative_to(ROOT)}:{lineno} imports {module}")
    assert not bad, "kernel rule broken (reach other plugins through the registry):\n" + "\n".join(bad)
