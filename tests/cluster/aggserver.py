"""A real aggregated API server for tests: HTTPS, one group/version, misbehaviour on demand.

Run as its own process:
    python -m tests.cluster.aggserver --address 10.250.0.5 --port 8443 --cert C --key K \
        --group demo.example.com --version v1 --state state.json --record requests.jsonl

Behaviour is read from the JSON state file on every connection, so a test flips a running server
between healthy and broken without restarting it:
    {"mode": "healthy" | "status" | "wrong-document" | "hang" | "close" | "tcp-hang",
     "delay": seconds before answering, "status": HTTP status for mode "status"}
Every request is appended to the record file (path and Authorization header), which lets tests
prove where the operator's token went.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import ssl
import sys
import time
from pathlib import Path
from typing import Any

_REASONS = {200: "OK", 302: "Found", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            500: "Internal Server Error", 503: "Service Unavailable"}


def discovery_document(group: str, version: str) -> dict[str, Any]:
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": [{
            "name": "widgets", "singularName": "widget", "namespaced": True, "kind": "Widget",
            "verbs": ["get", "list"],
        }],
    }


class Server:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.discovery_path = f"/apis/{args.group}/{args.version}" if args.group else f"/api/{args.version}"
        self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.tls.load_cert_chain(args.cert, args.key)
        # Only HTTP/1.1: kube-apiserver and our probe both speak it, and it keeps the knobs exact.
        self.tls.set_alpn_protocols(["http/1.1"])
        self.state_path = Path(args.state) if args.state else None
        self.record_path = Path(args.record) if args.record else None

    def state(self) -> dict[str, Any]:
        if self.state_path is None:
            return {"mode": "healthy"}
        try:
            return dict(json.loads(self.state_path.read_text() or "{}"))
        except (FileNotFoundError, json.JSONDecodeError):
            return {"mode": "healthy"}

    def record(self, entry: dict[str, Any]) -> None:
        if self.record_path is not None:
            with self.record_path.open("a") as f:
                f.write(json.dumps(entry) + "\n")

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            state = self.state()
            if state.get("mode") == "tcp-hang":
                await asyncio.sleep(3600)
                return
            await writer.start_tls(self.tls)
            while True:
                request_line = await reader.readline()
                if not request_line:
                    return
                headers: dict[str, str] = {}
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                method, path, _ = ([*request_line.decode("latin-1").split(" "), "", ""])[:3]
                state = self.state()
                self.record({"time": time.time(), "method": method, "path": path,
                             "authorization": headers.get("authorization"),
                             "user_agent": headers.get("user-agent"), "mode": state.get("mode", "healthy")})
                keep_alive = await self.respond(writer, path, state)
                if not keep_alive:
                    return
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, OSError):
            return
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def respond(self, writer: asyncio.StreamWriter, path: str, state: dict[str, Any]) -> bool:
        mode = state.get("mode", "healthy")
        delay = float(state.get("delay", 0))
        if delay:
            await asyncio.sleep(delay)
        if mode == "hang":
            await asyncio.sleep(3600)
            return False
        if mode == "close":
            return False
        path = path.split("?", 1)[0]
        if path != self.discovery_path:
            await self.send(writer, 404, {"kind": "Status", "status": "Failure", "code": 404})
            return True
        if mode == "status":
            code = int(state.get("status", 500))
            await self.send(writer, code, {"kind": "Status", "status": "Failure", "code": code})
            return True
        document = discovery_document(self.args.group, self.args.version)
        if mode == "wrong-document":
            document = {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "wrong.example.com/v9",
                        "resources": []}
        await self.send(writer, 200, document)
        return True

    async def send(self, writer: asyncio.StreamWriter, code: int, body_obj: Any) -> None:
        body = json.dumps(body_obj).encode()
        head = (f"HTTP/1.1 {code} {_REASONS.get(code, 'Status')}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        writer.write(head + body)
        await writer.drain()


async def serve(args: argparse.Namespace) -> None:
    server = Server(args)
    listener = await asyncio.start_server(server.handle, args.address, args.port)
    print(f"READY {args.address}:{args.port} {server.discovery_path}", flush=True)
    async with listener:
        await listener.serve_forever()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--address", required=True)
    p.add_argument("--port", type=int, default=8443)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--group", required=True, help="API group; empty for the legacy core group")
    p.add_argument("--version", required=True)
    p.add_argument("--state", help="JSON file with the current behaviour, re-read per request")
    p.add_argument("--record", help="append one JSON line per request here")
    args = p.parse_args(argv)
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
