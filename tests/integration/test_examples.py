"""Docs are executable: every docs/examples/*.py runs against the test server.

Each example is imported from its file and its ``main(settings)`` awaited with the
test's own namespace, under a timeout; afterwards none of the tasks it started may
still be running. Files whose name starts with ``_`` are skipped.
"""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).parents[2] / "docs" / "examples"
TIMEOUT = 20.0


def _examples() -> list[Path]:
    return sorted(p for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"docs_examples_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_there_are_examples_and_the_readme_lists_each():
    names = [p.name for p in _examples()]
    assert len(names) >= 11
    readme = (EXAMPLES / "README.md").read_text()
    assert [n for n in names if f"({n})" not in readme] == []


@pytest.mark.parametrize("path", _examples(), ids=lambda p: p.name)
async def test_example(path: Path, settings) -> None:
    module = _load(path)
    assert callable(getattr(module, "main", None)), f"{path.name} has no main(settings)"
    assert module.__doc__, f"{path.name} has no docstring saying what it shows"
    assert 'if __name__ == "__main__":' in path.read_text(), f"{path.name} cannot be run as a script"
    before = asyncio.all_tasks()
    await asyncio.wait_for(module.main(settings), TIMEOUT)
    # An example stops what it started: nothing it created is still running.
    left = [t for t in asyncio.all_tasks() - before if t is not asyncio.current_task() and not t.done()]
    if left:
        await asyncio.wait(left, timeout=2.0)
    assert [t.get_name() for t in left if not t.done()] == []
