"""`python -m saferollout run [--namespace NS ...]`: the operator process."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import sys

from saferollout.redact import RedactingFilter


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name}
        name = getattr(record, "rollout_name", None)
        if name:
            line["namespace"], line["name"] = getattr(record, "rollout_namespace", ""), name
        line["message"] = record.getMessage()
        if record.exc_text:  # formatted and masked by RedactingFilter
            line["exception"] = record.exc_text
        return json.dumps(line)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        name = getattr(record, "rollout_name", None)
        where = f" [{getattr(record, 'rollout_namespace', '')}/{name}]" if name else ""
        return f"{self.formatTime(record)} {record.levelname}{where} {record.name}: {record.getMessage()}" + (
            "\n" + record.exc_text if record.exc_text else "")  # formatted and masked by RedactingFilter


def setup_logging(fmt: str, verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("kubernetes", "urllib3", "kopf.objects", "kopf.activities"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="saferollout")
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run the operator")
    run.add_argument("--namespace", "-n", action="append", default=[], help="watch only these (repeatable)")
    run.add_argument("--verbose", "-v", action="store_true")
    run.add_argument("--peering", default=None, help="kopf peering name, for two replicas")
    run.add_argument("--priority", type=int, default=None,
                     help="kopf peering priority; default: random, so that exactly one of several replicas works")
    args = parser.parse_args(argv)
    os.umask(0o077)  # snapshots, dumps and scratch files: readable by the operator alone, from their first byte

    import kopf

    from saferollout import handlers
    setup_logging(handlers.CFG.log_format, args.verbose)
    priority = args.priority if args.priority is not None else random.randrange(1, 2**31)
    asyncio.run(kopf.operator(
        namespaces=list(args.namespace),
        clusterwide=not args.namespace,
        standalone=args.peering is None,
        peering_name=args.peering,
        priority=priority,
    ))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
