"""Model files that are byte-identical for the same fitted estimator, run after run.

Neither library gives that out of the box:

* skops names the arrays in its zip after ``id()`` of the objects, records those ids in ``schema.json`` and
  stamps every zip entry with the current time. :func:`skops_bytes` renumbers the ids and files in order of
  first appearance (so shared references stay shared) and rewrites the zip with a fixed timestamp.
* skl2onnx emits ``opset_import`` in set order, which changes with ``PYTHONHASHSEED``. :func:`onnx_bytes`
  sorts it by domain.

Both check their own work: the canonical skops file must load to an estimator with the same predictions.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import numpy.typing as npt

ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


class SerializationError(RuntimeError):
    pass


def _renumber(node: Any, ids: dict[int, int], files: dict[str, str], entries: set[str]) -> Any:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "__id__" and isinstance(value, int):
                out[key] = ids.setdefault(value, len(ids))
            elif key == "file" and isinstance(value, str) and value in entries:
                out[key] = files.setdefault(value, f"{len(files):06d}{PurePosixPath(value).suffix}")
            else:
                out[key] = _renumber(value, ids, files, entries)
        return out
    if isinstance(node, list):
        return [_renumber(v, ids, files, entries) for v in node]
    return node


def canonical_skops(data: bytes) -> bytes:
    """The same skops archive with stable ids, file names and timestamps."""
    with zipfile.ZipFile(io.BytesIO(data)) as src:
        names = {info.filename for info in src.infolist()}
        files: dict[str, str] = {}
        schema = _renumber(json.loads(src.read("schema.json")), {}, files, names - {"schema.json"})
        unknown = names - set(files) - {"schema.json"}
        if unknown:
            raise SerializationError(f"skops archive has entries the schema does not reference: {sorted(unknown)}")
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as dst:
            for old, new in sorted(files.items(), key=lambda kv: kv[1]):
                info = zipfile.ZipInfo(new, date_time=ZIP_EPOCH)
                info.external_attr = 0o644 << 16
                dst.writestr(info, src.read(old))
            info = zipfile.ZipInfo("schema.json", date_time=ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            dst.writestr(info, json.dumps(schema, indent=2).encode())
    return out.getvalue()


def skops_bytes(estimator: Any, check_rows: npt.NDArray[np.float64]) -> bytes:
    import skops.io as sio  # type: ignore[import-untyped]

    data = canonical_skops(sio.dumps(estimator))
    loaded = sio.loads(data, trusted=sio.get_untrusted_types(data=data))
    if not np.array_equal(loaded.predict_proba(check_rows), estimator.predict_proba(check_rows)):
        raise SerializationError("the canonical skops file does not reproduce the estimator's predictions")
    return data


def onnx_bytes(estimator: Any, n_features: int) -> bytes:
    from skl2onnx import to_onnx  # type: ignore[import-untyped]

    sample = np.zeros((1, n_features), dtype=np.float32)
    # zipmap=False: probabilities as a plain [N, 2] tensor (what model_server reads).
    onx = to_onnx(estimator, sample, options={id(estimator): {"zipmap": False}})
    opsets = sorted((o.domain, o.version) for o in onx.opset_import)
    del onx.opset_import[:]
    for domain, version in opsets:
        entry = onx.opset_import.add()
        entry.domain, entry.version = domain, version
    return bytes(onx.SerializeToString(deterministic=True))


def onnx_scores(data: bytes, rows: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """P(class 1) from an ONNX classifier, for the parity check against scikit-learn."""
    import onnxruntime as ort  # type: ignore[import-untyped]

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    outputs = [o.name for o in session.get_outputs()]
    out = "probabilities" if "probabilities" in outputs else outputs[-1]
    result = np.asarray(session.run([out], {name: rows.astype(np.float32)})[0], dtype=np.float64)
    return result[:, 1] if result.ndim == 2 else result
