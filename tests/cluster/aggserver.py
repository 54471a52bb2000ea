"""A real aggregated API server for tests: HTTPS, one group/version, misbehaviour on demand.

Run as its own process:
    python -m tests.cluster.aggserver --address 10.250.0.5 --port 8443 --cert C --key K \
        --group demo.example.com --version v1 --state state.json --record requests.jsonl

Behaviour is read from the JSON state file on every connection, so a test flips a running server
between healthy and broken without restarting it:
    {"mode": "healthy" | "status" | "wrong-document" | "hang" | "close" | "tcp-hang",
     "delay": seconds before answering, "status": HTTP status for mode "status",
     "auth": "front-proxy-untrusted" | "masters-only" (see Server.refusal)}
Hostile modes, for the fault tests (each documented at HOSTILE_MODES below):
    "slowloris" | "garbage-tls" | "garbage-http" | "huge-body" | "endless-chunked" | "redirect" |
    "http10-close" | "reset-mid-body"
  with "drip" (slowloris: seconds per body byte, default 1) and "size" (huge-body: bytes, default 100 MiB).
Every request is appended to the record file (path and Authorization header), which lets tests
prove where the operator's token went. With "record_handshakes": true in the state, a TLS handshake
that fails (a client that refused our certificate) is recorded too, as a line with
"event": "handshake-failed" and no request fields.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gzip
import io
import json
import socket
import ssl
import struct
import sys
import time
from pathlib import Path
from typing import Any

_REASONS = {200: "OK", 302: "Found", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            500: "Internal Server Error", 503: "Service Unavailable"}

HOSTILE_MODES = {
    "slowloris": "200 and the headers of the valid document at once, then its body one byte per `drip` seconds",
    "garbage-tls": "answers the TLS ClientHello with plain-text garbage (the connection never becomes TLS)",
    "garbage-http": "completes TLS, reads the request, answers with bytes that are not an HTTP response",
    "huge-body": "200 with a Content-Length of `size` bytes (100 MiB): a discovery document padded to that size",
    "endless-chunked": "200, Transfer-Encoding: chunked, and chunks of a never-ending document, as fast as it can",
    "redirect": "302 Found to /redirected on the same server (`status` picks another 3xx)",
    "http10-close": "an HTTP/1.0 response without Content-Length, the body delimited by closing: otherwise valid",
    "reset-mid-body": "200 with Content-Length, half of the body, then a TCP reset (SO_LINGER 0)",
    "deep-nesting": "200 and a body of 5,000 `[` (json.loads raises RecursionError on it)",
    "deep-error": "500 and a 4 KiB body of `[`: the error's words are read too, and relayed by kube-apiserver",
    "huge-number": "200 and a discovery document carrying an integer of 100,000 digits",
    "invalid-utf8": "200 and a discovery document whose groupVersion holds bytes that are not UTF-8",
    "gzip-bomb": "200, Content-Encoding: gzip, 100 MiB of zeros in ~100 KiB, though the client asked for identity",
    "header-flood": "200 after 20,000 header lines (~1 MiB of headers), then the valid document",
}
# Modes decided when a connection opens: a kept-alive connection that sees one of them is closed,
# so the client's next connection meets the misbehaviour.
_CONNECTION_MODES = ("garbage-tls",)
_CHUNK = 64 * 1024


@functools.cache
def _gzip_bomb() -> bytes:
    """100 MiB of zeros, gzipped (~100 KiB), made in 1 MiB pieces so the server never holds 100 MiB."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9) as packed:
        for _ in range(100):
            packed.write(bytes(1024 * 1024))
    return out.getvalue()


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


AGGREGATED_DISCOVERY = "g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"


def aggregated_discovery(group: str, version: str) -> dict[str, Any]:
    """The root /apis as aggregated discovery v2 (what kube-apiserver's discovery manager asks for)."""
    return {
        "kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {},
        "items": [{"metadata": {"name": group}, "versions": [{
            "version": version, "freshness": "Current",
            "resources": [{"resource": "widgets", "singularResource": "widget", "scope": "Namespaced",
                           "responseKind": {"group": group, "version": version, "kind": "Widget"},
                           "verbs": ["get", "list"]}]}]}],
    }


