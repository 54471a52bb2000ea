"""A port-forward to one of the operator's Pods, for `kubectl apiservices explain`: kubectl's own
(`kubectl port-forward`), so every credential kubectl knows (client certificates, exec plugins,
OIDC) authenticates the caller to kube-apiserver, whose RBAC then decides (`create pods/portforward`)
and whose audit log names them. The operator's explain port listens on the Pod's loopback only."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
from collections.abc import AsyncIterator
from typing import Any

from kubernetes_asyncio import client

from apiservice_operator.kube.client import API_TIMEOUT, Credentials

OPERATOR_LABELS = "app.kubernetes.io/name=apiservice-operator"
FORWARD_WAIT = 20.0  # seconds for kubectl to say it forwards
_FORWARDING = re.compile(r"Forwarding from 127\.0\.0\.1:(\d+) ->")


class ForwardFailed(RuntimeError):
    """No forward: the words say why, for the person at the terminal."""


def ready_pod(pods: list[Any]) -> str | None:
    """The name of a running, Ready operator Pod (any replica can explain: each keeps warm indexes)."""
    for pod in sorted(pods, key=lambda p: p.metadata.name):
        conditions = (pod.status and pod.status.conditions) or []
        if pod.status and pod.status.phase == "Running" and any(
                c.type == "Ready" and c.status == "True" for c in conditions):
            return str(pod.metadata.name)
    return None


async def operator_pod(credentials: Credentials, namespace: str) -> str:
    assert credentials.api is not None
    try:
        listing = await client.CoreV1Api(credentials.api).list_namespaced_pod(
            namespace, label_selector=OPERATOR_LABELS, _request_timeout=API_TIMEOUT)
    except client.ApiException as exc:
        if exc.status == 403:
            raise ForwardFailed(f"forbidden: you may not list Pods in {namespace} (bind the ClusterRole "
                                f"apiservice-operator-explain there: manifests/explain-rbac.yaml)") from None
        raise
    name = ready_pod(listing.items)
    if name is None:
        raise ForwardFailed(f"no Ready operator Pod ({OPERATOR_LABELS}) in {namespace}: is it running?")
    return name


@contextlib.asynccontextmanager
async def forwarded(kubeconfig: str | None, namespace: str, pod: str, port: int) -> AsyncIterator[int]:
    """A local port forwarded to `port` on the Pod's loopback, for the block's duration."""
    kubectl = os.environ.get("KUBECTL") or shutil.which("kubectl")
    if not kubectl:
        raise ForwardFailed("kubectl is not on PATH (or set KUBECTL): explain reaches the operator through "
                            "`kubectl port-forward`")
    command = [kubectl, "port-forward", "--namespace", namespace, f"pod/{pod}", f":{port}", "--address", "127.0.0.1"]
    if kubeconfig:
        command[1:1] = ["--kubeconfig", kubeconfig]
    process = await asyncio.create_subprocess_exec(
        *command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        local = await _local_port(process)
        yield local
    finally:
        if process.returncode is None:
            process.terminate()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _local_port(process: asyncio.subprocess.Process) -> int:
    assert process.stdout is not None and process.stderr is not None
    try:
        async with asyncio.timeout(FORWARD_WAIT):
            while line := (await process.stdout.readline()).decode(errors="replace"):
                found = _FORWARDING.search(line)
                if found:
                    return int(found.group(1))
    except TimeoutError:
        raise ForwardFailed(f"kubectl port-forward said nothing within {FORWARD_WAIT:g}s") from None
    words = (await process.stderr.read()).decode(errors="replace").strip()
    if "forbidden" in words.lower():
        raise ForwardFailed(f"forbidden: {words.splitlines()[-1] if words else ''} (explain needs `create "
                            "pods/portforward` on the operator's Pods: bind the ClusterRole "
                            "apiservice-operator-explain in its namespace, manifests/explain-rbac.yaml)")
    raise ForwardFailed(f"kubectl port-forward failed: {words[-500:] or 'no words'}")
