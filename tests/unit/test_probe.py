"""Prober.probe_discovery against real HTTPS servers on 127.0.0.1: real sockets, real certificates.

Two kinds of server:
- tests/cluster/aggserver.py, the project's aggregated test server, as a subprocess (AggServer below);
- tests/unit/tls_server.py, a minimal server in threads, for what aggserver lacks (a non-JSON body, a body
  that drips, silence at a chosen stage, the SNI it was asked for).
Neither runs in the test's event loop, so that loop only does the prober's client I/O.

Fake time (looptime) and real sockets: looptime advances the loop's clock to the next timer as soon as the
loop has nothing ready after a few non-blocking polls. Real I/O with another thread or process takes real
time, so with the 5 s budget pending the clock jumps to it while a TLS handshake is still in flight: a healthy
server then "times out" (tried: 20 of 20 healthy probes did). Hence:
- the tests where nothing must ever arrive (a server that never answers, two hanging targets) use looptime and
  the real 5 s budget: any jump of the clock lands on the deadline, which is the expected outcome. They hold
  the clock still until the server has reached the intended stage (hold_clock_until), then let it run;
- the slow-drip test runs in real time with a small budget: it must show that bytes arriving well within
  httpx's per-read timeout do not extend the total deadline, which takes a clock that advances between the
  bytes. In fake time the clock stands still while bytes arrive, so the per-read deadline and the total one
  coincide and the test would prove nothing;
- tests needing an answer (healthy, mixed targets) run in real time too.
"""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
import os
import select
import socket
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from apiservice_operator.core.model import ErrorKind, ProbePlan, ProbeResult, Target
from apiservice_operator.probing.probe import MAX_BODY_BYTES, Prober
from tests.cluster import pki
from tests.unit.tls_server import Answer, TLSServer

REPO = Path(__file__).resolve().parents[2]
SERVICE_NAME = "api.demo.svc"  # <service>.<namespace>.svc, what plan.server_name says
GROUP, VERSION = "demo.example.com", "v1"
TOKEN = "s3cret-token"
BUDGET = 5.0  # the operator's default (model.DEFAULT_PROBE_TIMEOUT)
SMALL_BUDGET = 0.5  # for the real-time tests that must wait out a deadline

CA = pki.make_ca("probe-test-ca")
OTHER_CA = pki.make_ca("probe-test-unrelated-ca")
DOCUMENT = json.dumps({
    "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{GROUP}/{VERSION}",
    "resources": [{"name": "widgets", "singularName": "widget", "namespaced": True, "kind": "Widget",
                   "verbs": ["get", "list"]}],
}).encode()

_stems = itertools.count()


def free_port() -> int:
    """A port nobody listens on (nor will, within the test: nothing else here binds fixed ports)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def serving_pair(tmp: Path, *, ca: pki.KeyPair = CA, dns_names: tuple[str, ...] = (SERVICE_NAME,),
                 ip_addresses: tuple[str, ...] = ()) -> tuple[Path, Path]:
    pair = pki.issue(ca, dns_names[0] if dns_names else "serving", dns_names=dns_names,
                     ip_addresses=ip_addresses, server=True)
    return pair.write(tmp, f"serving-{next(_stems)}")


def make_plan(*ports: int, path: str = f"/apis/{GROUP}/{VERSION}", group_version: str = f"{GROUP}/{VERSION}",
              server_name: str = SERVICE_NAME, ca_bundle: bytes | None = CA.cert_pem,
              insecure: bool = False) -> ProbePlan:
    return ProbePlan(targets=tuple(Target("127.0.0.1", p) for p in ports), path=path,
                     group_version=group_version, server_name=server_name,
                     ca_bundle=None if insecure else ca_bundle, insecure_skip_tls_verify=insecure)


async def probe(plan: ProbePlan, *, budget: float = BUDGET, token: str | None = TOKEN,
                max_body: int = MAX_BODY_BYTES) -> list[ProbeResult]:
    prober = Prober(budget, lambda: token, max_body=max_body)
    try:
        return await prober.probe_discovery(plan)
    finally:
        await prober.aclose()


async def probe_one(plan: ProbePlan, **kwargs: Any) -> ProbeResult:
    [result] = await probe(plan, **kwargs)
    assert result.target == plan.targets[0]
    return result


async def eventually(condition: Callable[[], object], within: float = 5.0) -> None:
    """Wait (real time) for something another process or thread does after the prober has returned."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def hold_clock_until(condition: Callable[[], object], within: float = 5.0) -> bool:
    """Keep the loop busy, so that looptime's clock stands still, until the condition holds (real time).

    With a handle always ready the loop polls I/O without waiting and looptime never advances its clock,
    while the other tasks (the prober's client I/O) run as usual.
    """
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0)
    return True


