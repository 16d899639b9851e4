"""Backfill input for promtool: OpenMetrics text with families contiguous, seconds, NaN and # EOF."""

from __future__ import annotations

import math

from localenv import prometheus as prometheus_env


def test_openmetrics_rendering_is_what_promtool_expects() -> None:
    text = prometheus_env.to_openmetrics([
        prometheus_env.Series("m", {"b": 'x"y', "a": "1"}, [(20.0, math.nan), (10.0, 1.5)]),
    ])
    assert text == '# TYPE m gauge\nm{a="1",b="x\\"y"} 1.5 10.000\nm{a="1",b="x\\"y"} NaN 20.000\n# EOF\n'
