"""Open Inference Protocol (v2) requests as rows, and answers as OIP responses. Pure: no I/O, no metrics.

Two request forms are accepted: one tensor per feature, named by feature (shape ``[N]`` or ``[N, 1]``, checked
by name, in any order), or one tensor of shape ``[N, n_features]`` in contract order (checked by count).
Problems are raised as :class:`~model_server.http.HttpError` (422 ``INVALID_INPUT`` or ``FEATURE_MISMATCH``).
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Any

from model_server.http import HttpError, invalid_input
from modelwarden.artifacts import FeatureContract

NUMERIC_DATATYPES = frozenset(
    ("FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"))


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: list[int]
    data: list[Any]


@dataclass(frozen=True)
class InferInput:
    id: str | None
    rows: list[dict[str, Any]]


def feature_mismatch(body: dict[str, Any]) -> HttpError:
    """422 ``FEATURE_MISMATCH`` from :meth:`FeatureMismatch.to_dict` (whose ``error`` is the code)."""
    fields = {k: v for k, v in body.items() if k != "error"}
    return HttpError(422, "FEATURE_MISMATCH", kind="FEATURE_MISMATCH", **fields)


def decode_request(doc: Any, contract: FeatureContract | None, max_rows: int) -> InferInput:
    """An OIP request body (parsed JSON) as rows keyed by feature name. Without a ``contract`` (the neutral
    prediction answers) positional columns are named ``column_{j}`` and not checked."""
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise invalid_input("inputs must be a non-empty list of tensors")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise invalid_input("id must be a string")
    tensors = [decode_tensor(t) for t in doc["inputs"]]
    return InferInput(request_id, tensor_rows(tensors, contract, max_rows))


def decode_tensor(t: Any) -> Tensor:
    if not isinstance(t, dict):
        raise invalid_input("a tensor must be an object")
    name, shape, datatype, data = t.get("name"), t.get("shape"), t.get("datatype"), t.get("data")
    if not isinstance(name, str) or not isinstance(shape, list) or not isinstance(data, list):
        raise invalid_input("a tensor needs name, shape, datatype and data")
    if datatype not in NUMERIC_DATATYPES:
        raise invalid_input(f"datatype must be one of {sorted(NUMERIC_DATATYPES)}", tensor=name)
    if not shape or not all(type(d) is int and 0 <= d <= 10**9 for d in shape):
        raise invalid_input("shape must be non-negative integers", tensor=name)
    if data and isinstance(data[0], list):  # row-major nested lists are allowed by OIP: flatten
        flat: list[Any] = []
        for part in data:
            if not isinstance(part, list):
                raise invalid_input("data nesting is inconsistent", tensor=name)
            flat.extend(part)
        data = flat
    if math.prod(shape) != len(data):
        raise invalid_input(f"shape {shape} needs {math.prod(shape)} values, got {len(data)}", tensor=name)
    return Tensor(name, shape, data)


def tensor_rows(tensors: list[Tensor], contract: FeatureContract | None, max_rows: int) -> list[dict[str, Any]]:
    """OIP tensors as rows keyed by feature name: one tensor per feature (checked by name), or one
    [N, n_features] tensor in contract order (checked by count)."""
    if len(tensors) == 1 and (contract is None or tensors[0].name not in contract.features):
        name, shape, data = tensors[0].name, tensors[0].shape, tensors[0].data
        if len(shape) == 1:
            shape = [1, shape[0]]
        if len(shape) != 2:
            raise invalid_input("a positional tensor has shape [N, n_features]", tensor=name)
        n_rows, n_cols = shape
        if contract is None:  # the neutral prediction answers whatever the columns
            return [{f"column_{j}": data[i * n_cols + j] for j in range(n_cols)} for i in range(n_rows)]
        if n_cols != contract.n_features:
            provided = [*contract.features[:n_cols], *(f"column_{j}" for j in range(contract.n_features, n_cols))]
            raise feature_mismatch(contract.mismatch(provided).to_dict())
        features = contract.features
        return [dict(zip(features, data[i * n_cols:(i + 1) * n_cols], strict=True)) for i in range(n_rows)]
    lengths = set()
    for t in tensors:
        if len(t.shape) > 2 or (len(t.shape) == 2 and t.shape[1] != 1):
            raise invalid_input("a per-feature tensor has shape [N] or [N, 1]", tensor=t.name)
        lengths.add(len(t.data))
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise invalid_input("duplicate tensor names")
    if len(lengths) != 1:
        raise invalid_input("per-feature tensors differ in length")
    (n_rows,) = lengths
    if n_rows == 0:
        raise invalid_input("no rows")
    if n_rows > max_rows:
        raise invalid_input(f"at most {max_rows} rows")
    return [{t.name: t.data[i] for t in tensors} for i in range(n_rows)]


def response_body(*, model_name: str, model_version: str, request_id: str | None, parameters: dict[str, Any],
                  scores: list[float], ids: list[str]) -> dict[str, Any]:
    n = len(scores)
    return {
        "model_name": model_name, "model_version": model_version, "id": request_id or str(uuid.uuid4()),
        "parameters": parameters,
        "outputs": [
            {"name": "prediction", "datatype": "FP64", "shape": [n], "data": scores},
            {"name": "prediction_id", "datatype": "BYTES", "shape": [n], "data": ids},
        ],
    }
