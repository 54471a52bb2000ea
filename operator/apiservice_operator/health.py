"""The operator's only port: /metrics, /healthz and /readyz, nothing else."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from apiservice_operator.metrics import Metrics


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
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
