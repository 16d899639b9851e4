"""OIP binary requests with a header seen before are decoded from what that header decoded to, and all-binary
answers reuse their JSON header: the results must be exactly those of a first decode and encode, whatever
changes between requests (the data, its finiteness, its length, the contract, the id, the governance state)."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest

from model_server import oip
from model_server.http import HttpError
from modelwarden.artifacts import FeatureContract

FEATURES = tuple(f"f{i}" for i in range(4))
CONTRACT = FeatureContract(name="c", features=FEATURES)


@pytest.fixture(autouse=True)
def _forget() -> None:
    oip._PLANS.clear()
    oip._BINARY_HEADERS.clear()


def binary(rows: list[list[float]], datatype: str = "FP64", **doc: Any) -> tuple[bytes, int]:
    dtype = np.dtype(oip.DTYPES[datatype])
    raw = np.asarray(rows, dtype=dtype).tobytes()
    header = json.dumps({**doc, "inputs": [{"name": "x", "shape": [len(rows), len(rows[0])], "datatype": datatype,
                                            "parameters": {"binary_data_size": len(raw)}}],
                         "parameters": {"binary_data_output": True}}).encode()
    return header + raw, len(header)


def first_decode(body: bytes, length: int, contract: FeatureContract = CONTRACT) -> oip.InferInput:
    oip._PLANS.clear()
    return oip.decode_request(body, length, contract, 100)


def same(a: oip.InferInput, b: oip.InferInput) -> None:
    assert a[:4] == b[:4]
    assert a.matrix is not None and b.matrix is not None
    assert a.matrix.dtype == b.matrix.dtype and np.array_equal(a.matrix, b.matrix)


@pytest.mark.parametrize("datatype", ["FP64", "FP32", "INT32", "FP16"])
def test_a_known_header_decodes_new_data_as_a_first_decode_does(datatype: str) -> None:
    oip.decode_request(*binary([[1, 2, 3, 4]], datatype), CONTRACT, 100)
    body, length = binary([[5, 6, 7, 8]], datatype)
    again = oip.decode_request(body, length, CONTRACT, 100)
    assert len(oip._PLANS) == 1  # remembered, and used
    same(again, first_decode(body, length))
    assert again.rows == [{"f0": 5.0, "f1": 6.0, "f2": 7.0, "f3": 8.0}]


def test_several_rows() -> None:
    oip.decode_request(*binary([[1, 2, 3, 4], [5, 6, 7, 8]]), CONTRACT, 100)
    body, length = binary([[9, 8, 7, 6], [5, 4, 3, 2]])
    same(oip.decode_request(body, length, CONTRACT, 100), first_decode(body, length))


def test_non_finite_data_behind_a_known_header_is_refused() -> None:
    oip.decode_request(*binary([[1, 2, 3, 4]]), CONTRACT, 100)
    with pytest.raises(HttpError) as e:
        oip.decode_request(*binary([[1, float("nan"), 3, 4]]), CONTRACT, 100)
    with pytest.raises(HttpError) as first:
        first_decode(*binary([[1, float("inf"), 3, 4]]))
    assert (e.value.status, e.value.message, e.value.fields) == (422, first.value.message, first.value.fields) \
        == (422, "tensor data must be finite numbers", {"tensor": "x"})


def test_a_known_header_with_bytes_after_its_tensor_is_still_refused() -> None:
    body, length = binary([[1, 2, 3, 4]])
    oip.decode_request(body, length, CONTRACT, 100)
    with pytest.raises(HttpError) as e:
        oip.decode_request(body + b"\0" * 8, length, CONTRACT, 100)
    assert "8 bytes of binary data after the last tensor" in str(e.value.message)


def test_another_contract_is_checked_afresh() -> None:
    body, length = binary([[1, 2, 3, 4]])
    oip.decode_request(body, length, CONTRACT, 100)
    renamed = FeatureContract(name="c", features=("a", "b", "c", "d"))
    assert oip.decode_request(body, length, renamed, 100).rows == [{"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}]
    wider = FeatureContract(name="w", features=(*FEATURES, "f4"))
    with pytest.raises(HttpError) as e:
        oip.decode_request(body, length, wider, 100)
    assert e.value.code == "FEATURE_MISMATCH"


def test_a_lower_row_limit_is_checked_afresh() -> None:
    body, length = binary([[1, 2, 3, 4], [5, 6, 7, 8]])
    oip.decode_request(body, length, CONTRACT, 100)
    with pytest.raises(HttpError):
        oip.decode_request(body, length, CONTRACT, 1)


def test_the_request_id_comes_from_its_own_header() -> None:
    assert oip.decode_request(*binary([[1, 2, 3, 4]], id="a"), CONTRACT, 100).id == "a"
    assert oip.decode_request(*binary([[1, 2, 3, 4]], id="b"), CONTRACT, 100).id == "b"
    assert oip.decode_request(*binary([[1, 2, 3, 4]], id="a"), CONTRACT, 100).id == "a"


def test_many_headers_stay_bounded() -> None:
    for i in range(3 * oip.MAX_PLANS):
        assert oip.decode_request(*binary([[1, 2, 3, 4]], id=str(i)), CONTRACT, 100).id == str(i)
    assert len(oip._PLANS) <= oip.MAX_PLANS


def encode(request: oip.InferInput, scores: list[float], ids: list[str], state: str = "ENABLED|OK",
           neutral: bool = False) -> tuple[bytes, int | None]:
    return oip.encode_response(model_name="m", model_version="1", request=request, scores=scores, ids=ids,
                               parameters={"governance_state": state, "neutral": neutral, "track": "stable"})


def read_binary_answer(body: bytes, length: int | None) -> tuple[dict[str, Any], list[float], list[str]]:
    assert length is not None
    header = json.loads(body[:length])
    sizes = [o["parameters"]["binary_data_size"] for o in header["outputs"]]
    scores_raw, ids_raw = body[length:length + sizes[0]], body[length + sizes[0]:]
    assert len(ids_raw) == sizes[1]
    ids, at = [], 0
    while at < len(ids_raw):
        (n,) = struct.unpack_from("<I", ids_raw, at)
        ids.append(ids_raw[at + 4:at + 4 + n].decode())
        at += 4 + n
    return header, np.frombuffer(scores_raw, dtype="<f8").tolist(), ids


def test_all_binary_answers_carry_their_own_scores_ids_and_state() -> None:
    request = oip.decode_request(*binary([[1, 2, 3, 4]]), CONTRACT, 100)
    ids = ["0" * 32, "f" * 32]
    header, scores, got_ids = read_binary_answer(*encode(request, [0.25], ids[:1]))
    assert (scores, got_ids, header["outputs"][0]["shape"]) == ([0.25], ids[:1], [1])
    header, scores, got_ids = read_binary_answer(*encode(request, [0.75, 0.5], ids))
    assert (scores, got_ids, header["outputs"][0]["shape"]) == ([0.75, 0.5], ids, [2])
    header, _, _ = read_binary_answer(*encode(request, [0.5], ids[:1], state="DISABLED_BY_CONFIG", neutral=True))
    assert header["parameters"] == {"governance_state": "DISABLED_BY_CONFIG", "neutral": True, "track": "stable"}
    header, _, _ = read_binary_answer(*encode(request, [0.5], ["short-id"]))
    assert header["outputs"][1]["parameters"]["binary_data_size"] == 4 + len("short-id")


def test_an_answer_with_a_request_id_echoes_it() -> None:
    request = oip.decode_request(*binary([[1, 2, 3, 4]], id="req-7"), CONTRACT, 100)
    header, _, _ = read_binary_answer(*encode(request, [0.5], ["0" * 32]))
    assert header["id"] == "req-7"


def test_long_headers_are_not_kept() -> None:
    """At most MAX_PLANS headers of at most MAX_PLAN_HEADER bytes: a client cannot make the server hold its
    4 MiB headers."""
    body, length = binary([[1, 2, 3, 4]], id="x" * oip.MAX_PLAN_HEADER)
    assert oip.decode_request(body, length, CONTRACT, 100).id == "x" * oip.MAX_PLAN_HEADER
    assert oip._PLANS == {}
