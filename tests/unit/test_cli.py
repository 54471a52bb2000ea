"""The command line: every flag documented with its environment twin; bad settings refused clearly."""

from __future__ import annotations

import subprocess
import sys

import pytest

from apiservice_operator.__main__ import build_parser
from apiservice_operator.core.settings import _FLAGS, Settings, add_arguments, env_name, from_args


def run_help() -> str:
    return subprocess.run(
        [sys.executable, "-m", "apiservice_operator", "run", "--help"],
        capture_output=True, text=True, check=True, env={"PYTHONPATH": "operator", "COLUMNS": "200"},
    ).stdout


def test_help_lists_every_flag_with_its_environment_twin() -> None:
    text = run_help()
    for flag, _, _ in _FLAGS:
        assert f"--{flag}" in text
        assert env_name(flag) in text
    for required in ("--probe-timeout", "--probe-interval", "--concurrency", "--condition-prefix",
                     "--selector", "--log-format", "--kubeconfig"):
        assert required in text


@pytest.mark.parametrize(("flag", "env_value", "attr", "expected"), [
    ("probe-timeout", "3.5", "probe_timeout", 3.5),
    ("probe-interval", "20", "probe_interval", 20.0),
    ("concurrency", "7", "concurrency", 7),
    ("condition-prefix", "example.com", "condition_prefix", "example.com"),
    ("selector", "team=a", "selector", "team=a"),
    ("log-format", "json", "log_format", "json"),
])
def test_environment_variable_sets_the_flag(flag: str, env_value: str, attr: str, expected: object) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser, env={env_name(flag): env_value})
    assert getattr(from_args(parser.parse_args([])), attr) == expected


def test_flag_wins_over_environment() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser, env={env_name("probe-timeout"): "3"})
    assert from_args(parser.parse_args(["--probe-timeout", "2"])).probe_timeout == 2


@pytest.mark.parametrize("prefix", ["", "  ", "/", "a/b", "Not_A_Domain"])
def test_prefix_that_would_not_make_our_own_type_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        Settings(condition_prefix=prefix)


def test_refused_prefix_is_a_clear_cli_error_not_a_traceback() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "apiservice_operator", "run", "--condition-prefix", ""],
        capture_output=True, text=True, env={"PYTHONPATH": "operator"},
    )
    assert result.returncode == 2
    assert "kube-apiserver" in result.stderr and "Traceback" not in result.stderr


def test_default_condition_types() -> None:
    types = Settings().types
    assert (types.available, types.degraded) == ("apiservice-operator.io/Available", "apiservice-operator.io/Degraded")


def test_parser_has_run_and_cleanup() -> None:
    parser = build_parser()
    assert parser.parse_args(["run"]).command == "run"
    assert parser.parse_args(["cleanup"]).command == "cleanup"