# --- the project's aggregated test server, as a subprocess ---------------------------------------------------


class AggServer:
    """One aggserver process; tests share it (start-up is the slow part) and each sees only its own records."""

    def __init__(self, tmp: Path, cert: Path, key: Path, *, group: str, version: str) -> None:
        stem = f"agg-{next(_stems)}"
        self.state_path, self.record_path = tmp / f"{stem}-state.json", tmp / f"{stem}-requests.jsonl"
        self.reset({})
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.cluster.aggserver", "--address", "127.0.0.1", "--port", str(self.port),
             "--cert", str(cert), "--key", str(key), "--group", group, "--version", version,
             "--state", str(self.state_path), "--record", str(self.record_path)],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 20)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("READY"):
            self.stop()
            raise AssertionError(f"aggserver did not start: {line!r}")

    def reset(self, state: dict[str, Any]) -> None:
        """A new behaviour (the server re-reads it per connection), and forget the records so far."""
        # record_handshakes: a client that refuses our certificate leaves a line too, so a test can tell
        # "the handshake failed and nothing followed" from "nobody ever connected"
        self.state_path.write_text(json.dumps({"mode": "healthy", "record_handshakes": True, **state}))
        self._seen = len(self._all_lines())

    def _all_lines(self) -> list[str]:
        return self.record_path.read_text().splitlines() if self.record_path.exists() else []

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self._all_lines()[self._seen:]]

    def requests(self) -> list[dict[str, Any]]:
        return [line for line in self.lines() if "event" not in line]

    def handshake_failures(self) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line.get("event") == "handshake-failed"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


AggFactory = Callable[..., AggServer]
TLSFactory = Callable[..., TLSServer]
AggKey = tuple[str, tuple[str, ...], tuple[str, ...], str, str]


@pytest.fixture(scope="module")
def _aggservers() -> Iterator[dict[AggKey, AggServer]]:
    servers: dict[AggKey, AggServer] = {}
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture
def aggserver(_aggservers: dict[AggKey, AggServer], tmp_path_factory: pytest.TempPathFactory) -> AggFactory:
    """aggserver(ca=..., dns_names=..., group=..., **state) -> a running AggServer in that state."""

    def start(*, ca: pki.KeyPair = CA, dns_names: tuple[str, ...] = (SERVICE_NAME,),
              ip_addresses: tuple[str, ...] = (), group: str = GROUP, version: str = VERSION,
              **state: Any) -> AggServer:
        key = (ca.cert.subject.rfc4514_string(), dns_names, ip_addresses, group, version)
        server = _aggservers.get(key)
        if server is None:
            tmp = tmp_path_factory.mktemp("aggserver")
            cert, private_key = serving_pair(tmp, ca=ca, dns_names=dns_names, ip_addresses=ip_addresses)
            server = _aggservers[key] = AggServer(tmp, cert, private_key, group=group, version=version)
        server.reset(state)
        return server

    return start


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[TLSFactory]:
    """tls_server(Answer(...), ca=..., dns_names=...) -> a running TLSServer in threads."""
    started: list[TLSServer] = []

    def start(answer: Answer, *, ca: pki.KeyPair = CA, dns_names: tuple[str, ...] = (SERVICE_NAME,)) -> TLSServer:
        server = TLSServer(*serving_pair(tmp_path, ca=ca, dns_names=dns_names), answer)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


# --- healthy, and TLS identity -------------------------------------------------------------------------------


async def test_healthy_server_is_ok(aggserver: AggFactory) -> None:
    server = aggserver()
    result = await probe_one(make_plan(server.port))
    assert (result.ok, result.error, result.detail) == (True, None, "ok")
    assert result.latency > 0
    [request] = server.requests()
    assert (request["method"], request["path"]) == ("GET", f"/apis/{GROUP}/{VERSION}")
    assert request["user_agent"].startswith("apiservice-operator/")


