"""The import rules of docs/architecture.md, checked by import-linter (contracts in pyproject.toml).

Plain ``lint-imports`` cannot check them: grimp builds the graph of ``chronos`` by walking the
package's own directory, and ``chronos.cli`` / ``chronos.tui`` live in cli/ and tui/, joined to
the package only by pyproject's package-dir mapping. So the graph is built here with those
folders mapped in, and import-linter checks the contracts on it.

Full report from the repository root: ``python -m tests.unit.test_architecture``.
"""

from __future__ import annotations

import importlib.util
import io
import os
import sys
import tomllib
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any, Iterator

import pytest

grimp = pytest.importorskip("grimp")  # import-linter's graph library (the dev extra)
pytest.importorskip("importlinter")

from grimp.adaptors.packagefinder import ImportLibPackageFinder  # noqa: E402
from grimp.application.config import settings as grimp_settings  # noqa: E402
from importlinter.application import use_cases  # noqa: E402
from importlinter.application.app_config import settings as linter_settings  # noqa: E402
from importlinter.configuration import configure  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"


def _pyproject() -> dict[str, Any]:
    return tomllib.loads(PYPROJECT.read_text())


def mapped_packages() -> list[str]:
    """Subpackages that pyproject maps to a folder of their own outside their parent's folder
    (chronos.cli -> cli/, chronos.tui -> tui/); nested mappings are walked with their parent."""
    mapping: dict[str, str] = _pyproject()["tool"]["setuptools"].get("package-dir", {})
    tops = []
    for name, folder in sorted(mapping.items()):
        parent = name.rpartition(".")[0]
        if not parent or parent in mapping and Path(folder).parent == Path(mapping[parent]):
            continue
        tops.append(name)
    return tops


class _MappedPackageFinder(ImportLibPackageFinder):
    """grimp's finder, except that a mapped subpackage counts as a root of its own."""

    def determine_package_directories(self, package_name: str, file_system: Any) -> set[str]:
        if package_name in mapped_packages():
            spec = importlib.util.find_spec(package_name)
            assert spec is not None and spec.submodule_search_locations, package_name
            return set(spec.submodule_search_locations)
        return super().determine_package_directories(package_name, file_system)


class _MappedGraphBuilder:
    """import-linter's GraphBuilder with the mapped subpackages added to the roots."""

    def build(self, root_package_names: list[str], cache_dir: str | None,
              include_external_packages: bool = False, exclude_type_checking_imports: bool = False) -> Any:
        roots = list(root_package_names) + [p for p in mapped_packages() if p not in root_package_names]
        previous = grimp_settings.PACKAGE_FINDER
        grimp_settings.configure(PACKAGE_FINDER=_MappedPackageFinder())
        try:
            return grimp.build_graph(*roots, include_external_packages=include_external_packages,
                                     exclude_type_checking_imports=exclude_type_checking_imports,
                                     cache_dir=None)
        finally:
            grimp_settings.configure(PACKAGE_FINDER=previous)


def _session() -> dict[str, Any]:
    return _pyproject()["tool"]["importlinter"]


def _contract(contract_id: str) -> dict[str, Any]:
    for c in _session()["contracts"]:
        if c.get("id") == contract_id:
            return c
    raise KeyError(contract_id)


def build_graph(*, exclude_type_checking_imports: bool = False) -> Any:
    s = _session()
    return _MappedGraphBuilder().build(s["root_packages"], None, include_external_packages=True,
                                       exclude_type_checking_imports=exclude_type_checking_imports)


def check(graph: Any | None = None) -> tuple[bool, str]:
    """(kept, rendered report) for every contract, on ``graph`` or on the code as it is."""
    configure()
    builder = _MappedGraphBuilder()
    if graph is not None:
        class _Fixed:
            def build(self, *args: Any, **kwargs: Any) -> Any:
                return graph
        builder = _Fixed()  # type: ignore[assignment]
    previous = linter_settings.GRAPH_BUILDER
    linter_settings.configure(GRAPH_BUILDER=builder)
    cwd = os.getcwd()
    os.chdir(ROOT)  # import-linter reads and names files relative to here
    try:
        out = io.StringIO()
        with redirect_stdout(out):  # import-linter prints through a rich Console on sys.stdout
            passed = use_cases.lint_imports(config_filename=str(PYPROJECT), cache_dir=None, no_logo=True)
        return passed is use_cases.SUCCESS, out.getvalue()
    finally:
        os.chdir(cwd)
        linter_settings.configure(GRAPH_BUILDER=previous)


def _layer_entries() -> Iterator[str]:
    for layer in _contract("parts")["layers"]:
        for sep in ("|", ":"):
            if sep in layer:
                yield from (m.strip().strip("()") for m in layer.split(sep))
                break
        else:
            yield layer.strip().strip("()")


# --- the tests ----------------------------------------------------------------------------------


