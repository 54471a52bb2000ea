"""kubectl-apiservices: a table of every APIService with kube-apiserver's verdict beside ours.

    kubectl apiservices [-o wide|json] [--watch] [-l SELECTOR] [--kubeconfig FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from kubernetes_asyncio import client

from apiservice_operator.blast import blocked_count
from apiservice_operator.kubeapi import GROUP, PLURAL, VERSION, Credentials
from apiservice_operator.model import DEFAULT_CONDITION_PREFIX, ConditionTypes

COLUMNS = ("NAME", "SERVICE", "KUBE-APISERVER", "PROBED", "REASON", "PATH", "LATENCY", "ENDPOINTS", "AGE")
_PASSED = re.compile(r"passed (?:through .*? and )?on (\d+)/(\d+) endpoints in (\S+)")
# the user's path: how many kube-apiserver instances served discovery (DESIGN 9)
_PATH = re.compile(r"(\d+)/(\d+) kube-apiserver (?:instances|\()")
_FAILED = re.compile(r"from (\d+)/(\d+) endpoints")
# the first certificate to end, from our Degraded message (decide._watch_certificates)
_CERT_ENDS = re.compile(r"(?:earliest certificate ends |a certificate ends in \d+ days? \()(\d{4}-\d\d-\d\dT[\d:]+Z)")
WIDE_COLUMNS = ("CERT", "BLOCKING", "MESSAGE")
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
        "CERT": cert,
        "BLOCKING": str(blocked_count(ours.get("message", ""))) if blocked_count(ours.get("message", "")) else "",
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
    listing = await api.list_cluster_custom_object(GROUP, VERSION, PLURAL, label_selector=selector)
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


def main(argv: Sequence[str] | None = None) -> int:
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
