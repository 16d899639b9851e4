"""The one timestamp format of status, conditions and Events: RFC 3339 in UTC with second precision, as
Kubernetes writes ``metav1.Time``. Formatting and parsing live here only."""

from __future__ import annotations

from datetime import UTC, datetime

RFC3339 = "%Y-%m-%dT%H:%M:%SZ"


def timestamp(at: datetime) -> str:
    return at.astimezone(UTC).strftime(RFC3339)


def parse_timestamp(stamp: str) -> datetime:
    return datetime.strptime(stamp, RFC3339).replace(tzinfo=UTC)


def seconds_since(stamp: str, now: datetime) -> float:
    return (now - parse_timestamp(stamp)).total_seconds()
