"""Export a model's feedback labels, each with the prediction it labels, as JSON lines.

``python -m model_server.export --model NAME [--since T] [--until T] [--dsn DSN] > labels.ndjson``

T is unix seconds or an ISO 8601 time (UTC unless it says otherwise). The DSN defaults to ``FEEDBACK_DSN``, so in
a cluster ``kubectl exec deploy/NAME-stable -- python -m model_server.export --model NAME`` reads the store the
pods write. One line per label, in the order received, read in pages (memory stays bounded): the label as
``GET /feedback/{predictionId}`` lists it, plus ``predictionId`` and ``prediction`` (null once the prediction
record is gone). Reads only; safe against a store in use.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from typing import IO, Any

import orjson

from model_server.feedback import feedback_view
from model_server.store import FeedbackStore, PredictionFeedback, open_store

PAGE = 500


def _time(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not unix seconds or an ISO 8601 time: {text!r}") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def export(store: FeedbackStore, model: str, since: float, until: float, out: IO[bytes]) -> int:
    """Write every label of ``model`` received in [since, until) to ``out``; how many."""
    written, after = 0, None
    while True:
        page = store.feedback_page(model, since, until, after, PAGE)
        for label in page:
            view = feedback_view(label.prediction_id,
                                 PredictionFeedback(store.prediction(label.prediction_id), [label]))
            line: dict[str, Any] = {"predictionId": label.prediction_id, **view["feedback"][0],
                                    "stakeholder": label.stakeholder, "prediction": view["prediction"]}
            out.write(orjson.dumps(line) + b"\n")
            written += 1
        if len(page) < PAGE:
            return written
        after = (page[-1].received_at, page[-1].feedback_id)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model_server.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="the MLModel name (MODEL_NAME of its servers)")
    parser.add_argument("--since", type=_time, default=0.0, help="first receivedAt to include (default: all)")
    parser.add_argument("--until", type=_time, default=float("inf"), help="receivedAt to stop before (default: now)")
    parser.add_argument("--dsn", default=os.environ.get("FEEDBACK_DSN", ""),
                        help="postgresql://... or a SQLite path (default: $FEEDBACK_DSN)")
    args = parser.parse_args(argv)
    if not args.dsn:
        parser.error("no store: pass --dsn or set FEEDBACK_DSN")
    store = open_store(args.dsn)
    try:
        until = min(args.until, datetime.now(UTC).timestamp() + 1.0)
        count = export(store, args.model, args.since, until, sys.stdout.buffer)
    finally:
        store.close()
    print(f"exported {count} labels of {args.model}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
