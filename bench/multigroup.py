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
    async def respond(self, writer: asyncio.StreamWriter, path: str, state: dict[str, Any], accept: str = "") -> bool:
        if path.split("?", 1)[0] == "/apis":
            # it serves any group, so it cannot list them: a 404 here makes kube-apiserver fall back to
            # each group/version's own document, which keeps them Current in its aggregated discovery
            await self.send(writer, 404, {"kind": "Status", "status": "Failure", "code": 404})
            return True
        match = _PATH.match(path)
        mode = state.get("mode", "healthy")
        if match and not state.get("delay"):
            if mode == "healthy":
                await self.send(writer, 200, discovery_document(match[1], match[2]))
                return True
            if mode == "status":
                # aggserver's own answers 404 to any group but its one, before it looks at the mode
                code = int(state.get("status", 500))
                await self.send(writer, code, {"kind": "Status", "status": "Failure", "code": code})
                return True
        return await super().respond(writer, path, state, accept)


def main() -> None:
    aggserver.main(server_class=MultiGroupServer, group_version=("any.example.com", "v1"))


if __name__ == "__main__":
    main()
