"""`cleanup`: remove our conditions from every APIService by applying an empty status as our
field manager: server-side apply then drops exactly the fields we owned, nothing else."""

from __future__ import annotations

from kubernetes_asyncio import client

from apiservice_operator.core.model import GROUP, PLURAL, VERSION
from apiservice_operator.core.settings import Settings
from apiservice_operator.kube.client import API_TIMEOUT, Credentials, write_conditions


async def cleanup(settings: Settings) -> int:
    credentials = Credentials(settings.kubeconfig)
    await credentials.load()
    try:
        assert credentials.api is not None
        listing = await client.CustomObjectsApi(credentials.api).list_cluster_custom_object(GROUP, VERSION, PLURAL,
                                                                                    _request_timeout=API_TIMEOUT)
        removed = 0
        for item in listing.get("items", []):
            ours = [c for c in (item.get("status") or {}).get("conditions") or []
                    if c.get("type") in settings.types.all]
            if ours and await write_conditions(credentials, item["metadata"]["name"], []) is not None:
                removed += 1
        return removed
    finally:
        await credentials.close()
