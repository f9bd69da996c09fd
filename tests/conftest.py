"""What every test folder shares: the `--long` option, markers by folder, the fixtures
of `support.fixtures` (one private Redis for the session)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ("support.fixtures",)

TESTS = Path(__file__).resolve().parent

# What the tests of each folder need, as markers (`-m "not ray"` deselects by need).
FOLDER_MARKS: dict[str, tuple[str, ...]] = {
    "cli": ("redis",),
    "edge": ("redis",),
    "postgres": ("postgres", "redis"),
    "ray": ("ray", "redis"),
    "redis": ("redis",),
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long", action="store_true", default=False, help="run long randomized workloads"
    )


def pytest_itemcollected(item: pytest.Item) -> None:
    parts = item.path.resolve().relative_to(TESTS).parts  # (folder, ..., file)
    for name in FOLDER_MARKS.get(parts[0], ()) if len(parts) > 1 else ():
        item.add_marker(name)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--long"):
        return
    skip = pytest.mark.skip(reason="long run: pass --long")
    for item in items:
        if "long" in item.keywords:
            item.add_marker(skip)
