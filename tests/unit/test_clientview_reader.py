"""The clients'-view reader against a real TLS server standing in for a kube-apiserver instance."""

from __future__ import annotations

import asyncio
import json

from apiservice_operator.core.clientview import Freshness, OpenAPI
from apiservice_operator.core.model import ProbePlan, Target
from apiservice_operator.probing.clientview import ClientViewReader
from tests.unit.test_probe import CA, SERVICE_NAME, TLSFactory, tls_server  # noqa: F401 - the fixture
from tests.unit.tls_server import Answer

V2 = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
DOCUMENT = json.dumps({"kind": "APIGroupDiscoveryList", "items": [
    {"metadata": {"name": "demo.example.com"}, "versions": [
        {"version": "v1", "resources": [{"resource": "widgets"}]},
        {"version": "v2", "freshness": "Stale", "resources": []}]}]}).encode()


def reader() -> ClientViewReader:
    return ClientViewReader(CA.cert_pem, lambda: "probe-token", 2.0)


def plan(group_version: str) -> ProbePlan:
    return ProbePlan(targets=(), path=f"/apis/{group_version}", group_version=group_version,
                     server_name="api.demo.svc", ca_bundle=None, insecure_skip_tls_verify=False)


async def test_each_instance_is_read_once_for_every_check_within_max_age(tls_server: TLSFactory) -> None:  # noqa: F811
    server = tls_server(Answer(body=DOCUMENT, headers=(("Content-Type", V2),)))
    instance = Target("127.0.0.1", server.port)
    opened: list[int] = []
    clients = ClientViewReader(CA.cert_pem, lambda: "probe-token", 2.0, on_connection=lambda: opened.append(1))
    try:
        views = await asyncio.gather(*(clients.view([instance], SERVICE_NAME, plan("demo.example.com/v1"), ["widgets"])
                                       for _ in range(10)))
        stale = await clients.view([instance], SERVICE_NAME, plan("demo.example.com/v2"), [])
    finally:
        await clients.aclose()
    assert {v.instances[0].freshness for v in views} == {Freshness.CURRENT}
    assert stale.instances[0].freshness is Freshness.STALE
    # /apis and /openapi/v3 once each (this server answers both with the same document: no OpenAPI in it)
    assert clients.reads == 2 and sorted(server.record.paths) == ["/apis", "/openapi/v3"]
    assert len(opened) == server.record.connections  # counted with the prober's (probe_connections_opened_total)
    assert {v.instances[0].openapi for v in views} == {OpenAPI.MISSING}
    sent = server.record.requests[server.record.paths.index("/apis")]
    assert sent["authorization"] == "Bearer probe-token" and "as=APIGroupDiscoveryList" in sent["accept"]


async def test_an_answer_that_is_not_aggregated_discovery_is_no_evidence(tls_server: TLSFactory) -> None:  # noqa: F811
    for answer in (Answer(body=b'{"kind": "APIGroupList"}'), Answer(status=503, body=b"{}"),
                   Answer(body=b"[" * 5000, headers=(("Content-Type", V2),))):
        server = tls_server(answer)
        clients = reader()
        try:
            view = await clients.view([Target("127.0.0.1", server.port)], SERVICE_NAME, plan("demo.example.com/v1"), [])
        finally:
            await clients.aclose()
        assert view.instances[0].freshness is None and view.read() == (), view
        assert view.instances[0].detail


async def test_a_group_not_current_in_a_read_over_a_tenth_of_a_second_old_is_read_again(
        tls_server: TLSFactory) -> None:  # noqa: F811
    """kube-apiserver lists a repaired group as Current within milliseconds of its own verdict: a read
    from before the repair must not hold our recovery back, nor may a group that stays Stale cost a
    read per check."""
    server = tls_server(Answer(body=DOCUMENT, headers=(("Content-Type", V2),)))
    instance = Target("127.0.0.1", server.port)
    now = [100.0]
    clients = ClientViewReader(CA.cert_pem, lambda: "probe-token", 2.0, clock=lambda: now[0])
    try:
        first = await clients.view([instance], SERVICE_NAME, plan("demo.example.com/v2"), [])
        reads = clients.reads
        now[0] += 0.05  # within a tenth of a second: the read stands, Stale as it said
        soon = await clients.view([instance], SERVICE_NAME, plan("demo.example.com/v2"), [])
        assert clients.reads == reads
        server.answer = Answer(body=DOCUMENT.replace(b', "freshness": "Stale"', b""), headers=(("Content-Type", V2),))
        now[0] += 0.1  # past it: asked again before Stale is said, and the repair shows
        later = await clients.view([instance], SERVICE_NAME, plan("demo.example.com/v2"), [])
    finally:
        await clients.aclose()
    assert first.instances[0].freshness is Freshness.STALE and soon.instances[0].freshness is Freshness.STALE
    assert later.instances[0].freshness is Freshness.CURRENT
    assert server.record.paths.count("/apis") == 2


async def test_documents_that_hang_do_not_hold_up_another_servers_document(tls_server: TLSFactory) -> None:  # noqa: F811
    """Every aggregated server's documents are read through the same instance: a server whose documents
    hang must not hold a healthy server's read behind them until the budget runs out (bounding the reads
    in flight per instance did, and made a start beside 1,000 APIServices seconds slower, make bench)."""
    hung = [f"hung{i}.example.com/v1" for i in range(20)]
    versions = [*hung, "warm.example.com/v1", "ok.example.com/v1"]
    root = json.dumps({"kind": "APIGroupDiscoveryList", "items": [],
                       "paths": {f"apis/{v}": {"serverRelativeURL": f"/openapi/v3/apis/{v}?hash=H"} for v in versions}})
    server = tls_server(Answer(body=root.encode(), headers=(("Content-Type", V2),),
                               silent_under="/openapi/v3/apis/hung"))
    instance = Target("127.0.0.1", server.port)
    clients = ClientViewReader(CA.cert_pem, lambda: "probe-token", 3.0)
    try:
        await clients.view([instance], SERVICE_NAME, plan("warm.example.com/v1"), [])  # the roots, read once
        waiting = [asyncio.create_task(clients.view([instance], SERVICE_NAME, plan(v), [])) for v in hung]
        for _ in range(500):  # until 16 hung documents are being read
            if sum(p.startswith("/openapi/v3/apis/hung") for p in server.record.paths) >= 16:
                break
            await asyncio.sleep(0.01)
        asked = asyncio.get_running_loop().time()
        healthy = await clients.view([instance], SERVICE_NAME, plan("ok.example.com/v1"), [])
        # behind the hung reads it would wait until their budget ran out (3 s)
        answered_while_they_hang = asyncio.get_running_loop().time() - asked < clients.budget - 1.0
        stuck = await asyncio.gather(*waiting)
    finally:
        await clients.aclose()
    assert healthy.instances[0].openapi is OpenAPI.LISTED, healthy
    assert answered_while_they_hang
    assert {v.instances[0].openapi for v in stuck} == {OpenAPI.FAILING}
    assert all("did not answer whole within 3s" in v.instances[0].openapi_detail for v in stuck)
