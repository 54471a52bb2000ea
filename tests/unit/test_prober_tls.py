"""The prober against a real HTTPS server process on 127.0.0.1: TLS identity, status codes, caps."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from apiservice_operator.core.model import ErrorKind, ProbePlan, ProbeResult, Target
from apiservice_operator.probing.probe import LANE_SLOTS, Prober
from tests.cluster import pki
from tests.cluster.controlplane import REPO, free_port

SERVER_NAME = "api.demo.svc"
CA = pki.make_ca("prober-test-ca")


class Server:
    def __init__(self, tmp: Path, cert_for: str = SERVER_NAME, ca: pki.KeyPair = CA, port: int | None = None) -> None:
        pair = pki.issue(ca, cert_for, dns_names=(cert_for,), server=True)
        cert, key = pair.write(tmp, f"srv-{cert_for}")
        self.state, self.record = tmp / f"state-{cert_for}.json", tmp / f"req-{cert_for}.jsonl"
        self.port = port or free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.cluster.aggserver", "--address", "127.0.0.1", "--port", str(self.port),
             "--cert", str(cert), "--key", str(key), "--group", "demo.example.com", "--version", "v1",
             "--state", str(self.state), "--record", str(self.record)],
            cwd=REPO, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().startswith("READY")

    def set(self, **state: object) -> None:
        self.state.write_text(json.dumps(state))

    def authorizations(self) -> list[str | None]:
        lines = self.record.read_text().splitlines() if self.record.exists() else []
        return [json.loads(line)["authorization"] for line in lines]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path)
    yield s
    s.stop()


def plan(port: int, *, server_name: str = SERVER_NAME, insecure: bool = False, ca: bytes | None = CA.cert_pem,
         group_version: str = "demo.example.com/v1") -> ProbePlan:
    return ProbePlan(targets=(Target("127.0.0.1", port),), path="/apis/demo.example.com/v1",
                     group_version=group_version, server_name=server_name,
                     ca_bundle=None if insecure else ca, insecure_skip_tls_verify=insecure)


async def probe_once(p: ProbePlan, token: str | None = "secret-token",
                     max_body: int = 1 << 20) -> tuple[bool, object, str]:
    prober = Prober(5.0, lambda: token, max_body=max_body)
    try:
        [result] = await prober.probe_discovery(p)
    finally:
        await prober.aclose()
    return result.ok, result.error, result.detail


async def test_verified_for_the_service_name_and_sends_the_token(server: Server) -> None:
    assert await probe_once(plan(server.port)) == (True, None, "ok")
    assert server.authorizations() == ["Bearer secret-token"]


async def test_certificate_for_another_name_fails_and_gets_no_token(server: Server) -> None:
    ok, error, detail = await probe_once(plan(server.port, server_name="other.demo.svc"))
    assert (ok, error) == (False, ErrorKind.TLS)
    assert "certificate verify failed" in detail
    assert server.authorizations() == []  # the handshake failed before any request went out


async def test_insecure_skip_tls_verify_passes_without_credentials(tmp_path: Path) -> None:
    other = Server(tmp_path, ca=pki.make_ca("unrelated-ca"))
    try:
        assert (await probe_once(plan(other.port, insecure=True)))[0] is True
        assert other.authorizations() == [None]
    finally:
        other.stop()


@pytest.mark.parametrize(("status", "error", "detail"), [
    (401, ErrorKind.UNAUTHORIZED, "HTTP 401"),
    (403, ErrorKind.UNAUTHORIZED, "HTTP 403"),
    (302, ErrorKind.HTTP_STATUS, "bad status: 302"),
    (500, ErrorKind.HTTP_STATUS, "bad status: 500"),
    (503, ErrorKind.HTTP_STATUS, "bad status: 503"),
])
async def test_status_codes(server: Server, status: int, error: ErrorKind, detail: str) -> None:
    server.set(mode="status", status=status)
    ok, got_error, got_detail = await probe_once(plan(server.port))
    assert (ok, got_error) == (False, error)
    assert got_detail.startswith(detail)


async def test_wrong_group_version_is_an_invalid_document(server: Server) -> None:
    ok, error, detail = await probe_once(plan(server.port, group_version="demo.example.com/v2"))
    assert (ok, error) == (False, ErrorKind.INVALID_DOCUMENT)
    assert "groupVersion is 'demo.example.com/v1', not 'demo.example.com/v2'" in detail


async def test_body_over_the_cap_is_refused(server: Server) -> None:
    ok, error, detail = await probe_once(plan(server.port), max_body=64)
    assert (ok, error) == (False, ErrorKind.INVALID_DOCUMENT)
    assert "larger than 64 bytes" in detail


async def test_closed_port_is_refused() -> None:
    ok, error, detail = await probe_once(plan(free_port()))
    assert (ok, error, detail) == (False, ErrorKind.REFUSED, "connection refused")


async def test_unloadable_ca_bundle_is_a_tls_error_for_every_target() -> None:
    ok, error, detail = await probe_once(plan(1, ca=b"-----BEGIN CERTIFICATE-----\nnot base64\n"))
    assert (ok, error) == (False, ErrorKind.TLS)
    assert "caBundle cannot be loaded" in detail


async def test_compressed_body_is_refused_before_it_is_inflated(tmp_path: Path) -> None:
    """A gzip bomb: ~64 KiB on the wire, 64 MiB inflated. We ask for identity and refuse the rest."""
    import gzip

    from tests.unit.tls_server import Answer, TLSServer

    pair = pki.issue(CA, SERVER_NAME, dns_names=(SERVER_NAME,), server=True)
    cert, key = pair.write(tmp_path, "gzip")
    bomb = gzip.compress(b"0" * (64 << 20), 9)
    with TLSServer(cert, key, Answer(body=bomb, headers=(("Content-Type", "application/json"),
                                                        ("Content-Encoding", "gzip")))) as server:
        ok, error, detail = await probe_once(plan(server.port))
    assert (ok, error) == (False, ErrorKind.INVALID_DOCUMENT)
    assert "Content-Encoding 'gzip'" in detail


async def test_sequential_probes_reuse_one_kept_connection(server: Server) -> None:
    prober = Prober(5.0, lambda: "secret-token")
    try:
        results = [await prober.probe_discovery(plan(server.port)) for _ in range(20)]
        opened = prober.connections_opened()
    finally:
        await prober.aclose()
    assert all(r.ok for [r] in results)
    assert opened == 1


async def test_a_burst_to_one_endpoint_shares_a_lanes_connections(server: Server) -> None:
    server.set(mode="healthy", delay=0.3)  # 40 at once: 16 in flight, the others wait for a slot
    prober = Prober(5.0, lambda: "secret-token")
    try:
        results = await asyncio.gather(*(prober.probe_discovery(plan(server.port)) for _ in range(40)))
        opened = prober.connections_opened()
        kept = sum(p.idle() for p in prober._pools.values())
    finally:
        await prober.aclose()
    assert all(r.ok for [r] in results)
    assert opened == LANE_SLOTS == kept
    assert max(r.latency for [r] in results) < 1.0  # the wait for a slot is not the server's latency


async def test_waiters_on_a_silent_lane_are_judged_once_they_get_a_slot(server: Server) -> None:
    server.set(mode="hang")
    prober = Prober(1.0, lambda: "secret-token")
    try:
        results = await asyncio.gather(*(prober.probe_discovery(plan(server.port)) for _ in range(40)))
        opened = prober.connections_opened()
    finally:
        await prober.aclose()
    # LANE_SLOTS sent and waited out the budget; the others are judged at once, in the same words (a
    # verdict's message stays put). When all LANE_SLOTS end in one turn of the loop (a loaded machine),
    # no probe is open for a waiter to be judged by, so one waiter sends the scout, not waited for
    sent = sum(r.latency >= 0.9 for [r] in results)
    assert sent == LANE_SLOTS, sent
    assert {r.detail for [r] in results} == {"timeout: no complete answer within 1s"}
    assert opened in (sent, sent + 1)


async def test_a_connection_the_server_closed_is_not_reused(server: Server) -> None:
    prober = Prober(5.0, lambda: "secret-token")
    try:
        [first] = await prober.probe_discovery(plan(server.port))
        server.set(mode="close")  # the kept connection's next request is answered by a close
        [closed] = await prober.probe_discovery(plan(server.port))
        server.set(mode="healthy")
        await asyncio.sleep(0.2)
        [after] = await prober.probe_discovery(plan(server.port))
        opened = prober.connections_opened()
    finally:
        await prober.aclose()
    assert first.ok and not closed.ok and after.ok
    assert opened == 2


async def test_a_hung_server_holds_none_of_another_servers_probes(tmp_path: Path) -> None:
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
    hung, healthy = Server(tmp_path / "a"), Server(tmp_path / "b")
    prober = Prober(1.0, lambda: "secret-token")
    try:
        hung.set(mode="hang")
        results = await asyncio.gather(*(prober.probe_discovery(plan(s.port)) for s in [hung, healthy] * 40))
    finally:
        await prober.aclose()
        hung.stop()
        healthy.stop()
    by_port: dict[int, set[object]] = {}
    for [r] in results:
        by_port.setdefault(r.target.port, set()).add(r.error)
    assert by_port == {hung.port: {ErrorKind.TIMEOUT}, healthy.port: {None}}


async def one_timed_out_and_one_open(probe: Callable[[ProbePlan], Coroutine[None, None, list[ProbeResult]]],
                                     server: Server) -> tuple[ProbeResult, asyncio.Task[list[ProbeResult]]]:
    """A hung server: the first probe has waited out its budget (1 s), a second is still open."""
    server.set(mode="hang")
    first = asyncio.create_task(probe(plan(server.port)))
    await asyncio.sleep(0.5)
    second = asyncio.create_task(probe(plan(server.port)))  # open past the first's end
    [timed_out] = await first
    return timed_out, second


async def test_a_server_silent_for_a_budget_is_judged_without_a_new_request_while_one_is_open(server: Server) -> None:
    prober = Prober(1.0, lambda: "secret-token")
    try:
        timed_out, second = await one_timed_out_and_one_open(prober.probe_discovery, server)
        [judged] = await prober.probe_discovery(plan(server.port))
        sent = prober.connections_opened()
        [also_timed_out] = await second
        server.set(mode="healthy")
        answered: list[Target] = []
        prober.on_answer = answered.append
        # nothing open: one is sent to keep asking, and the check is judged without waiting for it
        [scout] = await prober.probe_discovery(plan(server.port))
        for _ in range(100):
            if answered:
                break
            await asyncio.sleep(0.02)
        [after] = await prober.probe_discovery(plan(server.port))
    finally:
        await prober.aclose()
    assert timed_out.error is ErrorKind.TIMEOUT and "no complete answer within 1s" in timed_out.detail
    # in the words of the timeout it did not wait for: the verdict's message stays put from check to check
    assert judged.error is ErrorKind.TIMEOUT and judged.detail == timed_out.detail
    assert sent == 2  # the judged probe sent nothing
    assert also_timed_out.error is ErrorKind.TIMEOUT
    assert scout.error is ErrorKind.TIMEOUT and scout.detail == timed_out.detail
    assert answered == [Target("127.0.0.1", server.port)]  # its answer is news for the APIServices behind it
    assert after.ok


async def test_explain_judges_no_silence(server: Server) -> None:
    prober = Prober(1.0, lambda: "secret-token")
    try:
        _, second = await one_timed_out_and_one_open(prober.probe_every, server)
        [asked] = await prober.probe_every(plan(server.port))
        await second
        opened = prober.connections_opened()
    finally:
        await prober.aclose()
    assert asked.error is ErrorKind.TIMEOUT and "no complete answer" in asked.detail
    assert opened == 3


async def test_our_own_event_loop_stall_is_not_counted_as_the_servers_latency(server: Server) -> None:
    prober = Prober(5.0, lambda: "secret-token")

    async def stall_while_the_answer_waits() -> None:
        await asyncio.sleep(0.02)  # the request is out; the answer comes back 0.1 s after it, mid-stall
        time.sleep(1.0)  # noqa: ASYNC251 - on purpose: the loop is held, the answer waits in the socket

    try:
        await prober.probe_discovery(plan(server.port))  # a kept connection, and the lag ticker running
        server.set(mode="healthy", delay=0.1)  # else the answer is read before the stall even begins
        started = time.monotonic()
        [result], _ = await asyncio.gather(prober.probe_discovery(plan(server.port)), stall_while_the_answer_waits())
        took = time.monotonic() - started
    finally:
        await prober.aclose()
    assert result.ok
    assert took >= 1.0
    assert result.latency < 0.5, result.latency


async def test_a_kept_connection_the_server_dropped_meanwhile_is_not_used(tmp_path: Path) -> None:
    first = Server(tmp_path)
    prober = Prober(5.0, lambda: "secret-token")
    try:
        [before] = await prober.probe_discovery(plan(first.port))
        first.stop()  # a restart: the kept connection's other end is gone
        again = Server(tmp_path, port=first.port)
        await asyncio.sleep(0.2)
        [after] = await prober.probe_discovery(plan(again.port))
        opened = prober.connections_opened()
        again.stop()
    finally:
        await prober.aclose()
    assert before.ok and after.ok, after.detail
    assert opened == 2


async def test_idle_connections_to_an_address_nobody_asks_again_are_closed_after_the_keepalive(
        server: Server) -> None:
    """A rollout's old Pod IPs, a deleted APIService: their kept connections were kept until the same
    address was asked again, which may be never."""
    prober = Prober(1.0, lambda: "secret-token")
    try:
        [result] = await prober.probe_discovery(plan(server.port))
        assert result.ok
        (pool,) = prober._pools.values()
        assert pool.idle() == 1
        assert pool.expire_idle(time.monotonic() + 10) == 0  # within the keep-alive: kept
        assert pool.expire_idle(time.monotonic() + 31) == 1
        assert pool.idle() == 0
    finally:
        await prober.aclose()


def test_a_deleted_apiservices_series_go_and_a_former_leader_keeps_no_verdict_gauges() -> None:
    from apiservice_operator.check.metrics import Metrics
    from apiservice_operator.core.model import Condition, Status

    metrics = Metrics()
    condition = Condition("apiservice-operator.io/Available", Status.FALSE, "FailedDiscoveryCheck", "m", "t")
    for name in ("gone", "kept"):
        metrics.observe_conditions(name, condition)
        metrics.transitions.labels(name=name, type=condition.type, status="False", reason="FailedDiscoveryCheck").inc()
    metrics.forget("gone")
    text = generate_latest(metrics.registry).decode()
    assert 'name="gone"' not in text and 'name="kept"' in text
    metrics.forget_all()
    text = generate_latest(metrics.registry).decode()
    assert "apiservice_operator_unavailable_apiservice{" not in text
