"""Proof that a kind cluster pulled nothing: every container image of every Pod is among the node's
preloaded images (crictl images), and no event says Pulling. Reads three JSON documents on stdin:
`kubectl get pods -A -o json`, `kubectl get events -A -o json`, `crictl images -o json`."""

from __future__ import annotations

import json
import sys
from typing import Any


def documents(text: str) -> list[Any]:
    decoder, docs, i = json.JSONDecoder(), [], 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        doc, i = decoder.raw_decode(text, i)
        docs.append(doc)
    return docs


def normalise(ref: str) -> str:
    """Docker's short names as containerd stores them: apiservice-operator:0.1.0 is
    docker.io/library/apiservice-operator:0.1.0."""
    name, tag = (ref.rsplit(":", 1) if ":" in ref.rsplit("/", 1)[-1] else (ref, "latest"))
    first = name.split("/")[0]
    if "." not in first and ":" not in first and first != "localhost":
        name = "docker.io/" + (name if "/" in name else "library/" + name)
    return f"{name}:{tag}"


def main() -> int:
    pods, events, images = documents(sys.stdin.read())
    present = {t for img in images["images"] for t in img.get("repoTags") or []}
    missing = 0
    for pod in pods["items"]:
        meta, spec = pod["metadata"], pod["spec"]
        for c in spec.get("initContainers", []) + spec["containers"]:
            ok = normalise(c["image"]) in present
            missing += not ok
            where = "preloaded on the node" if ok else "NOT AMONG THE NODE'S IMAGES"
            policy = c.get("imagePullPolicy")
            print(f"{meta['namespace']}/{meta['name']}: {c['image']} (imagePullPolicy {policy}) {where}")
    pulling = [e for e in events["items"] if e.get("reason") == "Pulling"]
    pulled = [e for e in events["items"] if e.get("reason") == "Pulled"]
    present_msgs = sum("already present on machine" in (e.get("message") or "") for e in pulled)
    for e in pulling:
        print("PULLING:", e["involvedObject"].get("namespace"), e["involvedObject"].get("name"), e.get("message"))
    print(f"events: {len(pulling)} Pulling; {len(pulled)} Pulled, {present_msgs} of them "
          "'Container image ... already present on machine'")
    return 1 if missing or pulling else 0


if __name__ == "__main__":
    sys.exit(main())
