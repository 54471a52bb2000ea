"""`python -m tests.cluster serve`: run the local control plane until SIGTERM (make cluster-up)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from tests.cluster.controlplane import ControlPlane, ensure_binaries


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m tests.cluster")
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start etcd + kube-apiserver and keep them running until SIGTERM")
    serve.add_argument("--workdir", type=Path, required=True)
    serve.add_argument("--port", type=int, default=6443)
    serve.add_argument("--external-address", default="",
                       help="an address the host reaches kube-apiserver at (added to its certificate)")
    args = p.parse_args()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    sans = (args.external_address,) if args.external_address else ()
    cp = ControlPlane(workdir=args.workdir, bin_dir=ensure_binaries(), port=args.port, extra_sans=sans)
    cp.start()
    try:
        server = f"https://{args.external_address}:{cp.port}" if args.external_address else cp.server
        kubeconfig = cp.write_kubeconfig(args.workdir / "kubeconfig", server)
        (args.workdir / "bin-dir").write_text(str(cp.bin_dir))
        (args.workdir / "ready").write_text(str(kubeconfig))
        print(f"control plane ready: {kubeconfig}", flush=True)
        while not stop.wait(1):
            for proc in (cp._etcd, cp._apiserver):
                if not proc.alive():
                    print(f"{proc.name} exited:\n{cp.logs()}", file=sys.stderr, flush=True)
                    return
    finally:
        cp.stop()


if __name__ == "__main__":
    main()
