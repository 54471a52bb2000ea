"""A minimal HTTPS server for the prober's tests, living in its own threads on 127.0.0.1.

It answers what tests/cluster/aggserver.py cannot (a non-JSON body, a body that drips forever, silence at
any stage) and, since it runs in threads rather than in the test's event loop, the loop under test only does
client I/O. Every request's headers and every failed TLS handshake are recorded for the assertions.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

_REASONS = {200: "OK", 302: "Found", 401: "Unauthorized", 403: "Forbidden", 500: "Internal Server Error"}
_POLL = 0.05  # how often blocked threads look at the stop flag, in seconds


@dataclass(frozen=True)
class Answer:
    """What the server does with each connection."""

    status: int = 200
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),)
    drip: float | None = None  # seconds between the body's bytes, after headers sent at once; None: all at once
    endless: bool = False  # with drip: never finish the body (Content-Length says more than ever comes)
    silent: bool = False  # complete TLS, read the request, never answer
    tls: bool = True  # False: accept the TCP connection and never even answer the ClientHello
    silent_under: str | None = None  # requests for paths that start with this are read and never answered


@dataclass
class Record:
    requests: list[dict[str, str]] = field(default_factory=list)  # each request's headers, lower-cased names
    paths: list[str] = field(default_factory=list)
    server_names: list[str | None] = field(default_factory=list)  # the SNI of every TLS handshake
    handshake_failures: list[str] = field(default_factory=list)
    connections: int = 0
    body_bytes_sent: int = 0
    headers_sent: threading.Event = field(default_factory=threading.Event)

    @property
    def authorizations(self) -> list[str | None]:
        return [r.get("authorization") for r in self.requests]


class TLSServer:
    def __init__(self, cert: Path, key: Path, answer: Answer) -> None:
        self.answer = answer
        self.record = Record()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(cert, key)
        self._context.set_alpn_protocols(["http/1.1"])
        self._context.sni_callback = self._sni
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(_POLL)
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept_loop, name=f"tls-server-{self.port}", daemon=True)]
        self._threads[0].start()

    def __enter__(self) -> TLSServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv(); close() alone does not
            with contextlib.suppress(OSError):
                sock.close()
        for thread in list(self._threads):
            thread.join(5)
        self._listener.close()

    def _sni(self, _sock: ssl.SSLObject, server_name: str | None, _context: ssl.SSLContext) -> None:
        with self._lock:
            self.record.server_names.append(server_name)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.record.connections += 1
                self._sockets.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if not self.answer.tls:
                self._stop.wait()
                return
            conn.settimeout(5)
            try:
                tls = self._context.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                with self._lock:
                    self.record.handshake_failures.append(str(exc))
                return
            with self._lock:
                self._sockets.append(tls)
            self._serve_requests(tls)
        except OSError:
            return  # the client went away, or stop() closed the socket
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    def _serve_requests(self, tls: ssl.SSLSocket) -> None:
        buffered = b""
        while not self._stop.is_set():
            while b"\r\n\r\n" not in buffered:
                chunk = tls.recv(65536)
                if not chunk:
                    return
                buffered += chunk
            head, _, buffered = buffered.partition(b"\r\n\r\n")
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in header_lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            path = request_line.split(" ")[1]
            with self._lock:
                self.record.requests.append(headers)
                self.record.paths.append(path)
            silent_under = self.answer.silent_under
            if self.answer.silent or (silent_under is not None and path.startswith(silent_under)):
                self._stop.wait()
                return
            self._respond(tls)

    def _respond(self, tls: ssl.SSLSocket) -> None:
        answer = self.answer
        body = answer.body
        length = len(body) * 1000 if answer.endless else len(body)
        head = f"HTTP/1.1 {answer.status} {_REASONS.get(answer.status, 'Status')}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in answer.headers)
        head += f"Content-Length: {length}\r\n\r\n"
        if answer.drip is None:
            tls.sendall(head.encode("latin-1") + body)
            self.record.body_bytes_sent += len(body)
            self.record.headers_sent.set()
            return
        tls.sendall(head.encode("latin-1"))
        self.record.headers_sent.set()
        index = 0
        while not self._stop.wait(answer.drip):
            tls.sendall(body[index % len(body):index % len(body) + 1])
            self.record.body_bytes_sent += 1
            index += 1
            if index == len(body) and not answer.endless:
                return