async def test_certificate_is_checked_against_the_service_name_sent_as_sni(tls_server: TLSFactory) -> None:
    # The certificate names only the Service, never 127.0.0.1: it passes because the prober verifies (and
    # asks for, by SNI) plan.server_name rather than the address it connects to.
    server = tls_server(Answer(body=DOCUMENT), dns_names=(SERVICE_NAME,))
    result = await probe_one(make_plan(server.port))
    assert (result.ok, result.error, result.detail) == (True, None, "ok")
    assert server.record.server_names == [SERVICE_NAME]


@pytest.mark.parametrize(("dns_names", "ip_addresses"), [
    pytest.param(("other.demo.svc",), (), id="another-service-name"),
    pytest.param(("other.demo.svc",), ("127.0.0.1",), id="the-connected-address-only"),
    pytest.param(("api.demo",), (), id="the-short-name"),
])
async def test_certificate_for_another_name_fails(
        aggserver: AggFactory, dns_names: tuple[str, ...], ip_addresses: tuple[str, ...]) -> None:
    server = aggserver(dns_names=dns_names, ip_addresses=ip_addresses)
    result = await probe_one(make_plan(server.port))
    assert (result.ok, result.error) == (False, ErrorKind.TLS)
    assert "certificate verify failed" in result.detail
    assert SERVICE_NAME in result.detail  # the name it was checked for
    await eventually(server.handshake_failures)
    assert server.requests() == []  # the token went nowhere


async def test_certificate_from_another_ca_fails_and_no_request_reaches_the_server(aggserver: AggFactory) -> None:
    server = aggserver(ca=OTHER_CA)
    token_calls: list[None] = []

    def token_source() -> str:
        token_calls.append(None)
        return TOKEN

    prober = Prober(BUDGET, token_source)
    try:
        [result] = await prober.probe_discovery(make_plan(server.port))
    finally:
        await prober.aclose()
    assert (result.ok, result.error) == (False, ErrorKind.TLS)
    assert "certificate verify failed" in result.detail
    assert "unable to get local issuer certificate" in result.detail  # the verification failure itself
    await eventually(server.handshake_failures)  # it did connect, and the handshake failed ...
    assert server.requests() == []  # ... so no request, and no token, ever reached the server


async def test_verified_tls_sends_the_bearer_token(aggserver: AggFactory) -> None:
    server = aggserver()
    assert (await probe_one(make_plan(server.port), token=TOKEN)).ok
    assert [r["authorization"] for r in server.requests()] == [f"Bearer {TOKEN}"]


async def test_no_token_means_no_authorization_header(aggserver: AggFactory) -> None:
    server = aggserver()
    assert (await probe_one(make_plan(server.port), token=None)).ok
    assert [r["authorization"] for r in server.requests()] == [None]


async def test_insecure_skip_tls_verify_accepts_any_certificate_and_sends_no_token(aggserver: AggFactory) -> None:
    server = aggserver(ca=OTHER_CA, dns_names=("someone-else.example.com",))
    result = await probe_one(make_plan(server.port, insecure=True), token=TOKEN)
    assert (result.ok, result.error, result.detail) == (True, None, "ok")
    assert [r["authorization"] for r in server.requests()] == [None]


@pytest.mark.parametrize("first", ["verified", "insecure"])
async def test_a_pooled_connection_is_not_reused_for_another_identity(aggserver: AggFactory, first: str) -> None:
    # One Prober, one server whose certificate is for SERVICE_NAME only and from an unrelated CA: a kept-alive
    # connection from the first probe must not carry the second, which must do (and fail) its own handshake.
    server = aggserver(ca=OTHER_CA)
    prober = Prober(BUDGET, lambda: TOKEN)
    try:
        passing = make_plan(server.port, ca_bundle=OTHER_CA.cert_pem, insecure=first == "insecure")
        [ok] = await prober.probe_discovery(passing)
        assert ok.ok
        [wrong_name] = await prober.probe_discovery(
            make_plan(server.port, ca_bundle=OTHER_CA.cert_pem, server_name="other.demo.svc"))
        [wrong_ca] = await prober.probe_discovery(make_plan(server.port, ca_bundle=CA.cert_pem))
    finally:
        await prober.aclose()
    assert (wrong_name.error, wrong_ca.error) == (ErrorKind.TLS, ErrorKind.TLS)
    assert len(server.requests()) == 1


