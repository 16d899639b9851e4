"""Training data: generated here (deterministic for a seed, no downloads) or read from CSV / Parquet.

A :class:`Dataset` is an ordered mapping of column name to a 1-D numpy array: ``float64`` for numeric
columns (empty cells are NaN), ``object`` (``str``) for the others. Its snapshot hash is the SHA256 of the
input file's bytes, or for generated data of its canonical CSV (:func:`to_csv_bytes`, which
:func:`write_csv` writes: training on that file gives the same hash and the same model).

The generators carry a protected attribute, ``group``, correlated with some features (as in real data) so
that the bias report measures something. It is not a model feature.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

from modelwarden.artifacts.hashing import sha256_bytes, sha256_file
from modelwarden.training.config import SyntheticData

Column = npt.NDArray[np.float64] | npt.NDArray[np.object_]

# Generated data describes the world "as of" this instant; it is the default trained_at for synthetic runs.
SYNTHETIC_AS_OF = datetime(2026, 1, 13, 2, 0, tzinfo=UTC)


class DataError(ValueError):
    """The data cannot be read or lacks what the config names (a usage error: exit code 2)."""


@dataclass(frozen=True)
class Dataset:
    columns: dict[str, Column]
    source: str
    snapshot_sha256: str
    as_of: datetime | None = None

    @property
    def n_rows(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def numeric(self, name: str) -> npt.NDArray[np.float64]:
        col = self.column(name)
        if col.dtype != np.float64:
            raise DataError(f"column {name!r} must be numeric")
        return col.astype(np.float64, copy=False)

    def column(self, name: str) -> Column:
        try:
            return self.columns[name]
        except KeyError:
            raise DataError(f"the data has no column {name!r} (columns: {list(self.columns)})") from None

    def is_numeric(self, name: str) -> bool:
        return self.column(name).dtype == np.float64


def _format_cell(value: object) -> str:
    if isinstance(value, float | np.floating):
        return "" if math.isnan(float(value)) else repr(float(value))
    return str(value)


def to_csv_bytes(columns: dict[str, Column]) -> bytes:
    """Canonical CSV: header, ``\\n`` line ends, floats in their shortest round-trip spelling."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(list(columns))
    for row in zip(*(c.tolist() for c in columns.values()), strict=True):
        writer.writerow([_format_cell(v) for v in row])
    return out.getvalue().encode()


def write_csv(dataset: Dataset, path: str | Path) -> str:
    """Write ``dataset`` as canonical CSV; returns the file's SHA256."""
    data = to_csv_bytes(dataset.columns)
    Path(path).write_bytes(data)
    return sha256_bytes(data)


def _columns_from_cells(header: list[str], rows: list[list[str]], source: str) -> dict[str, Column]:
    if len(set(header)) != len(header):
        raise DataError(f"{source}: duplicate column names in the header")
    columns: dict[str, Column] = {}
    for j, name in enumerate(header):
        cells = [r[j] for r in rows]
        try:
            columns[name] = np.array([float(c) if c.strip() else math.nan for c in cells], dtype=np.float64)
        except ValueError:
            columns[name] = np.array(cells, dtype=object)
    return columns


def read_csv_columns(path: Path) -> dict[str, Column]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from e
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{path} is empty") from None
    rows = []
    for lineno, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise DataError(f"{path}:{lineno}: {len(row)} cells, the header has {len(header)}")
        rows.append(row)
    return _columns_from_cells(header, rows, str(path))


def read_parquet_columns(path: Path) -> dict[str, Column]:
    try:
        import pyarrow.parquet as pq  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow, which is not installed") from None
    try:
        table = pq.read_table(path)
    except Exception as e:
        raise DataError(f"cannot read {path} as Parquet: {e}") from e
    columns: dict[str, Column] = {}
    for name in table.column_names:
        values = table.column(name).to_pylist()
        if all(v is None or (isinstance(v, int | float) and not isinstance(v, bool)) or isinstance(v, bool)
               for v in values):
            columns[name] = np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)
        else:
            columns[name] = np.array(["" if v is None else str(v) for v in values], dtype=object)
    return columns


