"""ConnectionPool: kept connections per server address, taken and given back in constant time.

httpcore's own pool walks every connection it holds for every request it places, asking each one's
socket whether it is readable: with 64 connections and hundreds of probes waiting that bookkeeping
was 82 % of the operator's CPU at N = 1,000 (make bench, 2026-11-29), and the probes' budgets ran
out in its queue. A probe needs less: a kept connection to this address if one is idle, else a new
one. Open connections are not limited here (kube-aggregator's Go transport does not limit them
either): a server that hangs holds its probes' connections, never another server's.

It plugs in under httpx (httpx.AsyncHTTPTransport's pool), so requests, responses, timeouts and
error mapping stay httpx's and the HTTP/1.1 connection itself stays httpcore's (on anyio: asyncio's
own SSL transport was ~10 % cheaper per probe but holds a 256 KiB buffer per connection, make bench).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable
from types import TracebackType

import httpcore
import httpx

# idle connections kept per (host, port), more are closed when given back: each costs ~70 KiB, and
# with 8 a steady 170 probes/s at N = 1,000 still spent 12 % of the CPU on new TLS handshakes
KEEP_PER_ADDRESS = 16
KEEPALIVE_SECONDS = 30.0

_Address = tuple[bytes, bytes, int]


def transport(ssl_context: ssl.SSLContext, keep: int = KEEP_PER_ADDRESS,
              on_open: Callable[[], None] | None = None) -> tuple[httpx.AsyncHTTPTransport, ConnectionPool]:
    """httpx's transport (its request and response mapping, its error types) over a pool of ours."""
    made = httpx.AsyncHTTPTransport(verify=ssl_context)
    connections = ConnectionPool(ssl_context, keep, on_open=on_open)
    made._pool = connections  # type: ignore[assignment]  # httpx has no hook for another pool
    return made, connections


class ConnectionPool:
    """httpcore's request interface, over idle connections kept newest-last per address."""

    def __init__(self, ssl_context: ssl.SSLContext, keep: int = KEEP_PER_ADDRESS,
                 keepalive: float = KEEPALIVE_SECONDS, on_open: Callable[[], None] | None = None) -> None:
        self._ssl_context = ssl_context
        self._on_open = on_open
        self._keep = keep
        self._keepalive = keepalive
        self._idle: dict[_Address, deque[tuple[httpcore.AsyncHTTPConnection, float]]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._swept_at = time.monotonic()
        self.opened = 0  # connections made, for tests and the benchmark's evidence

    def idle(self) -> int:
        return sum(len(kept) for kept in self._idle.values())

    def _take(self, address: _Address) -> httpcore.AsyncHTTPConnection | None:
        kept = self._idle.get(address)
        now = time.monotonic()
        while kept:
            connection, since = kept.pop()
            if now - since > self._keepalive:
                # the newest is too old, so are all older ones
                self._close(connection, *(c for c, _ in kept))
                kept.clear()
                break
            if connection.is_available() and not connection.has_expired():  # has_expired: the server hung up
                return connection
            self._close(connection)
        return None

    def _give_back(self, address: _Address, connection: httpcore.AsyncHTTPConnection) -> None:
        if not connection.is_idle() or connection.is_closed():
            return
        now = time.monotonic()
        kept = self._idle.setdefault(address, deque())
        kept.append((connection, now))
        while len(kept) > self._keep:
            self._close(kept.popleft()[0])
        if now - self._swept_at > self._keepalive:
            self.expire_idle(now)

    def expire_idle(self, now: float | None = None) -> int:
        """Closes the idle connections kept longer than the keep-alive, at every address: those of an
        endpoint that went away (a rollout's old Pod IPs, a deleted APIService) were otherwise kept
        until the same address was asked again, which may be never. Runs at most once a keep-alive
        from _give_back; returns how many it closed."""
        now = time.monotonic() if now is None else now
        self._swept_at = now
        closed = 0
        for address in list(self._idle):
            kept = self._idle[address]
            while kept and now - kept[0][1] > self._keepalive:  # oldest first
                self._close(kept.popleft()[0])
                closed += 1
            if not kept:
                del self._idle[address]
        return closed

    def _close(self, *connections: httpcore.AsyncHTTPConnection) -> None:
        for connection in connections:
            task = asyncio.get_running_loop().create_task(connection.aclose())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        url = request.url
        address = (url.scheme, url.host, url.port or (443 if url.scheme == b"https" else 80))
        connection = self._take(address)
        if connection is None:
            connection = httpcore.AsyncHTTPConnection(
                origin=url.origin, ssl_context=self._ssl_context, keepalive_expiry=self._keepalive)
            self.opened += 1
            if self._on_open is not None:
                self._on_open()
        # if the exchange breaks off (an error, the budget's cancel) httpcore closes the connection
        # itself, and it is not given back
        response = await connection.handle_async_request(request)
        assert isinstance(response.stream, AsyncIterable)
        body = _GiveBackOnClose(response.stream, lambda: self._give_back(address, connection))
        return httpcore.Response(status=response.status, headers=response.headers, content=body,
                                 extensions=response.extensions)

    async def aclose(self) -> None:
        connections = [c for kept in self._idle.values() for c, _ in kept]
        self._idle.clear()
        await asyncio.gather(*(c.aclose() for c in connections), *self._closing, return_exceptions=True)

    async def __aenter__(self) -> ConnectionPool:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None = None, exc: BaseException | None = None,
                        traceback: TracebackType | None = None) -> None:
        await self.aclose()


class _GiveBackOnClose:
    """The response body: reading it to the end and closing it leaves the connection idle for the
    next probe; a body left unread (an excerpt) makes httpcore close the connection instead."""

    def __init__(self, stream: AsyncIterable[bytes], give_back: Callable[[], None]) -> None:
        self._stream = stream
        self._give_back = give_back
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for part in self._stream:
            yield part

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            await close()
        self._give_back()