# --- connection, status, document ----------------------------------------------------------------------------


async def test_closed_port_is_refused() -> None:
    result = await probe_one(make_plan(free_port()))
    assert (result.ok, result.error, result.detail) == (False, ErrorKind.REFUSED, "connection refused")


@pytest.mark.parametrize(("status", "error", "detail"), [
    (500, ErrorKind.HTTP_STATUS, "bad status: 500"),
    (503, ErrorKind.HTTP_STATUS, "bad status: 503"),
    (404, ErrorKind.HTTP_STATUS, "bad status: 404"),
    (401, ErrorKind.UNAUTHORIZED, "HTTP 401 (the probe's identity was refused)"),
    (403, ErrorKind.UNAUTHORIZED, "HTTP 403 (the probe's identity was refused)"),
])
async def test_bad_status(aggserver: AggFactory, status: int, error: ErrorKind, detail: str) -> None:
    server = aggserver(mode="status", status=status)
    result = await probe_one(make_plan(server.port))
    assert (result.ok, result.error, result.detail) == (False, error, detail)


@pytest.mark.parametrize("status", [302, 301, 307])
async def test_redirect_is_not_followed(aggserver: AggFactory, status: int) -> None:
    server = aggserver(mode="redirect", status=status)
    result = await probe_one(make_plan(server.port))
    assert (result.ok, result.error, result.detail) == (False, ErrorKind.HTTP_STATUS, f"bad status: {status}")
    assert [r["path"] for r in server.requests()] == [f"/apis/{GROUP}/{VERSION}"]  # never /redirected...


async def test_wrong_group_version_is_an_invalid_document(aggserver: AggFactory) -> None:
    server = aggserver(mode="wrong-document")
    result = await probe_one(make_plan(server.port))
    assert (result.ok, result.error) == (False, ErrorKind.INVALID_DOCUMENT)
    assert "InvalidDiscoveryDocument" in result.detail
    assert "'wrong.example.com/v9'" in result.detail


@pytest.mark.parametrize(("body", "problem"), [
    pytest.param(b"<html>it works</html>", "body is not JSON", id="html"),
    pytest.param(b"\xff\xfe\x00garbage", "body is not JSON", id="binary"),
    pytest.param(b"", "body is not JSON", id="empty"),
    pytest.param(b'["APIResourceList"]', "kind is 'list'", id="json-list"),
    pytest.param(b'{"kind": "Status", "groupVersion": "demo.example.com/v1"}', "kind is 'Status'", id="status"),
    # hostile bodies: json.loads raised RecursionError on these, the check failed and the last
    # verdict (Available=True included) stood while it retried every second
    pytest.param(b"[" * 5000, "nests deeper than 100 levels", id="deep-nesting"),
    pytest.param(b'{"a":' * 3000 + b"1" + b"}" * 3000, "nests deeper than 100 levels", id="deep-objects"),
    pytest.param(b"[" + b"9" * 100_000 + b"]", "Exceeds the limit (4300 digits)", id="huge-integer"),
    pytest.param(b'{"kind": "APIResourceList", "groupVersion": "\xff"}', "not UTF-8", id="invalid-utf8"),
])
async def test_not_a_discovery_document_is_invalid(tls_server: TLSFactory, body: bytes, problem: str) -> None:
    server = tls_server(Answer(body=body))
    result = await probe_one(make_plan(server.port))
    assert (result.ok, result.error) == (False, ErrorKind.INVALID_DOCUMENT)
    assert result.detail.startswith("InvalidDiscoveryDocument")
    assert problem in result.detail


async def test_a_deeply_nested_error_body_is_quoted_not_raised(tls_server: TLSFactory) -> None:
    server = tls_server(Answer(status=500, body=b"[" * 4096))
    result = await probe_one(make_plan(server.port))
    assert (result.ok, result.error, result.status_code) == (False, ErrorKind.HTTP_STATUS, 500)
    assert result.body.startswith("[[[")


