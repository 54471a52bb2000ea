"""The aggregated test server answering discovery for any /apis/<group>/<version>, so many
APIServices can share one server (the scale benchmark). Misbehaviour knobs are aggserver's."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from typing import Any

from tests.cluster.aggserver import Server, discovery_document

_PATH = re.compile(r"^/apis/([^/]+)/([^/?]+)")


class MultiGroupServer(Server):
    async def respond(self, writer: asyncio.StreamWriter, path: str, state: dict[str, Any]) -> bool:
        match = _PATH.match(path)
        if match and state.get("mode", "healthy") == "healthy" and not state.get("delay"):
            await self.send(writer, 200, discovery_document(match[1], match[2]))
            return True
        return await super().respond(writer, path, state)


async def serve(args: argparse.Namespace) -> None:
    server = MultiGroupServer(args)
    listener = await asyncio.start_server(server.handle, args.address, args.port)
    print(f"READY {args.address}:{args.port} any group", flush=True)
    async with listener:
        await listener.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser()
    for flag in ("--address", "--cert", "--key", "--state"):
        p.add_argument(flag, required=flag != "--state")
    p.add_argument("--port", type=int, default=8443)
    p.add_argument("--record", default=None)
    args = p.parse_args()
    args.group, args.version = "any.example.com", "v1"
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
