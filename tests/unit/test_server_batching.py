"""Requests scored together in one loop turn: each gets its own rows' scores, in groups of at most max_rows."""

from __future__ import annotations

import asyncio

import numpy as np

from model_server.arrays import Matrix, Scores
from model_server.batching import MicroBatcher


def test_requests_of_one_turn_are_scored_in_bounded_groups_and_answered_their_own_rows() -> None:
    calls: list[int] = []

    def score(x: Matrix) -> Scores:
        calls.append(len(x))
        return np.asarray(x[:, 0] * 10, dtype=np.float64)

    async def main() -> list[Scores]:
        batcher = MicroBatcher(score, max_rows=8)
        sizes = [3, 4, 2, 9, 1, 1]  # 9: more than max_rows, scored alone
        starts = np.cumsum([0, *sizes])
        requests = [np.arange(start, start + n, dtype=np.float64).reshape(n, 1)
                    for start, n in zip(starts[:-1], sizes, strict=True)]
        return list(await asyncio.gather(*(batcher.submit(rows) for rows in requests)))

    answers = asyncio.run(main())
    assert [a.tolist() for a in answers] == [[0.0, 10.0, 20.0], [30.0, 40.0, 50.0, 60.0], [70.0, 80.0],
                                             [90.0 + 10 * i for i in range(9)], [180.0], [190.0]]
    assert calls == [7, 2, 9, 2], "in submission order, no group above 8 rows unless one request is"
