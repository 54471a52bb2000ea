"""python -m apiservice_operator run | cleanup"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence

from apiservice_operator import __version__
from apiservice_operator.core import settings as settings_mod


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                 "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(log_format: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # kopf logs every handler run at INFO: under EndpointSlice churn that drowns everything else
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    logging.getLogger("kopf.activities").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)


EXIT_DEADLINE = 4.0  # seconds from SIGTERM to a forced exit; kubelet's SIGKILL comes later


async def _exit_deadline(stop: asyncio.Event) -> None:
    """Once a stop is asked for, the process ends within EXIT_DEADLINE whatever still runs. Our own
    stop comes first (probe loop, Lease released; each status write is one apply, never half done),
    so what could outlast it (a kopf task that does not take its cancellation, a thread the
    interpreter would wait for at exit) holds nothing of ours."""
    await stop.wait()

    def force() -> None:
        try:  # from another thread, best effort: only to say what held the exit up
            pending = ", ".join(sorted(t.get_name() for t in asyncio.all_tasks(loop) if not t.done()))
        except RuntimeError:
            pending = "?"
        logging.getLogger("apiservice_operator").warning(
            "forced exit %gs after the stop request; still running: %s", EXIT_DEADLINE, pending or "none")
        logging.shutdown()
        os._exit(0)

    loop = asyncio.get_running_loop()
    timer = threading.Timer(EXIT_DEADLINE, force)
    timer.daemon = True
    timer.start()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="apiservice-operator",
        description="Probes every aggregated APIService's discovery endpoint within the budget and "
                    "writes <prefix>/Available and <prefix>/Degraded conditions into its status. "
                    "Every flag has an environment-variable twin, named in its help.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run the operator", description="Run the operator until SIGTERM.")
    settings_mod.add_arguments(run)
    cleanup = sub.add_parser("cleanup", help="remove our conditions from every APIService and exit")
    settings_mod.add_arguments(cleanup)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_mod.from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    setup_logging(settings.log_format, settings.log_level)
    log = logging.getLogger("apiservice_operator")
    log.info("starting command=%s version=%s settings=%s", args.command, __version__,
             json.dumps(settings.describe(), sort_keys=True))
    if args.command == "run":
        from apiservice_operator.run.supervisor import run

        async def main_run() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            watchdog = asyncio.create_task(_exit_deadline(stop), name="exit deadline")
            try:
                await run(settings, stop)
            finally:
                watchdog.cancel()

        asyncio.run(main_run())
        return 0
    from apiservice_operator.kube.cleanup import cleanup

    removed = asyncio.run(cleanup(settings))
    log.info("cleanup done: removed our conditions from %d APIServices", removed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
