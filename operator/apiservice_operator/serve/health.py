"""The operator's only port: /metrics, /healthz, /readyz and /explain/<name>, nothing else."""

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


async def serve(port: int, state: HealthState, metrics: Metrics, host: str = "0.0.0.0",
                explain: Explainer | None = None) -> web.AppRunner:
    loop = asyncio.get_running_loop()
    explain_slots = asyncio.Semaphore(EXPLAIN_AT_ONCE)

    async def handle_explain(request: web.Request) -> web.Response:
        """Read-only and rate-limited: one fresh check of an APIService the operator handles."""
        name = request.match_info["name"]
        if explain is None:
            raise web.HTTPNotFound()
        if explain_slots.locked():
            return web.json_response({"error": f"busy: {EXPLAIN_AT_ONCE} explains are running; try again"},
                                     status=429, headers={"Retry-After": "2"})
        async with explain_slots:
            report = await explain(name)
        if report is None:
            return web.json_response({"error": f"this operator handles no APIService named {name!r}"}, status=404)
        return web.json_response(report)

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
    app.router.add_get("/explain/{name}", handle_explain)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
