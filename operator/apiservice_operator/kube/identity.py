"""The probe identity: a ServiceAccount with no RBAC binding at all, whose short-lived tokens are the
only credential that ever leaves for an aggregated server (DESIGN 9). Aggregated servers are often
third-party code; the operator's own token can list every Service and patch APIService status, this
one can do nothing an authenticated caller cannot (system:discovery lets everyone read discovery).

Tokens come from the TokenRequest API (`create serviceaccounts/token` on that one name), live in
memory only and are renewed well before they expire.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from apiservice_operator.kube.client import API_TIMEOUT, Credentials

log = logging.getLogger(__name__)
TOKEN_SECONDS = 600  # the TokenRequest API's minimum lifetime: a leaked token is useless soon
RENEW_AT = 0.5  # renew when half the lifetime is gone, so a slow or failing API has time
RETRY_SECONDS = 10.0
ACCESS_CACHE_SECONDS = 60.0


class ProbeIdentity:
    """`token()` is what the prober sends; None means the probe goes without credentials."""

    def __init__(self, credentials: Credentials, namespace: str, name: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.credentials = credentials
        self.namespace = namespace
        self.name = name
        self.clock = clock
        self._token: str | None = None
        self._expires = 0.0
        self._access: dict[str, tuple[bool | None, float]] = {}
        self.problem: str | None = None  # why there is no token, for /readyz and the log
        self.tried = asyncio.Event()  # set after the first attempt: probes wait for it, not for success

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.name}"

    def token(self) -> str | None:
        if self._token is not None and self.clock() >= self._expires:
            self._token = None  # never send an expired token: it would read as a refusal
        return self._token

    def token_problem(self) -> str | None:
        """Why no token goes with the probes now; None while one does."""
        if self.token() is not None:
            return None
        return self.problem or "no token minted yet"

    async def mint(self) -> float:
        """Gets a new token; returns the seconds until it should be renewed."""
        assert self.credentials.api is not None
        api = client.CoreV1Api(self.credentials.api)
        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=TOKEN_SECONDS))
        started = self.clock()
        try:
            answer = await api.create_namespaced_service_account_token(self.name, self.namespace, request,
                                                                       _request_timeout=API_TIMEOUT)
        except ApiException as exc:
            self.problem = (f"cannot mint a token for the probe identity {self.namespace}/{self.name}: HTTP "
                            f"{exc.status} {exc.reason} (it needs verb=create on serviceaccounts/token for that name, "
                            "and the ServiceAccount must exist: see manifests/rbac.yaml)")
            raise
        lifetime = float(answer.spec.expiration_seconds or TOKEN_SECONDS)
        self._token = answer.status.token
        self._expires = started + lifetime
        self._access.clear()  # a new token: ask again what it may do
        if self.problem:
            log.info("probe identity token minted again for %s", self.username)
        self.problem = None
        return lifetime * RENEW_AT

    async def run(self) -> None:
        """Keeps a fresh token; on failure retries every few seconds and keeps the old one while valid."""
        while True:
            try:
                delay = await self.mint()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                why = (f"no answer from kube-apiserver within {API_TIMEOUT:g}s" if isinstance(exc, TimeoutError)
                       else repr(exc))
                self.problem = self.problem or f"minting the probe identity's token failed: {why}"
                log.error("%s", self.problem)
                delay = RETRY_SECONDS
            self.tried.set()
            await asyncio.sleep(delay)

    async def may_get(self, path: str) -> bool | None:
        """Does kube-apiserver's RBAC let the probe identity GET this non-resource path? Asked as the
        identity itself (a SelfSubjectAccessReview, which everyone may create); None when it cannot
        be asked. Cached: a refusal is re-judged at most once a minute."""
        cached = self._access.get(path)
        now = self.clock()
        if cached is not None and now - cached[1] < ACCESS_CACHE_SECONDS:
            return cached[0]
        token = self.token()
        base = self.credentials.configuration
        if token is None or base is None:
            return None
        configuration = client.Configuration(host=base.host)
        configuration.ssl_ca_cert = base.ssl_ca_cert
        configuration.verify_ssl = base.verify_ssl
        configuration.api_key = {"BearerToken": token}
        configuration.api_key_prefix = {"BearerToken": "Bearer"}
        allowed: bool | None
        async with client.ApiClient(configuration) as api_client:
            review = client.V1SelfSubjectAccessReview(spec=client.V1SelfSubjectAccessReviewSpec(
                non_resource_attributes=client.V1NonResourceAttributes(path=path, verb="get")))
            try:
                answer = await client.AuthorizationV1Api(api_client).create_self_subject_access_review(
                    review, _request_timeout=API_TIMEOUT)
                allowed = bool(answer.status and answer.status.allowed)
            except ApiException as exc:
                log.warning("cannot ask whether %s may get %s: HTTP %s", self.username, path, exc.status)
                allowed = None
            except (TimeoutError, OSError) as exc:
                log.warning("cannot ask whether %s may get %s: %r", self.username, path, exc)
                allowed = None
        self._access[path] = (allowed, now)
        return allowed
