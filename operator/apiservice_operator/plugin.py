"""kubectl-apiservices: a table of every APIService with kube-apiserver's verdict beside ours, and
one APIService explained hop by hop.

    kubectl apiservices [-o wide|json] [--watch] [-l SELECTOR] [--kubeconfig FILE]
    kubectl apiservices explain NAME [-o json] [-n NAMESPACE] [--operator-url URL]

explain asks the operator for one fresh check, where its Pods run: through `kubectl port-forward` to
an operator Pod's loopback (kube-apiserver's RBAC decides: `create pods/portforward` there, which the
ClusterRole apiservice-operator-explain grants), or at --operator-url for an operator beside you.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import re
import sys
import urllib.parse
from collections.abc import Sequence
from typing import Any

import httpx
from kubernetes_asyncio import client

from apiservice_operator.core.blast import blocked_count
from apiservice_operator.core.consumers import stalled_count
from apiservice_operator.core.model import DEFAULT_CONDITION_PREFIX, GROUP, PLURAL, VERSION, ConditionTypes
from apiservice_operator.kube.client import API_TIMEOUT, Credentials
from apiservice_operator.kube.portforward import ForwardFailed, forwarded, operator_pod

COLUMNS = ("NAME", "SERVICE", "KUBE-APISERVER", "PROBED", "REASON", "PATH", "LATENCY", "ENDPOINTS", "AGE")
_PASSED = re.compile(r"passed (?:through .*? and )?on (\d+)/(\d+) endpoints in ([^\s;,]+)")
# the user's path: how many kube-apiserver instances served discovery (DESIGN 9)
_PATH = re.compile(r"(\d+)/(\d+) kube-apiserver (?:instances|\()")
_FAILED = re.compile(r"from (\d+)/(\d+) endpoints")
# the first certificate to end, from our Degraded message (decide._watch_certificates)
_CERT_ENDS = re.compile(r"(?:earliest certificate ends |a certificate ends in \d+ days? \()(\d{4}-\d\d-\d\dT[\d:]+Z)")
# the clients' view: in how many instances' aggregated discovery it is Current (decide/clients.counts)
_DISCOVERY = re.compile(r"aggregated discovery Current in (\d+)/(\d+) instances")
WIDE_COLUMNS = ("DISCOVERY", "CERT", "BLOCKING", "STALLING", "MESSAGE")
_COLOURS = {"True": "32", "False": "31", "Unknown": "33", "Degraded": "33"}


def _condition(obj: dict[str, Any], ctype: str) -> dict[str, Any]:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype:
            return dict(cond)
    return {}


def age(timestamp: str | None, now: datetime.datetime) -> str:
    if not timestamp:
        return "<unknown>"
    then = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit != "d" else 1):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def row(obj: dict[str, Any], types: ConditionTypes, now: datetime.datetime) -> dict[str, str]:
    """One table row from an APIService; pure, so it is tested with plain dicts."""
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    service = spec.get("service")
    theirs = _condition(obj, "Available")
    ours = _condition(obj, types.available)
    degraded = _condition(obj, types.degraded)
    probed = ours.get("status", "")
    reason = ours.get("reason", "")
    if probed == "True" and degraded.get("status") == "True":
        probed, reason = "Degraded", degraded.get("reason", "")
    message = ours.get("message", "")
    if degraded.get("status") == "True":
        message = f"{message}; {degraded.get('message', '')}"
    latency, endpoints = "", ""
    if m := _PASSED.search(ours.get("message", "")):
        endpoints, latency = f"{m[1]}/{m[2]}", m[3]
    elif m := _FAILED.search(ours.get("message", "")):
        endpoints = f"0/{m[2]}"
    path = _PATH.search(ours.get("message", ""))
    discovery = _DISCOVERY.search(message)
    ends = _CERT_ENDS.search(degraded.get("message", ""))
    cert = ""
    if ends:
        left = datetime.datetime.fromisoformat(ends[1].replace("Z", "+00:00")) - now
        cert = f"{max(0, left.days)}d"
    return {
        "NAME": meta.get("name", ""),
        "SERVICE": f"{service.get('namespace')}/{service.get('name')}" if service else "Local",
        "KUBE-APISERVER": theirs.get("status", "") or "<none>",
        "PROBED": probed or "<none>",
        "REASON": reason,
        "PATH": f"{path[1]}/{path[2]}" if path else "",
        "LATENCY": latency,
        "ENDPOINTS": endpoints,
        "AGE": age(meta.get("creationTimestamp"), now),
        "DISCOVERY": f"{discovery[1]}/{discovery[2]}" if discovery else "",
        "CERT": cert,
        "BLOCKING": str(blocking) if (blocking := blocked_count(ours.get("message", ""))) else "",
        "STALLING": str(stalling) if (stalling := stalled_count(ours.get("message", ""))) else "",
        "MESSAGE": message,
    }


def render(rows: Sequence[dict[str, str]], *, wide: bool, colour: bool) -> str:
    columns = (*COLUMNS, *WIDE_COLUMNS) if wide else COLUMNS
    widths = {c: max([len(c), *(len(r[c]) for r in rows)]) for c in columns}
    lines = ["   ".join(c.ljust(widths[c]) for c in columns).rstrip()]
    for r in rows:
        cells = []
        for c in columns:
            text = r[c].ljust(widths[c])
            code = _COLOURS.get(r[c]) if colour and c in ("KUBE-APISERVER", "PROBED") else None
            cells.append(f"\x1b[{code}m{text}\x1b[0m" if code else text)
        lines.append("   ".join(cells).rstrip())
    return "\n".join(lines)


async def fetch(credentials: Credentials, selector: str) -> list[dict[str, Any]]:
    assert credentials.api is not None
    api = client.CustomObjectsApi(credentials.api)
    listing = await api.list_cluster_custom_object(GROUP, VERSION, PLURAL, label_selector=selector,
                                                   _request_timeout=API_TIMEOUT)
    return sorted(listing.get("items", []), key=lambda o: o["metadata"]["name"])


async def main_async(args: argparse.Namespace) -> int:
    types = ConditionTypes(args.condition_prefix)
    credentials = Credentials(args.kubeconfig)
    await credentials.load()
    colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    previous = None
    try:
        while True:
            now = datetime.datetime.now(datetime.UTC)
            rows = [row(o, types, now) for o in await fetch(credentials, args.selector)]
            if args.output == "json":
                text = json.dumps(rows, indent=2)
            else:
                text = render(rows, wide=args.output == "wide", colour=colour)
            comparable = [{k: v for k, v in r.items() if k != "AGE"} for r in rows]
            if comparable != previous:
                if args.watch and colour and previous is not None:
                    print("\x1b[2J\x1b[H", end="")
                elif args.watch and previous is not None:
                    print()
                print(text, flush=True)
                previous = comparable
            if not args.watch:
                return 0
            await asyncio.sleep(args.interval)
    finally:
        await credentials.close()


DEFAULT_NAMESPACE = "apiservice-operator"
EXPLAIN_WAIT = 60.0  # seconds: the operator bounds an explain at 30


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def _certificate(c: dict[str, Any]) -> str:
    names = f", names {', '.join(c['names'])}" if c.get("names") else ""
    return f"{c['subject']} (issuer {c['issuer']}, ends {c['not_after']}{names})"


def render_explain(report: dict[str, Any]) -> str:
    """The trace as text, hop by hop; pure, so it is tested with plain dicts."""
    a = report["apiservice"]
    lines = [f"APIService {report['name']}: group {a['group'] or '(core)'}, version {a['version']}"]
    if a["service"] is None:
        lines.append("  local: kube-apiserver serves it itself")
    else:
        lines.append(f"  service {a['service']} port {a['port']}"
                     + ("; insecureSkipTLSVerify" if a["insecureSkipTLSVerify"] else ""))
        for c in a["caBundle"]:
            lines.append(f"  caBundle: {_certificate(c)}")
    if change := report.get("lastBackendChange"):
        lines.append(f"  last change of backend ({change['event']} Event {change.get('time') or ''}): "
                     f"{change['message']}")
        svc = report["service"]
        if svc is None:
            lines.append("Service: not found")
        else:
            ports = ", ".join(f"{p.get('port')} {p.get('name') or '(unnamed)'} -> {p.get('targetPort', p.get('port'))}"
                              for p in svc["ports"])
            lines.append(f"Service: {svc['type']}" + (f" {svc['externalName']}" if svc.get("externalName") else "")
                         + (f", ports {ports}" if ports else ""))
        for sl in report["endpointSlices"]:
            ports = ", ".join(f"{p.get('name')}={p.get('port')}" for p in sl["ports"])
            eps = ", ".join(f"{'/'.join(e['addresses'])} {'not ready' if e['ready'] is False else 'ready'}"
                            for e in sl["endpoints"]) or "no endpoints"
            lines.append(f"EndpointSlice {sl['name']}: {eps}; ports {ports or 'none'}")
    if report.get("resolution"):
        r = report["resolution"]
        lines.append(f"Resolved without a probe: {r['status']}/{r['reason']}: {r['message']}")
    for e in report["endpoints"]:
        lines.append(f"Endpoint {e['endpoint']} (from inside the cluster):")
        lines.append(f"  TCP connect   {_seconds(e['tcpSeconds']) or 'failed'}")
        presented = "; ".join(_certificate(c) for c in e["presented"]) or "nothing"
        lines.append(f"  TLS           {_seconds(e['tlsSeconds'])}  presented {presented}")
        lines.append(f"                {e['tls']}")
        status = e["httpStatus"]
        lines.append(f"  HTTP          {status if status is not None else 'no answer'}  {_seconds(e['seconds'])}"
                     + (f"  {e['body']}" if e.get("body") else ""))
        lines.append(f"  document      {'ok' if e['ok'] else e['detail']}")
    if report.get("instancesVia"):
        lines.append(f"Through kube-apiserver ({report['instancesVia']}), as users do:")
        for i in report["instances"]:
            mark = " (its last own answer: this request met kube-apiserver's 503 gate)" if i.get("remembered") else ""
            lines.append(f"  {i['instance']}  {i['outcome']}{mark}  {_seconds(i['seconds'])}  {i['detail']}")
        if not report["instances"]:
            lines.append("  no kube-apiserver instance known")
    if report.get("clientsView"):
        lines.append("What clients read (each instance's aggregated discovery, GET /apis v2, and /openapi/v3):")
        for v in report["clientsView"]:
            state = v["freshness"] or f"not read ({v['detail']})"
            count = f", {len(v['resources'])} resources ({', '.join(v['resources'][:8])})" if v["resources"] else ""
            openapi = v.get("openapi") or f"not read ({v.get('openapiDetail') or 'off'})"
            if v.get("openapi") and v.get("openapiDetail"):
                openapi += f" ({v['openapiDetail']})"
            lines.append(f"  {v['instance']}: discovery {state}{count}; OpenAPI {openapi}")
    if report.get("serverDocuments"):
        lines.append("The server's own answers (what kube-apiserver builds those from):")
        lines += [f"  {d['says']}" for d in report["serverDocuments"]]
    kube = report["kubeApiserver"]
    lines.append(f"kube-apiserver's own Available: {kube['status'] or '<none>'}"
                 + (f": {kube['message']}" if kube.get("message") else ""))
    for title, conditions in (("Our conditions now", report["current"]), ("This check says", report["verdict"])):
        lines.append(f"{title}:")
        lines += [f"  {c['type']}: {c['status']}/{c['reason']}: {c['message']}" for c in conditions] or ["  none yet"]
    lines.append(f"Fix: {report['fix'] or 'see the message above'}")
    return "\n".join(lines)


def explain_failure(status: int, body: str, name: str, where: str) -> str:
    """Why no trace came back, in words: pure."""
    if status == 404 and "handles no APIService" in body:
        return f"explain: the operator handles no APIService named {name!r}"
    if status == 429:
        return "explain: the operator is busy with other explains; try again in a few seconds"
    return f"explain: the operator at {where} answered HTTP {status}: {body.strip()[:300]}"


async def _fetch(url: str) -> tuple[int, str]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(EXPLAIN_WAIT), trust_env=False) as http:
        response = await http.get(url)
        return response.status_code, response.text


async def explain_async(args: argparse.Namespace) -> int:
    path = f"/explain/{urllib.parse.quote(args.name, safe='')}"
    where = args.operator_url or ""
    try:
        if args.operator_url:
            status, text = await _fetch(args.operator_url.rstrip("/") + path)
        else:
            credentials = Credentials(args.kubeconfig)
            await credentials.load()
            try:
                pod = await operator_pod(credentials, args.namespace)
            finally:
                await credentials.close()
            where = f"pod {args.namespace}/{pod}"
            async with forwarded(args.kubeconfig_flag, args.namespace, pod, args.explain_port) as local:
                status, text = await _fetch(f"http://127.0.0.1:{local}{path}")
    except ForwardFailed as exc:
        print(f"explain: {exc}", file=sys.stderr)
        return 1
    except httpx.HTTPError as exc:
        print(f"explain: no operator answers at {where or 'the forwarded port'}: {exc!r}", file=sys.stderr)
        return 1
    if status != 200:
        print(explain_failure(status, text, args.name, where), file=sys.stderr)
        return 1
    report = json.loads(text)
    print(json.dumps(report, indent=2) if args.output == "json" else render_explain(report))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["explain"]:
        return explain_main(argv[1:])
    return table_main(argv)


def explain_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="kubectl apiservices explain",
                                description="One fresh check of one APIService, hop by hop, from the operator.")
    p.add_argument("name")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    p.add_argument("--kubeconfig", default=None)
    p.add_argument("-n", "--namespace", default=os.environ.get("APISERVICE_OPERATOR_NAMESPACE", DEFAULT_NAMESPACE),
                   help="the operator's namespace (env: APISERVICE_OPERATOR_NAMESPACE)")
    p.add_argument("--explain-port", type=int, default=int(os.environ.get("APISERVICE_OPERATOR_EXPLAIN_PORT", "8081")),
                   help="the operator's --explain-port (env: APISERVICE_OPERATOR_EXPLAIN_PORT)")
    p.add_argument("--operator-url", default=os.environ.get("APISERVICE_OPERATOR_URL"),
                   help="ask an operator that runs beside you at this URL (http://127.0.0.1:8081) instead of a "
                        "port-forward to its Pod (env: APISERVICE_OPERATOR_URL)")
    args = p.parse_args(argv)
    args.kubeconfig_flag = args.kubeconfig
    args.kubeconfig = args.kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    try:
        return asyncio.run(explain_async(args))
    except KeyboardInterrupt:
        return 130


def table_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="kubectl apiservices", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", choices=("table", "wide", "json"), default="table")
    p.add_argument("-w", "--watch", action="store_true", help="print again whenever something changes")
    p.add_argument("-l", "--selector", default="", help="label selector")
    p.add_argument("--kubeconfig", default=None)
    p.add_argument("--interval", type=float, default=2.0, help="--watch poll interval, seconds")
    p.add_argument("--condition-prefix", default=os.environ.get("APISERVICE_OPERATOR_CONDITION_PREFIX",
                                                                 DEFAULT_CONDITION_PREFIX))
    args = p.parse_args(argv)
    args.kubeconfig = args.kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    try:
        return asyncio.run(main_async(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
