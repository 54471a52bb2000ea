"""The aggregated test server answering discovery for any /apis/<group>/<version>, so many
APIServices can share one server (the scale benchmark). Misbehaviour knobs are aggserver's."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from tests.cluster import aggserver
from tests.cluster.aggserver import Server, discovery_document

_PATH = re.compile(r"^/apis/([^/]+)/([^/?]+)")


class MultiGroupServer(Server):
    async def respond(self, writer: asyncio.StreamWriter, path: str, state: dict[str, Any]) -> bool:
        match = _PATH.match(path)
        if match and state.get("mode", "healthy") == "healthy" and not state.get("delay"):
            await self.send(writer, 200, discovery_document(match[1], match[2]))
            return True
        return await super().respond(writer, path, state)


def main() -> None:
    aggserver.main(server_class=MultiGroupServer, group_version=("any.example.com", "v1"))


if __name__ == "__main__":
    main()
