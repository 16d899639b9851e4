"""Open Inference Protocol (v2) requests as rows, and answers as OIP responses. Pure: no I/O, no metrics.

Two request forms are accepted: one tensor per feature, named by feature (shape ``[N]`` or ``[N, 1]``, checked
by name, in any order), or one tensor of shape ``[N, n_features]`` (or ``[n_features]`` for one row) in
contract order, checked by count. Tensor data is JSON (``data``, flat or nested row-major) or, with the binary
tensor data extension, raw little-endian bytes after the JSON header (``parameters.binary_data_size``, the
``Inference-Header-Content-Length`` header giving the JSON's length) - what ``tritonclient`` and the KServe
SDK send by default. Outputs (``prediction`` FP64, ``prediction_id`` BYTES) can be requested by name, each as
JSON or binary.

Every size a request states is checked against the limits before any work proportional to it: at most two
dimensions, each at most ``max_elements``, rows at most ``max_rows``; binary sizes against the bytes that
actually arrived. Problems are raised as :class:`~model_server.http.HttpError` (422 ``INVALID_INPUT`` or
``FEATURE_MISMATCH``; 400 ``MALFORMED_JSON`` for a bad binary framing).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import orjson

from model_server.batching import all_finite
from model_server.http import HttpError, invalid_input, parse_json
from modelwarden.artifacts import FeatureContract, FeatureMismatch

# datatype -> little-endian numpy dtype of its binary form
DTYPES: dict[str, str] = {
    "FP16": "<f2", "FP32": "<f4", "FP64": "<f8",
    "INT8": "i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
    "UINT8": "u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
}
NUMERIC_DATATYPES = frozenset(DTYPES)
OUTPUTS = ("prediction", "prediction_id")
HEADER_LENGTH = b"inference-header-content-length"
# Columns while the neutral prediction answers and no contract is known (none is consulted then).
MAX_NEUTRAL_COLUMNS = 256
MAX_TENSORS = 1024
MAX_LISTED = 100  # feature names per list in a FEATURE_MISMATCH answer
EXTENSIONS = ("binary_tensor_data",)


# Limits, Tensor and InferInput are tuples: a few are made per request, and a frozen dataclass's __init__ sets each
# field through object.__setattr__.
class Limits(NamedTuple):
    max_rows: int
    max_columns: int

    @property
    def max_elements(self) -> int:
        return self.max_rows * self.max_columns


class Tensor(NamedTuple):
    name: str
    shape: list[int]
    data: list[Any]
    array: npt.NDArray[np.float64] | None = None  # binary data: the same values, checked finite


class InferInput(NamedTuple):
    id: str | None
    rows: list[dict[str, Any]]
    outputs: tuple[str, ...]           # in the order asked for (all of them when none were named)
    binary_outputs: frozenset[str]     # which of them go back as binary data
    # rows as a checked float64 matrix in contract order, when they came that way (one binary tensor)
    matrix: npt.NDArray[np.float64] | None = None


def feature_mismatch(e: FeatureMismatch, **extra: Any) -> HttpError:
    """422 ``FEATURE_MISMATCH`` with the contract's counts and names (DESIGN §4). The name lists stop at
    ``MAX_LISTED`` each (the counts stay exact): a body of 280,000 unknown names must not come back as a
    2.7 MB answer and log line."""
    missing, unexpected = e.missing_features[:MAX_LISTED], e.unexpected_features[:MAX_LISTED]
    more = len(e.missing_features) + len(e.unexpected_features) - len(missing) - len(unexpected)
    text = (f"FEATURE_MISMATCH: contract {e.contract!r} expects {e.expected_count} features, got "
            f"{e.provided_count} (missing {missing}, unexpected {unexpected}{f', and {more} more' if more else ''})")
    return HttpError(422, "FEATURE_MISMATCH", kind="FEATURE_MISMATCH", detail=text, contract=e.contract,
                     expected_count=e.expected_count, provided_count=e.provided_count, missing_features=missing,
                     unexpected_features=unexpected, **extra)


def header_length(headers: Sequence[tuple[bytes, bytes]], body_length: int) -> int | None:
    """The JSON header's length under the binary extension (None: the whole body is JSON)."""
    for name, value in headers:
        if name == HEADER_LENGTH:
            try:
                length = int(value)
            except ValueError:
                length = -1
            if not 0 < length <= body_length:
                raise HttpError(400, "MALFORMED_JSON", f"Inference-Header-Content-Length must be within 1.."
                                f"{body_length} (the body's length)", kind="INVALID_INPUT")
            return length
    return None


class _Plan(NamedTuple):
    """What a binary request's JSON header decodes to, for one contract: everything but the tensor's values."""

    contract: FeatureContract  # held, so that its id (in the key) is not reused while the plan exists
    request_id: str | None
    outputs: tuple[str, ...]
    binary_outputs: frozenset[str]
    tensor: str
    dtype: np.dtype[Any]
    rows: int