async def test_legacy_core_group(aggserver: AggFactory) -> None:
    server = aggserver(group="", version="v1")
    result = await probe_one(make_plan(server.port, path="/api/v1", group_version="v1"))
    assert (result.ok, result.error, result.detail) == (True, None, "ok")
    assert [r["path"] for r in server.requests()] == ["/api/v1"]
    # and the same server is not a valid group "v1" under /apis
    wrong = await probe_one(make_plan(server.port, path="/api/v1", group_version=f"{GROUP}/v1"))
    assert wrong.error == ErrorKind.INVALID_DOCUMENT


async def test_body_larger_than_max_body(aggserver: AggFactory) -> None:
    server = aggserver()
    result = await probe_one(make_plan(server.port), max_body=64)
    assert (result.ok, result.error) == (False, ErrorKind.INVALID_DOCUMENT)
    assert result.detail == "InvalidDiscoveryDocument: body larger than 64 bytes"


async def test_body_larger_than_one_mib_by_default(aggserver: AggFactory) -> None:
    server = aggserver(mode="huge-body", size=MAX_BODY_BYTES + 4096)  # a valid document, only too big
    result = await probe_one(make_plan(server.port))
    assert (result.ok, result.error) == (False, ErrorKind.INVALID_DOCUMENT)
    assert result.detail == f"InvalidDiscoveryDocument: body larger than {MAX_BODY_BYTES} bytes"


async def test_body_of_exactly_max_body_is_accepted(tls_server: TLSFactory) -> None:
    server = tls_server(Answer(body=DOCUMENT))
    assert (await probe_one(make_plan(server.port), max_body=len(DOCUMENT))).ok
    over = await probe_one(make_plan(server.port), max_body=len(DOCUMENT) - 1)
    assert (over.ok, over.error) == (False, ErrorKind.INVALID_DOCUMENT)


async def test_compressed_body_cannot_bypass_the_cap(tls_server: TLSFactory) -> None:
    bomb = gzip.compress(b"0" * (64 << 20), 9)  # ~64 KiB on the wire, 64 MiB inflated
    server = tls_server(Answer(body=bomb, headers=(("Content-Type", "application/json"),
                                                   ("Content-Encoding", "gzip"))))
    tracemalloc.start()
    try:
        result = await probe_one(make_plan(server.port))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not result.ok
    assert peak < 8 * MAX_BODY_BYTES, f"{peak / 2**20:.0f} MiB held for a {MAX_BODY_BYTES / 2**20:.0f} MiB cap"


@pytest.mark.parametrize(("mode", "error"), [
    ("garbage-tls", ErrorKind.TLS),  # plain text where the ServerHello should be
    ("garbage-http", ErrorKind.CONNECTION),  # TLS fine, then no HTTP status line
    ("close", ErrorKind.CONNECTION),  # reads the request, closes without answering
    ("reset-mid-body", ErrorKind.CONNECTION),  # half of the body, then a TCP reset
    ("endless-chunked", ErrorKind.INVALID_DOCUMENT),  # stopped by the cap, not by the budget
    ("http10-close", None),  # a body delimited by closing is still a whole, valid document
])
async def test_hostile_servers(aggserver: AggFactory, mode: str, error: ErrorKind | None) -> None:
    server = aggserver(mode=mode)
    result = await probe_one(make_plan(server.port))
    assert (result.ok, result.error) == (error is None, error), result.detail
    assert result.latency < BUDGET


# --- the budget: one total deadline --------------------------------------------------------------------------


async def test_slow_drip_body_hits_the_total_deadline(tls_server: TLSFactory) -> None:
    # Real time, small budget (see the module docstring for why not looptime). Headers at once, then one body
    # byte every 50 ms: every read completes well within httpx's own per-read timeout (= the budget), and the
    # whole body would take len(DOCUMENT) * 50 ms (~10 s). Only a total deadline stops it at the budget.
    server = tls_server(Answer(body=DOCUMENT, drip=0.05))
    assert len(DOCUMENT) * 0.05 > 10 * SMALL_BUDGET
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(30):  # should the deadline be lost, fail here rather than hang
        result = await probe_one(make_plan(server.port), budget=SMALL_BUDGET)
    elapsed = loop.time() - started
    assert (result.ok, result.error) == (False, ErrorKind.TIMEOUT)
    assert result.detail == f"timeout: no complete answer within {SMALL_BUDGET:g}s"
    assert SMALL_BUDGET <= result.latency < SMALL_BUDGET + 1.0
    assert elapsed < SMALL_BUDGET + 1.0
    assert server.record.headers_sent.is_set()
    assert 0 < server.record.body_bytes_sent < len(DOCUMENT)  # it was cut off in the body, not before


