"""What the operator serves: /metrics, /healthz and /readyz on its port (every address, for Prometheus
and the kubelet), and /explain/<name> on a port of its own bound to the Pod's loopback only.

explain discloses what RBAC may hide from a caller (backend Pod IPs, kube-apiserver addresses,
servers' error bodies and certificates) and each call sends probes, so nothing that kube-apiserver
has not authorized may reach it. Through kube-apiserver's service proxy the Pod cannot learn who
calls (the caller's credentials end at kube-apiserver), so explain is reached by a port-forward
instead (`kubectl apiservices explain`): kube-apiserver authenticates the caller, its RBAC decides
(`create pods/portforward` on the operator's Pods) and its audit log names them; nothing else in
the cluster can reach a Pod's loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from apiservice_operator.check.metrics import Metrics


@dataclass
class HealthState:
    leader_election: bool
    synced: bool = False
    leading: bool = False
    heartbeat: float = 0.0
    problems: dict[str, str] = field(default_factory=dict)

    def live(self, now: float) -> tuple[bool, dict[str, object]]:
        # the event loop ticks every second; 10 s without a tick means it is stuck
        ok = now - self.heartbeat < 10
        return ok, {"eventLoop": "ok" if ok else f"no tick for {now - self.heartbeat:.0f}s"}

    def ready(self) -> tuple[bool, dict[str, object]]:
        role = ("leader" if self.leading else "standby") if self.leader_election else "single"
        ok = self.synced and not self.problems
        return ok, {"synced": self.synced, "role": role, "problems": self.problems}


Explainer = Callable[[str], Awaitable[dict[str, Any] | None]]
EXPLAIN_AT_ONCE = 2  # each runs probes within the budget: a few seconds at most


EXPLAIN_TIMEOUT = 30.0  # seconds one explain may take: probes within the budget, an access review, a /livez


async def serve(port: int, state: HealthState, metrics: Metrics, host: str = "0.0.0.0") -> web.AppRunner:
    loop = asyncio.get_running_loop()

    async def handle_metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def handle_healthz(_: web.Request) -> web.Response:
        ok, detail = state.live(loop.time())
        return web.Response(status=200 if ok else 503, text=json.dumps(detail), content_type="application/json")

    async def handle_readyz(_: web.Request) -> web.Response:
        ok, detail = state.ready()
        return web.Response(status=200 if ok else 503, text=json.dumps(detail), content_type="application/json")

    app = web.Application()
    app.router.add_get("/metrics", handle_metrics)
    app.router.add_get("/healthz", handle_healthz)
    app.router.add_get("/readyz", handle_readyz)
    return await _start(app, host, port)


async def serve_explain(port: int, explain: Explainer, host: str = "127.0.0.1") -> web.AppRunner:
    """/explain/<name> on the loopback only (the module's docstring says why)."""
    explain_slots = asyncio.Semaphore(EXPLAIN_AT_ONCE)

    async def handle_explain(request: web.Request) -> web.Response:
        """Read-only and rate-limited: one fresh check of an APIService the operator handles."""
        name = request.match_info["name"]
        if explain_slots.locked():
            return web.json_response({"error": f"busy: {EXPLAIN_AT_ONCE} explains are running; try again"},
                                     status=429, headers={"Retry-After": "2"})
        async with explain_slots:
            try:
                async with asyncio.timeout(EXPLAIN_TIMEOUT):
                    report = await explain(name)
            except TimeoutError:
                return web.json_response({"error": f"explain took over {EXPLAIN_TIMEOUT:g}s; try again"}, status=504)
        if report is None:
            return web.json_response({"error": f"this operator handles no APIService named {name!r}"}, status=404)
        return web.json_response(report)

    app = web.Application()
    app.router.add_get("/explain/{name}", handle_explain)
    return await _start(app, host, port)


async def _start(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
