"""`python -m saferollout run [--namespace NS ...]`: the operator process."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

from saferollout.redact import RedactingFilter


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                           "message": record.getMessage()})


def setup_logging(fmt: str, verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
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
    args = parser.parse_args(argv)

    import kopf

    from saferollout import handlers
    setup_logging(handlers.CFG.log_format, args.verbose)
    asyncio.run(kopf.operator(
        namespaces=list(args.namespace),
        clusterwide=not args.namespace,
        standalone=args.peering is None,
        peering_name=args.peering,
    ))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