@pytest.mark.looptime
@pytest.mark.parametrize("stage", [
    pytest.param("tcp", id="accepts-tcp-never-starts-tls"),
    pytest.param("http", id="reads-the-request-never-answers"),
])
async def test_server_that_never_answers_times_out(tls_server: TLSFactory, stage: str) -> None:
    server = tls_server(Answer(tls=False) if stage == "tcp" else Answer(silent=True))
    reached = (lambda: server.record.connections) if stage == "tcp" else (lambda: server.record.requests)
    loop = asyncio.get_running_loop()
    started = loop.time()
    task = asyncio.create_task(probe_one(make_plan(server.port), budget=BUDGET))
    assert await hold_clock_until(reached), f"the server never reached the {stage} stage"
    assert loop.time() == started  # the clock stood still so far
    result = await task
    assert (result.ok, result.error) == (False, ErrorKind.TIMEOUT)
    assert result.detail == "timeout: no complete answer within 5s"
    assert result.latency == pytest.approx(BUDGET)
    assert loop.time() - started == pytest.approx(BUDGET, abs=0.5)


@pytest.mark.looptime
async def test_hanging_targets_are_probed_concurrently(tls_server: TLSFactory) -> None:
    servers = [tls_server(Answer(silent=True)) for _ in range(3)]
    plan = make_plan(*(s.port for s in servers))
    loop = asyncio.get_running_loop()
    started = loop.time()
    task = asyncio.create_task(probe(plan, budget=BUDGET))
    # a prober that went target by target would leave the later servers untouched for a whole budget
    assert await hold_clock_until(lambda: all(s.record.requests for s in servers)), "not probed concurrently"
    results = await task
    elapsed = loop.time() - started
    assert [r.target for r in results] == list(plan.targets)
    assert [r.error for r in results] == [ErrorKind.TIMEOUT] * 3
    assert elapsed < 1.5 * BUDGET  # one budget in all, not one per target (3 * BUDGET)


async def test_mixed_targets_come_back_in_order_within_one_budget(tls_server: TLSFactory) -> None:
    # Real time: a healthy answer cannot be awaited in fake time (see the module docstring).
    silent, healthy, no_tls = tls_server(Answer(silent=True)), tls_server(Answer(body=DOCUMENT)), \
        tls_server(Answer(tls=False))
    plan = make_plan(silent.port, healthy.port, free_port(), no_tls.port, silent.port)
    loop = asyncio.get_running_loop()
    started = loop.time()
    results = await probe(plan, budget=SMALL_BUDGET)
    elapsed = loop.time() - started
    assert [r.target for r in results] == list(plan.targets)
    assert [r.error for r in results] == [
        ErrorKind.TIMEOUT, None, ErrorKind.REFUSED, ErrorKind.TIMEOUT, ErrorKind.TIMEOUT]
    assert results[1].latency < SMALL_BUDGET
    assert elapsed < 1.8 * SMALL_BUDGET  # three hanging targets, one budget


# --- an unusable caBundle ------------------------------------------------------------------------------------


@pytest.mark.parametrize("ca_bundle", [
    pytest.param(b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n", id="bad-der"),
    pytest.param(b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n", id="truncated-pem"),
    pytest.param(b"just some text", id="no-pem"),
    pytest.param(CA.key_pem, id="a-private-key"),
])
async def test_unloadable_ca_bundle_fails_every_target_with_tls(aggserver: AggFactory, ca_bundle: bytes) -> None:
    server = aggserver()
    plan = make_plan(server.port, free_port(), server.port, ca_bundle=ca_bundle)
    results = await probe(plan)  # no exception
    assert [r.target for r in results] == list(plan.targets)
    for result in results:
        assert (result.ok, result.error) == (False, ErrorKind.TLS)
        assert "caBundle" in result.detail
    assert server.requests() == []
