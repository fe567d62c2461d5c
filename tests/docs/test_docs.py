"""The docs site (issue 31): `mkdocs build --strict` passes (no broken link or anchor), the configuration reference
is the one generated from the typed configs and names every config dataclass, and the config examples in the docs
load. The docs' commands are checked in tests/cli/test_contract.py (run by a test, or marked `# needs: ...`).
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from robodual_core.config import load_config, ranged

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"robodual_docs_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# -- the configuration reference --------------------------------------------------------------------------------
def test_the_configuration_reference_is_generated_from_the_configs():
    reference = _script("config_reference")
    assert (DOCS / "configuration.md").read_text() == reference.render(), \
        "docs/configuration.md is out of date: run python scripts/config_reference.py"


def test_the_configuration_reference_names_every_config_dataclass():
    """Every config dataclass (a class with a ranged key: what --config/--set fill) is in the reference, in a
    section of its own (scripts/config_reference.py SECTIONS) or reached from one."""
    reference = _script("config_reference")
    documented = {f"{c.__module__}:{c.__qualname__}" for c in reference.documented_classes()}
    found = set()
    for path in ROOT.glob("packages/*/src/**/*.py"):
        text = path.read_text()
        module = ".".join(path.relative_to(next(p for p in path.parents if p.name == "src")).with_suffix("").parts)
        for node in ast.parse(text).body:
            if isinstance(node, ast.ClassDef) and "ranged(" in ast.get_source_segment(text, node):
                found.add(f"{module.removesuffix('.__init__')}:{node.name}")
    assert len(found) >= 10 and found <= documented, sorted(found - documented)
    for name in ("SpecialistTrainConfig", "GeneralistTrainConfig", "TrainerConfig", "TinyConfig", "DemoConfig"):
        assert any(c.endswith(":" + name) for c in documented), name
    page = (DOCS / "configuration.md").read_text()
    for key in ("model.guidance.scale", "model.tiny.hidden_size", "trainer.ema_decay", "eval_episodes"):
        assert f"`{key}`" in page, key


@dataclasses.dataclass
class Inner:
    rate: float = ranged(0.5, ge=0, lt=1)  # how often
    # a comment above
    mode: typing.Literal["a", "b"] = "a"


@dataclasses.dataclass
class Outer:
    steps: int = ranged(10, ge=1)
    names: list[str] = dataclasses.field(default_factory=lambda: ["x"])
    path: str | None = None
    inner: Inner = dataclasses.field(default_factory=Inner)


def test_the_reference_renders_each_key_with_type_default_range_and_notes():
    reference = _script("config_reference")
    rows = reference.table(Outer)
    assert rows == [
        "| `steps` | int | `10` | an integer >= 1 |  |",
        '| `names` | list[str] | `["x"]` |  |  |',
        "| `path` | str \\| null | `null` |  |  |",
        "| `inner.rate` | float | `0.5` | a finite number in [0, 1) | how often |",
        '| `inner.mode` | "a" \\| "b" | `"a"` | one of the type\'s values | a comment above |',
    ]


# -- config examples in the docs --------------------------------------------------------------------------------
def _config_blocks() -> list[tuple[str, str]]:
    out = []
    for path in sorted(DOCS.rglob("*.md")):
        for block in re.findall(r"^```yaml\n(.*?)^```", path.read_text(), re.M | re.S):
            if block.startswith("# specialist config"):
                out.append((f"{path.relative_to(ROOT)}: {block.splitlines()[0]}", block))
    return out


def test_the_specialist_configs_in_the_docs_load(tmp_path):
    """Every ```yaml block that starts `# specialist config` is a valid `train specialist --config` file, sensors
    included (their options are checked against the sensor's config as training does)."""
    from robodual_sensors.config import PRESETS, sensor_config
    from robodual_specialist.config import SpecialistTrainConfig

    blocks = _config_blocks()
    assert len(blocks) >= 2, blocks
    for where, text in blocks:
        path = tmp_path / "config.yaml"
        path.write_text(text)
        cfg = load_config(SpecialistTrainConfig, path)
        assert cfg.model.sensors, where
        for sensor in cfg.model.sensors:
            assert sensor.name in PRESETS, f"{where}: sensor {sensor.name}"
            sensor_config(sensor.name, **sensor.options)
        assert yaml.safe_load(text)  # and it is what a user would copy


# -- the site ---------------------------------------------------------------------------------------------------
def _mkdocs(config: Path, site: Path) -> subprocess.CompletedProcess:
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
                          capture_output=True, text=True, timeout=600, env=env)


def test_mkdocs_build_strict(tmp_path):
    proc = _mkdocs(ROOT / "mkdocs.yml", tmp_path / "site")
    assert proc.returncode == 0, proc.stderr[-4000:]
    for page in ("index.html", "getting-started/index.html", "your-robot/index.html", "calvin/index.html",
                 "runtime/index.html", "plugins/index.html", "configuration/index.html", "results/index.html"):
        assert (tmp_path / "site" / page).is_file(), page
    assert "model.guidance.scale" in (tmp_path / "site" / "configuration" / "index.html").read_text()


def test_mkdocs_strict_refuses_a_broken_link(tmp_path):
    """The same settings as mkdocs.yml on a copy of two pages, one with a link to a page that does not exist."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(DOCS / "index.md", docs / "index.md")
    (docs / "cli.md").write_text("# CLI\n\nSee [the missing page](missing.md) and [a section](index.md#no-such).\n")
    config.update(docs_dir=str(docs), nav=[{"Home": "index.md"}, {"CLI": "cli.md"}])
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    proc = _mkdocs(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert proc.returncode != 0 and "missing.md" in proc.stderr, proc.stderr[-3000:]