def test_the_mapped_folders_are_in_the_graph() -> None:
    graph = build_graph()
    assert {"chronos.cli.main", "chronos.tui.app", "chronos.tui.screens.base"} <= graph.modules


def test_contracts_are_kept() -> None:
    kept, report = check()
    assert kept, report


def test_every_module_is_in_a_part() -> None:
    graph = build_graph()
    entries = set(_layer_entries())
    ours = {m for m in graph.modules if m == "chronos" or m.startswith("chronos.")}
    in_a_part = {m for m in ours if any(m == e or m.startswith(e + ".") for e in entries)}
    loose = sorted(ours - in_a_part)
    # A package split across parts keeps an __init__ that imports nothing at run time: the root
    # (PEP 562: the public names are imported on first use) and chronos.worker (task API below,
    # services above).
    runtime = build_graph(exclude_type_checking_imports=True)
    def imports_ours(m: str) -> bool:
        return any(i == "chronos" or i.startswith("chronos.") for i in runtime.find_modules_directly_imported_by(m))

    split_packages = [m for m in loose if runtime.find_children(m) and not imports_ours(m)]
    unplaced = sorted(set(loose) - set(split_packages))
    assert unplaced == [], (
        f"modules in no part of the architecture: {unplaced}; add each to a layer of the 'parts' "
        "contract in pyproject.toml and to docs/architecture.md"
    )
    assert set(split_packages) <= {"chronos", "chronos.worker"}, split_packages


def _module_path(module: str) -> tuple[str, bool]:
    """(path in the repository, is a package) for a module of the graph."""
    parts = module.split(".")
    folder = {"cli": "cli", "tui": "tui"}.get(parts[1], "") if len(parts) > 1 else ""
    rel = [folder, *parts[2:]] if folder else parts
    path = ROOT.joinpath(*rel)
    if path.is_dir():
        return "/".join(rel) + "/", True
    return "/".join(rel) + ".py", False


def _documented_paths() -> set[str]:
    """Paths the parts table of docs/architecture.md names; ``x.py`` after ``dir/y.py`` in a row is ``dir/x.py``."""
    import re

    named: set[str] = set()
    for line in (ROOT / "docs" / "architecture.md").read_text().splitlines():
        if not line.startswith("|"):
            continue
        folder = ""
        for token in re.findall(r"`([\w./]+)`", line):
            if "/" in token:
                folder = token.rsplit("/", 1)[0] + "/" if not token.endswith("/") else ""
                named.add(token)
            elif token.endswith(".py") and folder:
                named.add(folder + token)
    return named


def test_the_architecture_doc_names_every_module_and_only_real_files() -> None:
    graph = build_graph()
    named = _documented_paths()
    missing = []
    for m in sorted(graph.modules):
        if not m.startswith("chronos.") or m in ("chronos.worker",):
            continue
        path, _ = _module_path(m)
        folders = {path.rsplit("/", i)[0] + "/" for i in range(1, path.count("/") + 1)}
        if path not in named and not folders & named:
            missing.append(path)
    assert missing == [], f"docs/architecture.md does not place {missing} in a part"
    stale = sorted(p for p in named if (p.endswith(".py") or p.endswith("/")) and not (ROOT / p).exists())
    assert stale == [], f"docs/architecture.md names files that do not exist: {stale}"


def test_a_forbidden_import_breaks_the_contracts() -> None:
    """The check can fail: each rule, broken once on a copy of the real graph."""
    breaches = [
        ("chronos.codec", "nats", "pure-core"),
        ("chronos.tui.widgets.job_table", "chronos.connection", "console-through-client"),
        ("chronos.models", "chronos.client", "parts"),
        ("chronos.states", "chronos.codec", "acyclic"),  # codec -> models -> states: a cycle
        ("chronos.worker.executor", "chronos.client", "services-not-client"),
        ("chronos.client", "chronos.worker.executor", "client-not-services"),
        ("chronos.cli.jobs", "chronos.worker.service", "cli-no-services"),
        ("chronos.jobs", "textual", "library-no-ui"),
    ]
    names = {c["id"]: c["name"] for c in _session()["contracts"]}
    for importer, imported, contract_id in breaches:
        graph = build_graph()
        graph.add_import(importer=importer, imported=imported, line_number=1, line_contents="import x")
        kept, report = check(graph)
        assert not kept, f"{importer} -> {imported} was not caught:\n{report}"
        broken = " ".join(report.partition("Broken contracts")[2].split())  # rich wraps long names
        assert names[contract_id] in broken, f"{importer} -> {imported}: {contract_id} kept:\n{report}"


def test_importing_the_pure_core_loads_no_nats() -> None:
    """What the contract says, seen at run time in a fresh interpreter."""
    import subprocess

    code = ("import sys, chronos.codec, chronos.cron, chronos.config, chronos.states, chronos.lease; "
            "print(sorted(m for m in sys.modules if m == 'nats' or m.startswith('nats.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout


if __name__ == "__main__":
    ok, text = check()
    print(text)
    sys.exit(0 if ok else 1)