# A client sends the same JSON header with every binary request of one shape (tritonclient and the KServe SDK do):
# the header's parse and checks are remembered by its bytes, and a request with a known header only has its tensor
# data read and checked. Keyed by (header, body length, contract, row limit): with the same header and the same
# number of bytes behind it, the full decode takes the same decisions, the data's finiteness aside.
_PLANS: dict[tuple[bytes, int, int, int], _Plan] = {}
MAX_PLANS = 64  # distinct headers remembered; beyond, forgotten all at once (a client with an id per request)
MAX_PLAN_HEADER = 1024  # bytes: tritonclient's and the KServe SDK's headers are 150-300; a longer one is not kept


def decode_request(body: bytes, json_length: int | None, contract: FeatureContract | None,
                   max_rows: int, columns: int | None = None) -> InferInput:
    """An OIP request body as rows keyed by feature name. Without a ``contract`` (the neutral prediction
    answers) positional columns are named ``column_{j}`` and not checked, and ``columns`` (the width of the
    contract the server knows, if any) bounds them."""
    if json_length is not None and json_length <= MAX_PLAN_HEADER and contract is not None:
        key = (body[:json_length], len(body), id(contract), max_rows)
        plan = _PLANS.get(key)
        if plan is not None and plan.contract is contract:
            return _planned(plan, body, json_length)
        request = _decode(body, json_length, contract, max_rows, columns)
        if request.matrix is not None:  # one binary tensor of rows in contract order: the usual binary request
            if len(_PLANS) >= MAX_PLANS:
                _PLANS.clear()
            tensor = orjson.loads(key[0])["inputs"][0]  # checked by the decode that just succeeded
            _PLANS[key] = _Plan(contract, request.id, request.outputs, request.binary_outputs, tensor["name"][:256],
                                np.dtype(DTYPES[tensor["datatype"]]), len(request.rows))
        return request
    return _decode(body, json_length, contract, max_rows, columns)


def _planned(plan: _Plan, body: bytes, json_length: int) -> InferInput:
    """The request of a known header: only its tensor's values are read (and checked finite)."""
    features = plan.contract.features
    n_cols = len(features)
    array = np.frombuffer(body, dtype=plan.dtype, count=plan.rows * n_cols, offset=json_length).astype(np.float64)
    data = array.tolist()
    if plan.dtype.kind == "f" and not all_finite(array, data):
        raise invalid_input("tensor data must be finite numbers", tensor=plan.tensor)
    if plan.rows == 1:
        rows = [dict(zip(features, data, strict=True))]
    else:
        rows = [dict(zip(features, data[i * n_cols:(i + 1) * n_cols], strict=True)) for i in range(plan.rows)]
    return InferInput(plan.request_id, rows, plan.outputs, plan.binary_outputs, array.reshape(plan.rows, n_cols))


def _decode(body: bytes, json_length: int | None, contract: FeatureContract | None,
            max_rows: int, columns: int | None) -> InferInput:
    doc = parse_json(body if json_length is None else body[:json_length])
    binary = memoryview(body)[json_length:] if json_length is not None else memoryview(b"")
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise invalid_input("inputs must be a non-empty list of tensors")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise invalid_input("id must be a string")
    limits = Limits(max_rows, contract.n_features if contract is not None else columns or MAX_NEUTRAL_COLUMNS)
    if len(doc["inputs"]) > MAX_TENSORS:
        raise invalid_input(f"at most {MAX_TENSORS} input tensors")
    outputs, binary_outputs = _requested_outputs(doc)
    offset = 0
    tensors = []
    elements = 0
    for t in doc["inputs"]:
        tensor, offset = decode_tensor(t, limits, binary, offset)
        elements += len(tensor.data)
        if elements > limits.max_elements:
            raise invalid_input(f"at most {limits.max_elements} values in all tensors together")
        tensors.append(tensor)
    if offset != len(binary):
        raise invalid_input(f"{len(binary) - offset} bytes of binary data after the last tensor's")
    rows = tensor_rows(tensors, contract, limits)
    matrix = None
    if contract is not None and len(tensors) == 1 and tensors[0].array is not None and rows:
        matrix = tensors[0].array.reshape(len(rows), contract.n_features)
    return InferInput(request_id, rows, outputs, binary_outputs, matrix)


def _flag(parameters: Any, name: str, default: bool) -> bool:
    if parameters is None:
        return default
    if not isinstance(parameters, dict):
        raise invalid_input("parameters must be an object")
    value = parameters.get(name, default)
    if not isinstance(value, bool):
        raise invalid_input(f"parameter {name} must be true or false")
    return value