def load_file(path: Path) -> Dataset:
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    columns = read_parquet_columns(path) if path.suffix.lower() in (".parquet", ".pq") else read_csv_columns(path)
    if not columns or len(next(iter(columns.values()))) == 0:
        raise DataError(f"{path} has no rows")
    return Dataset(columns=columns, source=f"file:{path.name}", snapshot_sha256=sha256_file(path))


# ------------------------------------------------------------------------------------------ generators


def _sigmoid(z: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return np.asarray(1.0 / (1.0 + np.exp(-z)), dtype=np.float64)


def credit_columns(rows: int, seed: int) -> dict[str, Column]:
    """Loan applications: will the applicant repay (``label`` 1)? ``group`` A/B is the protected attribute."""
    rng = np.random.default_rng(seed)
    group = np.where(rng.random(rows) < 0.6, "A", "B")
    b = (group == "B").astype(np.float64)
    income = np.round(np.exp(rng.normal(3.9 - 0.08 * b, 0.4)), 3)  # thousands per year
    debt_ratio = np.round(rng.beta(2.0, 5.0, rows), 4)
    utilization = np.round(rng.beta(2.0, 3.0, rows), 4)
    late_payments = rng.poisson(0.6 + 0.1 * b).astype(np.float64)
    tenure_years = np.round(rng.gamma(2.0, 3.0, rows), 2)
    age = np.round(np.clip(21 + rng.gamma(4.0, 5.0, rows), 21, 90), 0)
    z = (-0.2 + 1.3 * (np.log(income) - 3.9) / 0.4 - 4.0 * (debt_ratio - 0.28) - 2.0 * (utilization - 0.4)
         - 0.7 * late_payments + 0.06 * tenure_years + 0.01 * (age - 40))
    label = (rng.random(rows) < _sigmoid(z)).astype(np.float64)
    return {
        "entity_id": np.array([f"app-{i:06d}" for i in range(rows)], dtype=object),
        "group": group.astype(object),
        "income": income, "debt_ratio": debt_ratio, "utilization": utilization,
        "late_payments": late_payments, "tenure_years": tenure_years, "age": age,
        "label": label,
    }


def signal_columns(rows: int, seed: int) -> dict[str, Column]:
    """A daily cross-section of assets: does the next day's return beat zero (``label`` 1)?

    ``forward_return`` is that return (for the backtest); ``group`` is the asset's region.
    """
    rng = np.random.default_rng(seed)
    n_assets = 8
    days = max(rows // n_assets, 20)
    n = days * n_assets
    day = np.repeat(np.arange(days, dtype=np.float64), n_assets)
    asset = np.tile(np.arange(n_assets), days)
    region = np.where(asset < n_assets // 2, "US", "EU")
    momentum = np.round(rng.normal(size=n), 5)
    value = np.round(rng.normal(size=n), 5)
    carry = np.round(rng.normal(size=n), 5)
    volatility = np.round(np.abs(rng.normal(0.015, 0.005, n)), 6)
    noise = rng.normal(0, 0.01, n)
    forward_return = np.round(0.0001 + 0.0012 * momentum + 0.0008 * carry - 0.0004 * value + noise, 6)
    return {
        "entity_id": np.array([f"asset-{a:02d}" for a in asset], dtype=object),
        "date": day,
        "group": region.astype(object),
        "momentum": momentum, "value": value, "carry": carry, "volatility": volatility,
        "forward_return": forward_return,
        "label": (forward_return > 0).astype(np.float64),
    }


def generate(spec: SyntheticData, seed: int) -> Dataset:
    columns = credit_columns(spec.rows, seed) if spec.kind == "credit" else signal_columns(spec.rows, seed)
    return Dataset(columns=columns, source=f"synthetic:{spec.kind}:rows={spec.rows}:seed={seed}",
                   snapshot_sha256=sha256_bytes(to_csv_bytes(columns)), as_of=SYNTHETIC_AS_OF)
