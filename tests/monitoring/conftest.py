"""The monitoring tests need Debian's `prometheus` package (prometheus, promtool). Missing in CI it
is a failure (.ci/run installs it, so a skip there would hide a broken install step); elsewhere a
skip that says how to get it."""

from __future__ import annotations

import os

import pytest

from tests.cluster.prometheus import INSTALL_HINT, find


def _tool(name: str) -> str:
    path = find(name)
    if path is None:
        reason = f"{name} not found: {INSTALL_HINT}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (.ci/run should have installed it)", pytrace=False)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    return _tool("promtool")


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    return _tool("prometheus")
