"""The PrometheusRule's alerts, evaluated by Prometheus' own promtool: `check rules` on the shipped
groups and `test rules` with tests/monitoring/rules_test.yaml's input series. The rules are read
from manifests/monitoring/prometheusrule.yaml each time: there is no second copy to drift."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.prometheus import RULE_MANIFEST, alert_names, demo_rules, duration_seconds, rule_groups

RULES_TEST = Path(__file__).with_name("rules_test.yaml")


def write_rules(workdir: Path, rules: dict[str, Any]) -> Path:
    """rules.yaml (the name rules_test.yaml loads) and the tests beside it."""
    (workdir / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
    shutil.copy(RULES_TEST, workdir / RULES_TEST.name)
    return workdir / RULES_TEST.name


def run(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.fixture
def shipped() -> dict[str, Any]:
    return rule_groups(RULE_MANIFEST.read_text())


def test_promtool_accepts_the_shipped_rules(promtool: str, shipped: dict[str, Any], tmp_path: Path) -> None:
    write_rules(tmp_path, shipped)
    result = run(promtool, "check", "rules", "rules.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(shipped['groups'][0]['rules'])} rules found" in result.stdout


def test_every_alert_fires_and_stays_silent_as_the_rule_tests_say(
        promtool: str, shipped: dict[str, Any], tmp_path: Path) -> None:
    tests = write_rules(tmp_path, shipped)
    result = run(promtool, "test", "rules", tests.name, cwd=tmp_path)
    print(result.stdout + result.stderr)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_shipped_alert_has_a_case_where_it_fires_and_one_where_it_stays_silent(
        shipped: dict[str, Any]) -> None:
    cases = [case for test in yaml.safe_load(RULES_TEST.read_text())["tests"] for case in test["alert_rule_test"]]
    firing = {c["alertname"] for c in cases if c.get("exp_alerts")}
    silent = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    names = set(alert_names(shipped))
    assert names - firing == set(), "alerts never shown firing"
    assert names - silent == set(), "alerts never shown silent"
    assert (firing | silent) - names == set(), "tests of alerts the manifest does not have"


def rule(rules: dict[str, Any], alert: str) -> dict[str, Any]:
    return next(r for g in rules["groups"] for r in g["rules"] if r.get("alert") == alert)


def typo_in_a_matcher(rules: dict[str, Any]) -> None:
    r = rule(rules, "AggregatedAPIErrorsProbed")
    r["expr"] = r["expr"].replace('type=~".*/Available"', 'type=~".*/Availabe"')


def longer_for(rules: dict[str, Any]) -> None:
    rule(rules, "AggregatedAPIDownProbed")["for"] = "15m"


def degraded_on_increase_alone(rules: dict[str, Any]) -> None:
    """The rule as shipped before its tests existed: blind to a series born at 1."""
    rule(rules, "AggregatedAPIDegraded")["expr"] = (
        'max by (name) (apiservice_operator_unavailable_apiservice) == 0\n'
        'and on (name) sum by (name) (increase(apiservice_operator_transitions_total'
        '{type=~".*/Degraded", status="True"}[30m])) > 0\n')


def degraded_blind_to_a_rise(rules: dict[str, Any]) -> None:
    r = rule(rules, "AggregatedAPIDegraded")
    r["expr"] = r["expr"].replace('status="True"}\n', 'status="True", missing="label"}\n', 1)


def stale_only_with_a_leader(rules: dict[str, Any]) -> None:
    r = rule(rules, "ApiserviceOperatorStale")
    r["expr"] = r["expr"].rstrip() + "\nand max(apiservice_operator_leader) == 1\n"


def job_regex_misses_the_service_monitor(rules: dict[str, Any]) -> None:
    r = rule(rules, "ApiserviceOperatorAbsent")
    r["expr"] = r["expr"].replace('job=~".*apiservice-operator.*"', 'job="apiservice-operator"')


# Mistakes that look harmless in review; each must make the rule tests fail.
MUTATIONS = [typo_in_a_matcher, longer_for, degraded_on_increase_alone, degraded_blind_to_a_rise,
             stale_only_with_a_leader, job_regex_misses_the_service_monitor]


@pytest.fixture(scope="module")
def mutated_runs(promtool: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[bool, int, str]]:
    """promtool test rules on each mutation, all at once (each takes a couple of seconds):
    name -> (the mutation changed the rules, promtool's exit code, its output)."""
    started = {}
    for mutate in MUTATIONS:
        rules = rule_groups(RULE_MANIFEST.read_text())
        before = yaml.safe_dump(rules)
        mutate(rules)
        tests = write_rules(tmp_path_factory.mktemp(mutate.__name__), rules)
        proc = subprocess.Popen([promtool, "test", "rules", tests.name], cwd=tests.parent, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        started[mutate.__name__] = (yaml.safe_dump(rules) != before, proc)
    return {name: (changed, proc.wait(120), proc.communicate()[0]) for name, (changed, proc) in started.items()}


@pytest.mark.parametrize("mutation", [m.__name__ for m in MUTATIONS])
def test_a_broken_rule_fails_the_rule_tests(mutated_runs: dict[str, tuple[bool, int, str]], mutation: str) -> None:
    changed, code, output = mutated_runs[mutation]
    assert changed, f"{mutation} no longer changes the rules: update it"
    assert code != 0, f"promtool test rules passed with {mutation}:\n{output}"
    assert "FAILED" in output


def test_the_demo_caps_only_for_and_says_so_on_each_alert_it_shortened(shipped: dict[str, Any]) -> None:
    demo = demo_rules(shipped, "20s")
    for before, after in zip(shipped["groups"][0]["rules"], demo["groups"][0]["rules"], strict=True):
        assert after["expr"] == before["expr"]
        if "for" not in before:
            assert "for" not in after and "demo" not in after.get("annotations", {})
            continue
        assert after["for"] == "20s"
        assert after["annotations"]["demo"] == (
            f"for: shortened from {before['for']} to 20s by make demo-monitoring (shipped: {before['for']})")
    assert "demo" not in yaml.safe_dump(shipped), "the shipped rules were changed in place"


def test_durations_read_as_prometheus_reads_them() -> None:
    assert duration_seconds("15m") == 900
    assert duration_seconds("1h30m") == 5400
    for bad in ("15", "m", "1.5m", "5m "):
        with pytest.raises(ValueError):
            duration_seconds(bad)


def test_only_a_prometheusrule_gives_rule_groups() -> None:
    with pytest.raises(ValueError, match="not a PrometheusRule"):
        rule_groups("kind: ServiceMonitor\nspec: {}\n")
