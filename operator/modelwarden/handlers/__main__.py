"""``python -m modelwarden.handlers``: run the operator (all namespaces, or ``--namespace`` repeated)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

import kopf

import modelwarden.handlers.operator  # noqa: F401  (registers the kopf handlers)
from modelwarden.handlers import metrics
from modelwarden.handlers.settings import ENV


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="modelwarden-operator", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="environment:\n" + "\n".join(f"  {k:<36} {v}" for k, v in ENV.items()))
    parser.add_argument("--namespace", "-n", action="append", default=[],
                        help="watch only this namespace (repeat for several); default: all namespaces")
    parser.add_argument("--liveness", default="http://127.0.0.1:8081/healthz",
                        help="liveness endpoint (loopback by default)")
    parser.add_argument("--metrics-address", default="127.0.0.1:8080", metavar="HOST:PORT",
                        help="serve Prometheus /metrics (modelwarden_*) here; loopback by default, '' to disable")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    os.environ["MODELWARDEN_NAMESPACES"] = ",".join(args.namespace)
    try:
        server = metrics.serve(args.metrics_address)
    except (OSError, ValueError) as e:
        parser.error(f"--metrics-address={args.metrics_address}: {e}")
    if server is not None:
        logging.getLogger("modelwarden.metrics").info("metrics on http://%s:%d/metrics", *server.server_address[:2])
    asyncio.run(kopf.operator(
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness,
    ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