def _requested_outputs(doc: dict[str, Any]) -> tuple[tuple[str, ...], frozenset[str]]:
    all_binary = _flag(doc.get("parameters"), "binary_data_output", False)
    requested = doc.get("outputs")
    if requested is None:
        return OUTPUTS, frozenset(OUTPUTS) if all_binary else frozenset()
    if not isinstance(requested, list) or not 0 < len(requested) <= len(OUTPUTS):
        raise invalid_input(f"outputs must be a list of 1 to {len(OUTPUTS)} of {list(OUTPUTS)}")
    names: list[str] = []
    binary: set[str] = set()
    for output in requested:
        name = output.get("name") if isinstance(output, dict) else None
        if name not in OUTPUTS or name in names:
            raise invalid_input(f"unknown or repeated output; this model's outputs are {list(OUTPUTS)}",
                                output=name if isinstance(name, str) else None)
        names.append(name)
        if _flag(output.get("parameters"), "binary_data", all_binary):
            binary.add(name)
    return tuple(names), frozenset(binary)


def decode_tensor(t: Any, limits: Limits, binary: memoryview, offset: int) -> tuple[Tensor, int]:
    """One input tensor, its data flat in row-major order; and where the next tensor's binary data starts."""
    if not isinstance(t, dict):
        raise invalid_input("a tensor must be an object")
    name, shape, datatype = t.get("name"), t.get("shape"), t.get("datatype")
    if not isinstance(name, str) or not isinstance(shape, list):
        raise invalid_input("a tensor needs name, shape, datatype and data")
    name = name[:256]
    if datatype not in NUMERIC_DATATYPES:
        raise invalid_input(f"datatype must be one of {sorted(NUMERIC_DATATYPES)}", tensor=name)
    # Bounded before any arithmetic: a shape is a client's list of arbitrary integers.
    if not 1 <= len(shape) <= 2 or not all(type(d) is int and 0 <= d <= limits.max_elements for d in shape):
        raise invalid_input(f"shape must be 1 or 2 integers within 0..{limits.max_elements} ([N], [N, 1] or "
                            "[N, n_features])", tensor=name)
    if len(shape) == 2 and shape[0] > limits.max_rows:
        raise invalid_input(f"at most {limits.max_rows} rows", tensor=name)
    elements = shape[0] * (shape[1] if len(shape) == 2 else 1)
    if elements > limits.max_elements:
        raise invalid_input(f"at most {limits.max_elements} values per tensor", tensor=name)
    size = _flag_size(t.get("parameters"), name)
    if size is not None:
        if "data" in t:
            raise invalid_input("a tensor has either data or parameters.binary_data_size", tensor=name)
        dtype = np.dtype(DTYPES[datatype])
        if size != elements * dtype.itemsize or size > len(binary) - offset:
            raise invalid_input(f"binary_data_size {size} does not hold shape {shape} of {datatype} "
                                f"({elements * dtype.itemsize} bytes; {len(binary) - offset} arrived)", tensor=name)
        array = np.frombuffer(binary[offset:offset + size], dtype=dtype).astype(np.float64)
        data = array.tolist()
        if dtype.kind == "f" and not all_finite(array, data):
            raise invalid_input("tensor data must be finite numbers", tensor=name)
        return Tensor(name, shape, data, array), offset + size
    data = t.get("data")
    if not isinstance(data, list):
        raise invalid_input("a tensor needs name, shape, datatype and data", tensor=name)
    if data and isinstance(data[0], list):  # row-major nested lists are allowed by OIP: flatten
        flat: list[Any] = []
        for part in data:
            if not isinstance(part, list):
                raise invalid_input("data nesting is inconsistent", tensor=name)
            flat.extend(part)
        data = flat
    if len(data) != elements:
        raise invalid_input(f"shape {shape} needs {elements} values, got {len(data)}", tensor=name)
    return Tensor(name, shape, data), offset


def _flag_size(parameters: Any, name: str) -> int | None:
    if parameters is None:
        return None
    if not isinstance(parameters, dict):
        raise invalid_input("parameters must be an object", tensor=name)
    size = parameters.get("binary_data_size")
    if size is None:
        return None
    if type(size) is not int or size < 0:
        raise invalid_input("binary_data_size must be a non-negative integer", tensor=name)
    return size


