"""``modelwarden audit-features``: what share of entities have every feature of the contract?

The input is a CSV (one row per entity, a header of column names) or JSON: a list of objects, an object with
an ``entities`` (or ``rows``) list, or an object mapping entity id to its features. A feature is satisfied when
its column is there and the value is a finite number; several rows of the same entity add up (a feature
present in any of them counts). The audit passes at a share of at least the threshold (0.95 by default),
and lists, per entity, what is missing.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from modelwarden.artifacts import FeatureContract
from modelwarden.training.verify import InputError

DEFAULT_THRESHOLD = 0.95


def _finite(value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return math.isfinite(value)
    if isinstance(value, str):
        try:
            return math.isfinite(float(value))
        except ValueError:
            return False
    return False


def read_rows(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {path}: {e}") from e
    if path.suffix.lower() == ".json" or text.lstrip()[:1] in ("[", "{"):
        try:
            doc = json.loads(text)
        except ValueError as e:
            raise InputError(f"{path} is not valid JSON: {e}") from e
        if isinstance(doc, Mapping):
            listed = doc.get("entities", doc.get("rows"))
            if isinstance(listed, list):
                doc = listed
            else:
                doc = [{"__entity__": k, **v} if isinstance(v, Mapping) else None for k, v in doc.items()]
        if not isinstance(doc, list) or not all(isinstance(r, Mapping) for r in doc):
            raise InputError(f"{path}: expected a list of entity objects")
        return [dict(r) for r in doc]
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames:
        raise InputError(f"{path} has no header row")
    return [{k: (v if v != "" else None) for k, v in row.items() if k is not None} for row in reader]


def audit(rows: Sequence[Mapping[str, Any]], contract: FeatureContract, *, entity_column: str = "entity_id",
          threshold: float = DEFAULT_THRESHOLD, max_listed: int = 1000) -> dict[str, Any]:
    if not rows:
        raise InputError("no entity rows to audit")
    present: dict[str, set[str]] = {}
    for i, row in enumerate(rows):
        entity = row.get("__entity__", row.get(entity_column))
        key = str(entity) if entity not in (None, "") else f"row-{i}"
        have = present.setdefault(key, set())
        have.update(f for f in contract.features if _finite(row.get(f)))
    missing = {e: [f for f in contract.features if f not in have] for e, have in present.items()}
    incomplete = {e: m for e, m in missing.items() if m}
    share = (len(present) - len(incomplete)) / len(present)
    by_feature = {f: sum(1 for m in incomplete.values() if f in m) for f in contract.features}
    listed = sorted(incomplete.items())[:max_listed]
    return {
        "status": "pass" if share >= threshold else "fail",
        "contract": contract.name,
        "n_features": contract.n_features,
        "entities": len(present),
        "complete": len(present) - len(incomplete),
        "share": round(share, 6),
        "threshold": threshold,
        "missing_by_feature": {f: n for f, n in by_feature.items() if n},
        "missing": [{"entity": e, "missing_features": m} for e, m in listed],
        "missing_truncated": len(incomplete) > len(listed),
    }
