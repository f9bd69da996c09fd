"""The package's one-way layers and light imports.

The layers are written once, as the import-linter contract in pyproject.toml
(`[tool.importlinter]`); these tests run it, show that it catches an upward
import (in a function body and under TYPE_CHECKING too), and check that
importing the settings or the core loads no server, web stack or launcher.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "raycluster"
LINT = "from importlinter.cli import lint_imports_command; lint_imports_command()"


def _lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run(
        [sys.executable, "-c", LINT, "--no-cache"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_the_layer_contract_is_kept() -> None:
    proc = _lint(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 kept, 0 broken" in proc.stdout


PLANTED = {
    "in-a-function": (
        "\n\ndef _planted() -> None:\n    from raycluster.actors import Tier  # noqa: F401\n"
    ),
    "type-checking": (
        "\n\nfrom typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
        "    from raycluster.actors import Tier  # noqa: F401\n"
    ),
}


@pytest.mark.parametrize("how", sorted(PLANTED))
def test_an_upward_import_breaks_the_contract_naming_it(tmp_path: Path, how: str) -> None:
    shutil.copytree(PACKAGE, tmp_path / "raycluster", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "raycluster" / "livequery" / "filter.py"
    target.write_text(target.read_text() + PLANTED[how])
    proc = _lint(tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "raycluster.livequery is not allowed to import raycluster.actors" in out
    assert "raycluster.livequery.filter -> raycluster.actors" in out


# Modules that importing the settings or the core must not load.
HEAVY = ("ray", "starlette", "uvicorn", "httpx", "websockets", "redis", "psycopg", "psycopg2")
HEAVY_OWN = ("raycluster.redis.local_cluster", "raycluster.redis.local", "raycluster.actors")


@pytest.mark.parametrize("module", ["raycluster.config", "raycluster.livequery", "raycluster"])
def test_importing_the_settings_or_the_core_loads_no_servers(module: str) -> None:
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    loaded = set(json.loads(proc.stdout))
    heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY or m in HEAVY_OWN)
    assert heavy == [], f"importing {module} loaded {heavy}"


def _private_imports() -> list[str]:
    """`module -> target` for each import of another package's underscore module."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        module = ".".join(parts)
        home = ".".join(parts[:2])  # raycluster.<package or top-level module>
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for t in targets:
                tparts = t.split(".")
                if tparts[0] != "raycluster" or len(tparts) < 3:
                    continue
                private = any(p.startswith("_") for p in tparts[2:])
                if private and ".".join(tparts[:2]) != home:
                    found.append(f"{module} -> {t}")
    return found


def test_no_module_reaches_into_another_packages_private_modules() -> None:
    assert _private_imports() == []