def group_list(group: str, version: str) -> dict[str, Any]:
    gv = {"groupVersion": f"{group}/{version}", "version": version}
    return {"kind": "APIGroupList", "apiVersion": "v1",
            "groups": [{"name": group, "versions": [gv], "preferredVersion": gv}]}


def openapi_v2(group: str, version: str) -> dict[str, Any]:
    """A minimal Swagger 2.0 document, which kube-apiserver converts into its /openapi/v3 entry."""
    return {"swagger": "2.0", "info": {"title": f"{group} test server", "version": version}, "paths": {
        f"/apis/{group}/{version}/": {"get": {"operationId": f"getAPIResources{version}",
                                              "responses": {"200": {"description": "OK"}}}}}}


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
            if state.get("mode") == "garbage-tls":
                writer.write(b"this is not TLS, " * 64 + b"\r\n\r\n")
                await writer.drain()
                await asyncio.sleep(1)  # let the client read it before the connection closes
                return
            try:
                await writer.start_tls(self.tls)
            except (ssl.SSLError, ConnectionError, OSError) as exc:
                if state.get("record_handshakes"):
                    self.record({"time": time.time(), "event": "handshake-failed", "error": str(exc),
                                 "method": None, "path": None, "authorization": None, "user_agent": None,
                                 "mode": state.get("mode", "healthy")})
                return
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
                    key = name.strip().lower()
                    # repeated headers (kube-apiserver sends one X-Remote-Group per group) are joined
                    headers[key] = f"{headers[key]},{value.strip()}" if key in headers else value.strip()
                method, path, _ = ([*request_line.decode("latin-1").split(" "), "", ""])[:3]
                state = self.state()
                self.record({"time": time.time(), "method": method, "path": path,
                             "authorization": headers.get("authorization"),
                             "remote_user": headers.get("x-remote-user"),
                             "user_agent": headers.get("user-agent"), "mode": state.get("mode", "healthy")})
                refusal = self.refusal(headers, path, state)
                if refusal is not None:
                    await self.send(writer, refusal[0], {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                                         "code": refusal[0], "message": refusal[1]})
                    continue
                keep_alive = await self.respond(writer, path, state, headers.get("accept", ""))
                if not keep_alive:
                    return
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, OSError):
            return
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    @staticmethod
    def refusal(headers: dict[str, str], path: str, state: dict[str, Any]) -> tuple[int, str] | None:
        """Mimics the authentication of a server built on k8s.io/apiserver, as set by "auth" in the
        state (forwarded requests carry no bearer token but X-Remote-User/-Group from kube-apiserver;
        the headers are believed without checking the front-proxy certificate: a mimic, the real
        k8s.io/sample-apiserver is the proof):
        - "front-proxy-untrusted": it does not trust kube-apiserver's front-proxy CA, so forwarded
          callers are system:anonymous and refused; a bearer token (a direct caller) is served;
        - "masters-only": its TokenReviews and SubjectAccessReviews are forbidden (no
          system:auth-delegator binding): only group system:masters is allowed, a bearer token is 401."""
        auth = state.get("auth")
        path = path.split("?", 1)[0]
        forwarded = "authorization" not in headers
        if auth == "front-proxy-untrusted" and forwarded:
            return 403, f'forbidden: User "system:anonymous" cannot get path "{path}"'
        if auth == "masters-only":
            if not forwarded:
                return 401, "Unauthorized"
            groups = [g.strip() for g in headers.get("x-remote-group", "").split(",")]
            if "system:masters" not in groups:
                user = headers.get("x-remote-user", "system:anonymous")
                return 500, (f'Internal Server Error: "{path}": subjectaccessreviews.authorization.k8s.io is '
                             f'forbidden: User "system:serviceaccount:test:api" cannot create resource '
                             f'"subjectaccessreviews" (asked for {user})')
        return None

    async def respond(self, writer: asyncio.StreamWriter, path: str, state: dict[str, Any], accept: str = "") -> bool:
        mode = state.get("mode", "healthy")
        delay = float(state.get("delay", 0))
        if delay:
            await asyncio.sleep(delay)
        if mode == "hang":
            await asyncio.sleep(3600)
            return False
        if mode == "close":
            return False
        if mode in _CONNECTION_MODES:
            return False  # a kept-alive connection: close it, the next one meets the mode
        path = path.split("?", 1)[0]
        if mode in HOSTILE_MODES and path == self.discovery_path:
            return await self.respond_hostile(writer, mode, path, state)
        if path != self.discovery_path:
            # what a real extension server (k8s.io/apiserver) serves besides its group/version, and
            # kube-apiserver reads for the clients' view (DESIGN 10): without them the group is
            # missing from kube-apiserver's /openapi/v3 and served by the legacy discovery fallback
            if path == "/apis" and self.args.group:
                # {"apis": "status", "apis_status": 503} | {"apis": "delay", "apis_delay": 7} |
                # {"apis": "without-group"}: root /apis misbehaves while the group/version is served
                apis = state.get("apis")
                if apis == "status":
                    code = int(state.get("apis_status", 503))
                    await self.send(writer, code, {"kind": "Status", "status": "Failure", "code": code})
                    return True
                if apis == "delay":
                    await asyncio.sleep(float(state.get("apis_delay", 7)))
                if apis == "without-group" and AGGREGATED_DISCOVERY in accept:
                    document = aggregated_discovery(self.args.group, self.args.version)
                    document["items"] = []
                    await self.send(writer, 200, document, content_type=f"application/json;{AGGREGATED_DISCOVERY}")
                    return True
                if AGGREGATED_DISCOVERY in accept:
                    await self.send(writer, 200, aggregated_discovery(self.args.group, self.args.version),
                                    content_type=f"application/json;{AGGREGATED_DISCOVERY}")
                else:
                    await self.send(writer, 200, group_list(self.args.group, self.args.version))
                return True
            if path.startswith("/openapi/") and state.get("openapi") == "status":
                # {"openapi": "status", "openapi_status": 503}: its OpenAPI fails while discovery works
                code = int(state.get("openapi_status", 503))
                await self.send(writer, code, {"kind": "Status", "status": "Failure", "code": code})
                return True
            if path == "/openapi/v2":
                await self.send(writer, 200, openapi_v2(self.args.group, self.args.version))
                return True
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

    def document_bytes(self) -> bytes:
        return json.dumps(discovery_document(self.args.group, self.args.version)).encode()

    def padded_prefix(self) -> bytes:
        """The start of a valid discovery document whose last field is a long string."""
        document = discovery_document(self.args.group, self.args.version)
        return json.dumps(document).encode()[:-1] + b', "padding": "'

    @staticmethod
    async def drain(writer: asyncio.StreamWriter) -> None:
        """drain() that notices a client gone away. asyncio's returns without yielding while the
        buffer is low, so the loop never runs the callback that reports the lost connection, and an
        endless writer would spin (logging every failed send) forever: yield, then check."""
        await asyncio.sleep(0)
        if writer.transport.is_closing():
            raise ConnectionResetError("the client went away")
        await writer.drain()

    async def respond_hostile(self, writer: asyncio.StreamWriter, mode: str, path: str,
                              state: dict[str, Any]) -> bool:
        """The hostile modes (HOSTILE_MODES); True keeps the connection open for the next request."""
        drain = self.drain
        if mode == "slowloris":
            body = self.document_bytes()
            writer.write(f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode())
            await drain(writer)
            drip = float(state.get("drip", 1.0))
            for i in range(len(body)):
                writer.write(body[i:i + 1])
                await drain(writer)
                await asyncio.sleep(drip)
            return True
        if mode == "garbage-http":
            writer.write(b"\x00\x01\x02 SPDY/9 nonsense \xff\xfe\r\nnot: a status line\r\n\r\n{}")
            await drain(writer)
            return False
        if mode in ("huge-body", "endless-chunked"):
            size = int(state.get("size", 100 * 1024 * 1024))
            prefix = self.padded_prefix()
            chunked = mode == "endless-chunked"
            head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {size}\r\n\r\n"
            writer.write(head.encode())
            padding = b"a" * _CHUNK
            if chunked:
                writer.write(b"%x\r\n%s\r\n" % (len(prefix), prefix))
                while True:
                    writer.write(b"%x\r\n%s\r\n" % (len(padding), padding))
                    await drain(writer)
            sent = len(prefix)
            writer.write(prefix)
            end = b'"}'
            while sent + len(end) < size:
                piece = padding[:min(_CHUNK, size - len(end) - sent)]
                writer.write(piece)
                sent += len(piece)
                await drain(writer)
            writer.write(end)
            await drain(writer)
            return True
        if mode == "redirect":
            code = int(state.get("status", 302))
            body = json.dumps({"kind": "Status", "status": "Failure", "code": code}).encode()
            writer.write((f"HTTP/1.1 {code} {_REASONS.get(code, 'Redirect')}\r\n"
                          f"Location: /redirected{path}\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
            await drain(writer)
            return True
        if mode == "http10-close":
            writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + self.document_bytes())
            await drain(writer)
            return False
        if mode == "reset-mid-body":
            body = self.document_bytes()
            writer.write(f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:len(body) // 2])
            await drain(writer)
            await asyncio.sleep(0.05)
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        if mode in ("deep-nesting", "deep-error", "huge-number", "invalid-utf8", "gzip-bomb", "header-flood"):
            code, headers, body = self.hostile_body(mode)
            head = f"HTTP/1.1 {code} {_REASONS.get(code, 'Status')}\r\nContent-Type: application/json\r\n"
            writer.write(head.encode())
            for line in headers:
                writer.write(line.encode() + b"\r\n")
                if writer.transport.get_write_buffer_size() > _CHUNK:
                    await drain(writer)
            writer.write(f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            await drain(writer)
            return True
        raise AssertionError(f"unknown hostile mode {mode!r}")

    def hostile_body(self, mode: str) -> tuple[int, list[str], bytes]:
        """(status, extra header lines, body) of the hostile modes that answer one request badly."""
        if mode == "deep-nesting":
            return 200, [], b"[" * 5000
        if mode == "deep-error":
            return 500, [], b"[" * 4096
        if mode == "huge-number":
            return 200, [], self.document_bytes()[:-1] + b', "n": ' + b"9" * 100_000 + b"}"
        if mode == "invalid-utf8":
            return 200, [], self.document_bytes().replace(b'"groupVersion": "', b'"groupVersion": "\xff\xfe', 1)
        if mode == "gzip-bomb":
            return 200, ["Content-Encoding: gzip"], _gzip_bomb()
        if mode == "header-flood":
            return 200, [f"X-Flood-{i}: {'a' * 40}" for i in range(20_000)], self.document_bytes()
        raise AssertionError(mode)

    async def send(self, writer: asyncio.StreamWriter, code: int, body_obj: Any,
                   content_type: str = "application/json") -> None:
        body = json.dumps(body_obj).encode()
        head = (f"HTTP/1.1 {code} {_REASONS.get(code, 'Status')}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        writer.write(head + body)
        await writer.drain()


async def serve(args: argparse.Namespace, server_class: type[Server] = Server) -> None:
    server = server_class(args)
    listener = await asyncio.start_server(server.handle, args.address, args.port)
    print(f"READY {args.address}:{args.port} {server.discovery_path}", flush=True)
    async with listener:
        await listener.serve_forever()


def main(argv: list[str] | None = None, server_class: type[Server] = Server,
         group_version: tuple[str, str] | None = None) -> None:
    """group_version: a server class that answers for any group (bench/multigroup.py) takes none."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--address", required=True)
    p.add_argument("--port", type=int, default=8443)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    if group_version is None:
        p.add_argument("--group", required=True, help="API group; empty for the legacy core group")
        p.add_argument("--version", required=True)
    else:
        p.set_defaults(group=group_version[0], version=group_version[1])
    p.add_argument("--state", help="JSON file with the current behaviour, re-read per request")
    p.add_argument("--record", help="append one JSON line per request here")
    args = p.parse_args(argv)
    try:
        asyncio.run(serve(args, server_class))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
