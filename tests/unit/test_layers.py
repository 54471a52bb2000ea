"""The floors of the house hold: the pure core and the check loop load neither kopf nor a
Kubernetes client nor an HTTP library, and the core imports nothing from the other floors."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "operator" / "apiservice_operator"
CORE = sorted((PACKAGE / "core").rglob("*.py"))
CHECK = ["apiservice_operator.check.controller", "apiservice_operator.check.pipeline",
         "apiservice_operator.serve.explain"]
EDGE_LIBRARIES = ("kopf", "kubernetes_asyncio", "aiohttp", "httpx", "httpcore")


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def loaded_after_import(*modules: str) -> set[str]:
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules)
            + "print(' '.join(sorted({n.split('.')[0] for n in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         cwd=PACKAGE.parents[1]).stdout
    return set(out.split())


def test_core_and_controller_load_neither_kopf_nor_a_kubernetes_client_nor_http() -> None:
    core = [module_name(p) for p in CORE]
    loaded = loaded_after_import(*core, *CHECK)
    assert not loaded & set(EDGE_LIBRARIES), sorted(loaded & set(EDGE_LIBRARIES))


def test_the_plugin_starts_without_kopf() -> None:
    assert "kopf" not in loaded_after_import("apiservice_operator.plugin")


@pytest.mark.parametrize("path", CORE, ids=[module_name(p) for p in CORE])
def test_the_pure_core_imports_only_the_core(path: pathlib.Path) -> None:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("apiservice_operator"):
            names = [node.module] if node.module != "apiservice_operator" else [
                f"apiservice_operator.{a.name}" for a in node.names]
            for name in names:
                assert name.startswith("apiservice_operator.core") or name == "apiservice_operator.__version__", (
                    f"{path.name} imports {name}")
        if isinstance(node, ast.Import):
            for alias in node.names:
                assert alias.name.split(".")[0] not in EDGE_LIBRARIES, f"{path.name} imports {alias.name}"


def test_every_module_says_what_it_is_for() -> None:
    for path in PACKAGE.rglob("*.py"):
        assert ast.get_docstring(ast.parse(path.read_text())), f"{path.relative_to(PACKAGE)} has no docstring"


def test_no_module_is_over_350_lines() -> None:
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 350}
    assert not long, long