def tensor_rows(tensors: list[Tensor], contract: FeatureContract | None, limits: Limits) -> list[dict[str, Any]]:
    """OIP tensors as rows keyed by feature name: one tensor per feature (checked by name), or one
    [N, n_features] tensor in contract order (checked by count)."""
    if len(tensors) == 1 and (contract is None or tensors[0].name not in contract.features):
        name, shape, data = tensors[0].name, tensors[0].shape, tensors[0].data
        n_rows, n_cols = (1, shape[0]) if len(shape) == 1 else (shape[0], shape[1])
        _check_rows(n_rows, limits)
        if contract is None:  # the neutral prediction answers whatever the columns
            if n_cols > limits.max_columns:
                raise invalid_input(f"at most {limits.max_columns} columns", tensor=name)
            return [{f"column_{j}": data[i * n_cols + j] for j in range(n_cols)} for i in range(n_rows)]
        if n_cols != contract.n_features:
            provided = [*contract.features[:n_cols], *(f"column_{j}" for j in range(contract.n_features, n_cols))]
            raise feature_mismatch(contract.mismatch(provided))
        features = contract.features
        return [dict(zip(features, data[i * n_cols:(i + 1) * n_cols], strict=True)) for i in range(n_rows)]
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise invalid_input("duplicate tensor names")
    if contract is not None and set(names) != set(contract.features):
        raise feature_mismatch(contract.mismatch(names))
    lengths = set()
    for t in tensors:
        if len(t.shape) == 2 and t.shape[1] != 1:
            raise invalid_input("a per-feature tensor has shape [N] or [N, 1]", tensor=t.name)
        lengths.add(len(t.data))
    if len(lengths) != 1:
        raise invalid_input("per-feature tensors differ in length")
    (n_rows,) = lengths
    _check_rows(n_rows, limits)
    return [{t.name: t.data[i] for t in tensors} for i in range(n_rows)]


def _check_rows(n_rows: int, limits: Limits) -> None:
    if n_rows == 0:
        raise invalid_input("no rows")
    if n_rows > limits.max_rows:
        raise invalid_input(f"at most {limits.max_rows} rows")


_ID_LENGTH = struct.pack("<I", 32)  # the length prefix of a prediction id (32 hex digits)


def _bytes_elements(ids: list[str]) -> bytes:
    """BYTES tensor data in the binary extension's form: each element a 4-byte little-endian length, then it."""
    parts = []
    for value in ids:
        raw = value.encode()
        parts.append(_ID_LENGTH if len(raw) == 32 else struct.pack("<I", len(raw)))
        parts.append(raw)
    return b"".join(parts)


def _fp64_elements(scores: list[float]) -> bytes:
    if len(scores) <= 64:  # struct is cheaper than numpy's per-call overhead for the few scores of most requests
        return struct.pack(f"<{len(scores)}d", *scores)
    return np.asarray(scores, dtype="<f8").tobytes()


# The JSON header of an answer whose outputs are all binary depends on the request's form and the answer's
# parameters and sizes, not on the scores or ids: made once per such combination (bounded like _PLANS).
_BINARY_HEADERS: dict[tuple[Any, ...], bytes] = {}
MAX_BINARY_HEADERS = 64


def encode_response(*, model_name: str, model_version: str, request: InferInput,
                    parameters: dict[str, str | bool], scores: list[float], ids: list[str]) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary outputs follow it (else None)."""
    n = len(scores)
    if request.binary_outputs and len(request.binary_outputs) == len(request.outputs) and request.id is None:
        blobs = [_fp64_elements(scores) if name == "prediction" else _bytes_elements(ids) for name in request.outputs]
        key = (model_name, model_version, request.outputs, n, *map(len, blobs), *parameters.items())
        header = _BINARY_HEADERS.get(key)
        if header is None:
            header = _header(model_name, model_version, request, parameters, scores, ids, blobs)
            if len(_BINARY_HEADERS) >= MAX_BINARY_HEADERS:
                _BINARY_HEADERS.clear()
            _BINARY_HEADERS[key] = header
        return b"".join([header, *blobs]), len(header)
    blobs = [_fp64_elements(scores) if name == "prediction" else _bytes_elements(ids)
             for name in request.outputs if name in request.binary_outputs]
    header = _header(model_name, model_version, request, parameters, scores, ids, blobs)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def _header(model_name: str, model_version: str, request: InferInput, parameters: dict[str, str | bool],
            scores: list[float], ids: list[str], blobs: list[bytes]) -> bytes:
    """The answer's JSON: ``blobs`` are the binary outputs' data, in the order of ``request.outputs``."""
    n = len(scores)
    sizes = iter(map(len, blobs))
    outputs: list[dict[str, Any]] = []
    for name in request.outputs:
        output: dict[str, Any] = {"name": name, "datatype": "FP64" if name == "prediction" else "BYTES",
                                  "shape": [n]}
        if name in request.binary_outputs:
            output["parameters"] = {"binary_data_size": next(sizes)}
        else:
            output["data"] = scores if name == "prediction" else ids
        outputs.append(output)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:  # OIP: the request's id, if it had one
        doc["id"] = request.id
    doc["parameters"] = parameters
    doc["outputs"] = outputs
    return orjson.dumps(doc)
