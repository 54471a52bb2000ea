"""probe_discovery: GET the discovery document from every target of a plan, within one budget.

httpx's timeouts are per phase (connect, read, ...), so a slow-drip body could outlive them: the
budget is one total deadline (asyncio.timeout) around connect, TLS, headers and body.
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import logging
import ssl
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace

import httpx

from apiservice_operator import __version__
from apiservice_operator.core import certs
from apiservice_operator.core.documents import read_document, status_message
from apiservice_operator.core.model import Certificate, ErrorKind, Handshake, ProbePlan, ProbeResult, Target
from apiservice_operator.core.silence import Silence
from apiservice_operator.probing import pool
from apiservice_operator.probing.looplag import LoopLag

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 1 << 20
MAX_EXCERPT_BYTES = 4096  # of a non-2xx body, read only to quote who refused and why
MAX_CLIENTS = 1024
USER_AGENT = f"apiservice-operator/{__version__}"
# requests in flight per endpoint, as many as the pool keeps per address: a burst (a start beside
# 1,000 APIServices, 256 checks at once) then reuses connections instead of opening hundreds (TLS
# handshakes were 14 % of the CPU of such a start). The wait for a slot is not part of the budget;
# the waiters on a silent endpoint are judged as soon as they get one.
LANE_SLOTS = pool.KEEP_PER_ADDRESS

TokenSource = Callable[[], str | None]


class InvalidCABundle(ValueError):
    pass


def ssl_context_for(plan: ProbePlan) -> ssl.SSLContext:
    if plan.insecure_skip_tls_verify:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if plan.ca_bundle is None:
        return ssl.create_default_context()  # the system's trust store, as kube-apiserver does
    try:
        return ssl.create_default_context(cadata=plan.ca_bundle.decode("ascii", errors="replace"))
    except (ssl.SSLError, ValueError) as exc:
        raise InvalidCABundle(f"spec.caBundle cannot be loaded: {exc}") from exc


def _classify(exc: BaseException) -> tuple[ErrorKind, str]:
    """The innermost cause says what really happened; httpx wraps it."""
    chain: list[BaseException] = []
    cursor: BaseException | None = exc
    while cursor is not None and len(chain) < 10:
        chain.append(cursor)
        cursor = cursor.__cause__ or cursor.__context__
    for err in chain:
        if isinstance(err, ssl.SSLCertVerificationError):
            return ErrorKind.TLS, f"tls: certificate verify failed: {err.verify_message or err.reason or err}"
        if isinstance(err, ssl.SSLError):
            return ErrorKind.TLS, f"tls: {err.reason or err}"
        if isinstance(err, ConnectionRefusedError):
            return ErrorKind.REFUSED, "connection refused"
        if isinstance(err, ConnectionResetError):
            return ErrorKind.CONNECTION, "connection: reset by the server"
    # httpx/httpcore often raise with an empty message and keep the words in a cause
    text = next((str(err) for err in chain if str(err)), type(exc).__name__)
    if "refused" in text.lower():
        return ErrorKind.REFUSED, "connection refused"
    if "ssl" in text.lower() or "certificate" in text.lower():
        return ErrorKind.TLS, f"tls: {text}"
    return ErrorKind.CONNECTION, f"connection: {text}"


def _served(response: httpx.Response) -> tuple[Certificate, ...]:
    """The server's leaf certificate, as the handshake that verified it saw it (Python 3.11's ssl
    gives the leaf only, not the intermediates)."""
    stream = response.extensions.get("network_stream")
    ssl_object = stream.get_extra_info("ssl_object") if stream is not None else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    leaf = certs.from_der(der) if der else None
    return (leaf,) if leaf is not None else ()


class _NoCookies(http.cookiejar.CookieJar):
    """An aggregated server's cookies are neither kept nor sent back (it is often third-party code),
    and reading each answer's Set-Cookie headers cost 2 % of the operator's CPU at N = 1,000."""

    def extract_cookies(self, response: object, request: object) -> None:
        return None

    def add_cookie_header(self, request: object) -> None:
        return None


@dataclass
class _Lane:
    slots: asyncio.Semaphore
    users: int = 0  # probes holding or waiting for a slot: the lane is dropped when none are left


class Prober:
    """Holds one HTTP client per (trust, server name), so connections are reused but a connection
    verified for one server name is never reused for another."""

    def __init__(self, budget: float, token_source: TokenSource, max_body: int = MAX_BODY_BYTES,
                 on_connection: Callable[[], None] | None = None) -> None:
        self.budget = budget
        self.on_connection = on_connection
        self.token_source = token_source
        self.max_body = max_body
        self._clients: OrderedDict[tuple[bytes | None, bool, str], httpx.AsyncClient] = OrderedDict()
        self._pools: dict[tuple[bytes | None, bool, str], pool.ConnectionPool] = {}
        self.silence = Silence()
        self.on_answer: Callable[[Target], None] | None = None  # a silent endpoint answered again
        self._asking: set[asyncio.Task[None]] = set()  # probes that ask silent endpoints, not waited for
        self._lanes: dict[Target, _Lane] = {}
        self.lag = LoopLag()

    def connections_opened(self) -> int:
        return sum(p.opened for p in self._pools.values())

    def client_for(self, plan: ProbePlan) -> httpx.AsyncClient:
        """The client for this plan's trust and server name (InvalidCABundle when its CA is bad)."""
        return self._client(plan)

    def _client(self, plan: ProbePlan) -> httpx.AsyncClient:
        key = (plan.ca_bundle, plan.insecure_skip_tls_verify, plan.server_name)
        client = self._clients.get(key)
        if client is not None:
            self._clients.move_to_end(key)
            return client
        transport, self._pools[key] = pool.transport(ssl_context_for(plan), on_open=self.on_connection)
        client = httpx.AsyncClient(transport=transport, follow_redirects=False, trust_env=False,
                                   timeout=httpx.Timeout(self.budget), cookies=_NoCookies())
        self._clients[key] = client
        while len(self._clients) > MAX_CLIENTS:
            old, evicted = self._clients.popitem(last=False)
            self._pools.pop(old, None)
            asyncio.get_running_loop().create_task(evicted.aclose())
        return client

    async def aclose(self) -> None:
        for task in list(self._asking):
            task.cancel()
        await asyncio.gather(*self._asking, return_exceptions=True)
        await self.lag.aclose()
        clients, self._clients, self._pools = list(self._clients.values()), OrderedDict(), {}
        await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)

    async def probe_discovery(self, plan: ProbePlan) -> list[ProbeResult]:
        """Each endpoint of an aggregated server; one that has answered nothing for a whole budget
        while a probe to it is still open is judged at once (silence.py)."""
        return await self._probe(plan, judge_silence=True)

    async def probe_every(self, plan: ProbePlan) -> list[ProbeResult]:
        """Every request sent, no silence judged: for explain (a person asking wants this request's
        own answer) and /livez."""
        return await self._probe(plan, judge_silence=False)

    async def _probe(self, plan: ProbePlan, judge_silence: bool) -> list[ProbeResult]:
        try:
            client = self._client(plan)
        except InvalidCABundle as exc:
            return [ProbeResult(t, False, 0.0, ErrorKind.TLS, str(exc)) for t in plan.targets]
        one = self._probe_unless_silent if judge_silence else self._probe_one
        return list(await asyncio.gather(*(one(client, plan, t) for t in plan.targets)))

    async def _probe_unless_silent(self, client: httpx.AsyncClient, plan: ProbePlan, target: Target) -> ProbeResult:
        slot = self._lanes.get(target)
        if slot is None:
            slot = self._lanes[target] = _Lane(asyncio.Semaphore(LANE_SLOTS))
        slot.users += 1
        try:
            async with slot.slots:
                started = asyncio.get_running_loop().time()
                # judged without waiting, in the words of a timeout waited for: a verdict whose message
                # changed from one check to the next would be a status write at each (silence.py)
                if self.silence.start(target, started):
                    return ProbeResult(target, False, 0.0, ErrorKind.TIMEOUT, self._timed_out())
                if self.silence.silent(target):
                    self._keep_asking(client, plan, target, started)
                    return ProbeResult(target, False, 0.0, ErrorKind.TIMEOUT, self._timed_out())
                return await self._asked(client, plan, target, started)
        finally:
            slot.users -= 1
            if not slot.users:
                del self._lanes[target]

    async def _asked(self, client: httpx.AsyncClient, plan: ProbePlan, target: Target, started: float) -> ProbeResult:
        """One probe sent, and the silence told how it ended: answered (anything but a timeout), not
        within its budget, or abandoned (cancelled)."""
        answered: bool | None = None
        try:
            result = await self._probe_one(client, plan, target)
            answered = result.error is not ErrorKind.TIMEOUT
            return result
        finally:
            self.silence.end(target, started, asyncio.get_running_loop().time(), answered)

    def _timed_out(self) -> str:
        return f"timeout: no complete answer within {self.budget:g}s"

    def _keep_asking(self, client: httpx.AsyncClient, plan: ProbePlan, target: Target, started: float) -> None:
        """The probe that asks a silent endpoint for every check behind it, not waited for: its first
        answer of any kind ends the silence, and on_answer has the APIServices behind it looked at."""
        async def ask() -> None:
            result = await self._asked(client, plan, target, started)
            if result.error is not ErrorKind.TIMEOUT and self.on_answer is not None:
                self.on_answer(target)

        task = asyncio.get_running_loop().create_task(ask(), name=f"asking:{target.endpoint}")
        self._asking.add(task)
        task.add_done_callback(self._asking.discard)

    @staticmethod
    async def _excerpt(response: httpx.Response) -> str:
        """The start of a refusal's or an error's body: kube-apiserver's proxy and the aggregated
        server say there who refused and why (a Status message, or plain text)."""
        if response.headers.get("content-encoding", "identity").strip().lower() not in ("", "identity"):
            return ""
        head = bytearray()
        async for chunk in response.aiter_bytes():
            head += chunk
            if len(head) >= MAX_EXCERPT_BYTES:
                break
        return status_message(bytes(head[:MAX_EXCERPT_BYTES]))

    async def _probe_one(self, client: httpx.AsyncClient, plan: ProbePlan, target: Target) -> ProbeResult:
        loop = asyncio.get_running_loop()
        started, lag_before = loop.time(), self.lag.now()

        served: tuple[Certificate, ...] = ()

        def result(error: ErrorKind | None, detail: str = "", code: int | None = None, body: str = "") -> ProbeResult:
            # the server's latency as far as we can tell: our own loop's stalls meanwhile taken out (looplag.py);
            # no answer within the budget is a wait of the whole budget, whatever our loop did
            latency = loop.time() - started
            if error is not ErrorKind.TIMEOUT:
                latency = max(0.0, latency - (self.lag.total - lag_before))
            return ProbeResult(target, error is None, latency, error, detail or "ok", code, body, served)

        headers = {"Accept": "application/json", "Accept-Encoding": "identity", "User-Agent": USER_AGENT}
        token = None if plan.insecure_skip_tls_verify else self.token_source()
        if token:
            # only here: verification is on (check_hostname against server_name), so the token
            # cannot reach a server that failed it; the TLS handshake completes before headers go out
            headers["Authorization"] = f"Bearer {token}"
        url = httpx.URL(scheme="https", host=target.host, port=target.port, path=plan.path)
        try:
            async with asyncio.timeout(self.budget):
                request = client.build_request(
                    "GET", url, headers=headers, extensions={"sni_hostname": plan.server_name})
                response = await client.send(request, stream=True)
                served = _served(response)
                try:
                    code = response.status_code
                    if code in (401, 403):
                        words = await self._excerpt(response)
                        return result(ErrorKind.UNAUTHORIZED, f"HTTP {code} (the probe's identity was refused)",
                                      code, words)
                    if not 200 <= code < 300:
                        # 3xx fails as in kube-aggregator: it does not follow redirects either
                        return result(ErrorKind.HTTP_STATUS, f"bad status: {code}", code,
                                      await self._excerpt(response))
                    encoding = response.headers.get("content-encoding", "identity").strip().lower()
                    if encoding not in ("", "identity"):
                        # we asked for identity: a compressed body would be inflated before the
                        # cap is checked (a 64 KiB gzip bomb is 64 MiB in memory)
                        return result(ErrorKind.INVALID_DOCUMENT,
                                      f"InvalidDiscoveryDocument: body sent with Content-Encoding {encoding!r}, "
                                      "though the probe asked for identity")
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > self.max_body:
                            return result(ErrorKind.INVALID_DOCUMENT,
                                          f"InvalidDiscoveryDocument: body larger than {self.max_body} bytes")
                finally:
                    await response.aclose()
            problem, names = read_document(bytes(body), plan.group_version)
            if problem:
                return result(ErrorKind.INVALID_DOCUMENT, problem, code)
            return replace(result(None, "", code), resources=names)
        except TimeoutError:
            return result(ErrorKind.TIMEOUT, self._timed_out())
        except httpx.HTTPError as exc:
            kind, detail = _classify(exc)
            return result(kind, detail)
        except (OSError, ssl.SSLError) as exc:
            kind, detail = _classify(exc)
            return result(kind, detail)
        except Exception as exc:
            # whatever a hostile or broken server makes our stack raise is its answer, never a check
            # that fails and leaves the last verdict standing
            log.warning("probe of %s raised %s: %s", target.endpoint, type(exc).__name__, exc,
                        exc_info=log.isEnabledFor(logging.DEBUG))
            return result(ErrorKind.CONNECTION, f"connection: the answer broke the probe ({type(exc).__name__}: "
                                                f"{str(exc)[:200]})")


async def inspect_tls(target: Target, server_name: str, budget: float) -> Handshake:
    loop = asyncio.get_running_loop()
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # we only look; no request, no credential is sent
    tcp = tls = None
    started = loop.time()
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(budget):
            _, writer = await asyncio.open_connection(target.host, target.port)
            tcp = loop.time() - started
            await writer.start_tls(context, server_hostname=server_name)
            tls = loop.time() - started - tcp
            ssl_object = writer.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
            leaf = certs.from_der(der) if der else None
            return Handshake(tcp, tls, (leaf,) if leaf else ())
    except TimeoutError:
        return Handshake(tcp, tls, (), f"timeout: no handshake within {budget:g}s")
    except (OSError, ssl.SSLError) as exc:
        return Handshake(tcp, tls, (), _classify(exc)[1])
    finally:
        if writer is not None:
            writer.close()
