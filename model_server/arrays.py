"""The array types scoring passes around (their own module: the loader and the fast paths both use them, and
the fast paths are imported by the loader)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

Matrix = npt.NDArray[np.float64]  # rows of features in contract order
Scores = npt.NDArray[np.float64]  # one score per row
ScoreFn = Callable[[Matrix], Scores]
