"""The aggregated server's own answers to the documents kube-apiserver builds the clients' view
from (root `/apis` with the v2 Accept header, `/openapi/v3`, `/openapi/v2`), asked directly at one
endpoint as the probe identity, only when an instance's view is wrong: they say whether the server
or kube-apiserver's cache is behind it (core/clientview.py judges them)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import httpx

from apiservice_operator.core import boundedjson
from apiservice_operator.core.clientview import (
    DISCOVERY_TIMEOUT,
    V2_ACCEPT,
    Document,
    ServerAnswer,
    judge_apis,
    judge_openapi,
)
from apiservice_operator.core.model import ProbePlan
from apiservice_operator.probing.probe import MAX_BODY_BYTES, USER_AGENT, InvalidCABundle, Prober


async def ask_server(prober: Prober, plan: ProbePlan, documents: Sequence[Document]) -> tuple[ServerAnswer, ...]:
    if not plan.targets:
        return ()
    return tuple(await asyncio.gather(*(_ask(prober, plan, d) for d in documents)))


async def _ask(prober: Prober, plan: ProbePlan, document: Document) -> ServerAnswer:
    target = plan.targets[0]
    endpoint = target.endpoint
    loop = asyncio.get_running_loop()
    started = loop.time()
    # a little past kube-apiserver's own 5 s: "it took 7 s" is worth more than "over 5 s"
    budget = max(prober.budget, DISCOVERY_TIMEOUT) + 3.0

    def failed(detail: str) -> ServerAnswer:
        seconds = loop.time() - started
        if document is Document.APIS:
            return judge_apis(endpoint, None, seconds, "", None, plan.group_version, detail)
        return judge_openapi(document, endpoint, None, seconds, "", detail)

    headers = {"Accept": V2_ACCEPT if document is Document.APIS else "application/json",
               "Accept-Encoding": "identity", "User-Agent": USER_AGENT}
    token = None if plan.insecure_skip_tls_verify else prober.token_source()
    if token:  # as the probes: only over verified TLS
        headers["Authorization"] = f"Bearer {token}"
    url = httpx.URL(scheme="https", host=target.host, port=target.port, path=str(document))
    try:
        client = prober.client_for(plan)
        async with asyncio.timeout(budget):
            request = client.build_request("GET", url, headers=headers, extensions={"sni_hostname": plan.server_name})
            response = await client.send(request, stream=True)
            try:
                kind = response.headers.get("content-type", "")
                if document is not Document.APIS:
                    # kube-apiserver needs its answer, not ours to read whole: a spec can be megabytes
                    return judge_openapi(document, endpoint, response.status_code, loop.time() - started, kind)
                body = bytearray()
                if response.status_code == 200:
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_BODY_BYTES:
                            return failed(f"body larger than {MAX_BODY_BYTES} bytes")
            finally:
                await response.aclose()
        try:
            parsed = boundedjson.loads(bytes(body)) if body else None
        except boundedjson.DocumentError as exc:
            return judge_apis(endpoint, response.status_code, loop.time() - started, kind, None,
                              plan.group_version, str(exc))
        return judge_apis(endpoint, response.status_code, loop.time() - started, kind, parsed, plan.group_version)
    except TimeoutError:
        return failed(f"no answer within {budget:g} s")
    except InvalidCABundle as exc:
        return failed(str(exc))
    except (httpx.HTTPError, OSError) as exc:
        return failed(f"{type(exc).__name__}: {str(exc)[:200]}")
