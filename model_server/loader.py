"""Verify, then load, a model artifact directory. Nothing is read as a model before its bytes are verified.

Order: the manifest must verify (every file's size and SHA256, nothing unlisted), the model file's SHA256
must equal the expected one from the MLModel spec (``ARTIFACT_SHA256``: the manifest alone proves nothing,
whoever swapped the file could rewrite it too), and the model is then loaded from the very bytes that were
hashed, so the file cannot change between check and use.

Formats:

* ``skops``: only types skops trusts by default plus :data:`BUILTIN_SKOPS_TRUSTED` and ``SKOPS_TRUSTED_TYPES``;
  anything else - or a file that is not a skops archive at all, such as a pickle renamed ``.skops`` - is
  refused. Decision trees are additionally bounds-checked after loading (see :func:`check_tree_bounds`).
* ``onnx``: onnxruntime on the CPU with one thread (one process per pod; the event loop needs the other core).
* ``joblib``: a pickle, so arbitrary code on load; refused unless ``ALLOW_JOBLIB=true``.

scikit-learn's ``InconsistentVersionWarning`` (model pickled by another scikit-learn version) is fatal.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model_server.arrays import Matrix, ScoreFn, Scores
from model_server.config import Settings
from modelwarden.artifacts import (
    MODEL_META_FILENAME,
    FeatureContract,
    ModelMeta,
    read_manifest,
    read_model_meta,
    sha256_bytes,
    verify_manifest,
)

# skops leaves sklearn's Tree untrusted because a crafted file can hold out-of-range node indices. Ours are
# SHA256-pinned to an approved artifact and every tree is bounds-checked after loading, so tree ensembles
# (GradientBoosting, RandomForest...) may load.
BUILTIN_SKOPS_TRUSTED = ("sklearn.tree._tree.Tree",)


class ArtifactRejected(Exception):
    """The artifact is not what was approved (integrity, format, untrusted content): nothing is served from it."""

    kind = "ARTIFACT_REJECTED"

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class ModelLoadError(Exception):
    """The artifact verified but the model cannot be used (load failure, wrong shape, broken warm-up)."""

    kind = "LOAD_ERROR"


@dataclass
class LoadedModel:
    score: ScoreFn
    contract: FeatureContract
    meta: ModelMeta
    sha256: str
    format: str
    platform: str
    estimator: str
    warmup_rows: Matrix = field(repr=False, default_factory=lambda: np.zeros((0, 0)))
    reference_score: ScoreFn | None = field(repr=False, default=None)  # the library's public method
    fast_path: str | None = None  # name of the verified fast path in use (see model_server.fastpath)


def load_artifact(settings: Settings) -> LoadedModel:
    """Verify and load ``settings.artifact_dir``; raises :class:`ArtifactRejected` or :class:`ModelLoadError`."""
    directory = settings.artifact_dir
    problems = verify_manifest(directory)
    if problems:
        raise ArtifactRejected(f"artifact failed verification: {'; '.join(map(str, problems))}",
                               [str(p) for p in problems])
    manifest = read_manifest(directory)
    if manifest.format != settings.model_format:
        raise ArtifactRejected(f"MODEL_FORMAT is {settings.model_format} but the manifest says {manifest.format}")
    if settings.model_format == "joblib" and not settings.allow_joblib:
        raise ArtifactRejected(
            "joblib artifacts are pickles (arbitrary code on load); refused unless ALLOW_JOBLIB=true")
    if manifest.file(MODEL_META_FILENAME) is None:
        raise ArtifactRejected(f"{MODEL_META_FILENAME} is not part of the manifest")

    data = (directory / manifest.model_file).read_bytes()
    actual = sha256_bytes(data)
    if actual != settings.artifact_sha256:
        raise ArtifactRejected(f"{manifest.model_file}: sha256 {actual} != expected {settings.artifact_sha256}")
    if actual != manifest.model_sha256:
        raise ArtifactRejected(f"{manifest.model_file} changed while being verified")

    try:
        meta = read_model_meta(directory)
    except Exception as e:
        raise ArtifactRejected(f"{MODEL_META_FILENAME} is invalid: {e}") from e
    contract = _contract(settings, meta)

    rows = warmup_rows(meta)
    fast_path = None
    if settings.model_format == "onnx":  # no scikit-learn import at all: seconds less to start
        score, platform, estimator = _load_onnx(data, meta.n_features)
        reference = score
    else:
        from sklearn.exceptions import InconsistentVersionWarning

        # catch_warnings is process-wide; loading happens once, before (or instead of) serving the model.
        with warnings.catch_warnings():
            warnings.simplefilter("error", InconsistentVersionWarning)
            try:
                obj = _load_skops(data, settings.skops_trusted_types) if settings.model_format == "skops" \
                    else _load_joblib(data)
                reference, platform, estimator = _sklearn_scorer(obj, meta)
                _check_scores(reference, rows)
                from model_server import fastpath

                score, fast_path = fastpath.verified(obj, reference, rows)
            except InconsistentVersionWarning as e:
                raise ModelLoadError(f"scikit-learn version mismatch, refusing the model: {e}") from e
    _check_scores(score, rows)
    return LoadedModel(score=score, contract=contract, meta=meta, sha256=actual, format=settings.model_format,
                       platform=platform, estimator=estimator, warmup_rows=rows, reference_score=reference,
                       fast_path=fast_path)


def _contract(settings: Settings, meta: ModelMeta) -> FeatureContract:
    if settings.feature_contract is None:
        return FeatureContract(name=meta.feature_contract or settings.model_name, features=meta.features)
    contract = settings.feature_contract
    if contract.features != meta.features:
        mismatch = contract.mismatch(meta.features)
        detail = "same names, different order" if not (mismatch.missing_features or mismatch.unexpected_features) \
            else f"model lacks {mismatch.missing_features}, model adds {mismatch.unexpected_features}"
        raise ArtifactRejected(
            f"feature contract {contract.name!r} ({contract.n_features} features) disagrees with "
            f"{MODEL_META_FILENAME} ({meta.n_features} features): {detail}")
    return contract


def _load_skops(data: bytes, extra_trusted: tuple[str, ...]) -> Any:
    import skops.io as sio  # type: ignore[import-untyped]

    try:
        untrusted: list[str] = sio.get_untrusted_types(data=data)
    except Exception as e:
        raise ArtifactRejected(
            f"not a skops archive ({type(e).__name__}: {e}); a pickle renamed .skops is refused, not unpickled"
        ) from e
    allowed = set(BUILTIN_SKOPS_TRUSTED) | set(extra_trusted)
    refused = sorted(t for t in untrusted if t not in allowed)
    if refused:
        raise ArtifactRejected(f"skops file contains untrusted types {refused}; "
                               "only reviewed types may be loaded (SKOPS_TRUSTED_TYPES extends the list)")
    try:
        obj = sio.loads(data, trusted=untrusted)
    except Warning:
        raise
    except Exception as e:
        raise ModelLoadError(f"skops could not load the model: {type(e).__name__}: {e}") from e
    check_tree_bounds(obj)
    return obj


def _load_joblib(data: bytes) -> Any:
    import joblib  # type: ignore[import-untyped]

    try:
        return joblib.load(io.BytesIO(data))
    except Warning:
        raise
    except Exception as e:
        raise ModelLoadError(f"joblib could not load the model: {type(e).__name__}: {e}") from e


def _walk(obj: Any, seen: set[int] | None = None, depth: int = 0) -> Iterator[Any]:
    """Every object reachable from a loaded estimator through attributes, containers and object arrays."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth > 50:
        return
    seen.add(id(obj))
    yield obj
    children: list[Any] = []
    if isinstance(obj, dict):
        children = list(obj.values())
    elif isinstance(obj, list | tuple):
        children = list(obj)
    elif isinstance(obj, np.ndarray):
        children = list(obj.ravel()) if obj.dtype == object else []
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        children = list(vars(obj).values())
    for child in children:
        yield from _walk(child, seen, depth + 1)


def check_tree_bounds(obj: Any) -> None:
    """Refuse decision trees whose node links could make scikit-learn read out of bounds or loop: children
    must be -1 (leaf) or later nodes, split features must exist, leaves must be leaves on both sides."""
    from sklearn.tree._tree import Tree

    for node in _walk(obj):
        if not isinstance(node, Tree):
            continue
        n = int(node.node_count)
        left, right = np.asarray(node.children_left), np.asarray(node.children_right)
        feature, value = np.asarray(node.feature), np.asarray(node.value)
        index = np.arange(n)
        if not (len(left) == len(right) == len(feature) == value.shape[0] == n):
            raise ArtifactRejected("decision tree arrays disagree with its node count")
        leaf = left == -1
        if (np.any((right == -1) != leaf)
                or np.any(~leaf & ((left <= index) | (left >= n) | (right <= index) | (right >= n)))
                or np.any(~leaf & ((feature < 0) | (feature >= int(node.n_features))))):
            raise ArtifactRejected("decision tree has out-of-range node links or features")


def _sklearn_scorer(model: Any, meta: ModelMeta) -> tuple[ScoreFn, str, str]:
    from sklearn.base import is_classifier

    name = type(model).__name__
    n_in = getattr(model, "n_features_in_", None)
    if n_in is not None and int(n_in) != meta.n_features:
        raise ModelLoadError(f"{name} expects {n_in} features but {MODEL_META_FILENAME} lists {meta.n_features}")
    names = getattr(model, "feature_names_in_", None)
    if names is not None and tuple(str(n) for n in names) != meta.features:
        raise ModelLoadError(f"{name} was fitted on features {list(names)}, not those of {MODEL_META_FILENAME}")
    if is_classifier(model):
        classes = getattr(model, "classes_", None)
        if classes is None or len(classes) != 2 or not hasattr(model, "predict_proba"):
            raise ModelLoadError(f"{name}: one score per row is served, so classifiers must be binary "
                                 "with predict_proba (the score is P(classes_[1]))")
        predict_proba = model.predict_proba

        def score_classifier(x: Matrix) -> Scores:
            return np.asarray(predict_proba(x)[:, 1], dtype=np.float64)

        return score_classifier, "sklearn", name
    if not hasattr(model, "predict"):
        raise ModelLoadError(f"{name} has no predict method")
    predict = model.predict

    def score_regressor(x: Matrix) -> Scores:
        return np.asarray(predict(x), dtype=np.float64).reshape(len(x), -1)[:, 0]

    return score_regressor, "sklearn", name


def _load_onnx(data: bytes, n_features: int) -> tuple[ScoreFn, str, str]:
    import onnxruntime as ort  # type: ignore[import-untyped]

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ModelLoadError(f"onnxruntime could not load the model: {type(e).__name__}: {e}") from e
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelLoadError(f"ONNX model must have one input [N, {n_features}], has {len(inputs)}")
    inp = inputs[0]
    dtypes = {"tensor(float)": np.float32, "tensor(double)": np.float64}
    if inp.type not in dtypes:
        raise ModelLoadError(f"ONNX input {inp.name!r} is {inp.type}; float or double tensors are supported")
    shape = list(inp.shape)
    if len(shape) != 2 or (isinstance(shape[1], int) and shape[1] != n_features):
        raise ModelLoadError(f"ONNX input {inp.name!r} has shape {shape}, expected [N, {n_features}]")
    outputs = {o.name: o for o in session.get_outputs()}
    out = outputs.get("probabilities") or next(
        (o for o in outputs.values() if o.type in ("tensor(float)", "tensor(double)")), None)
    if out is None:
        raise ModelLoadError(f"ONNX model has no float tensor output ({[o.type for o in outputs.values()]}); "
                             "export classifiers with zipmap=False")
    in_name, out_names, in_dtype = inp.name, [out.name], dtypes[inp.type]
    run = session.run

    def score_onnx(x: Matrix) -> Scores:
        result = np.asarray(run(out_names, {in_name: x.astype(in_dtype, copy=False)})[0])
        if result.ndim == 2 and result.shape[1] == 2:  # binary class probabilities: P(class 1)
            result = result[:, 1]
        elif result.ndim == 2 and result.shape[1] == 1:
            result = result[:, 0]
        elif result.ndim != 1:
            raise ModelLoadError(f"ONNX output {out_names[0]!r} has shape {result.shape}; one score per row")
        return result.astype(np.float64, copy=False)

    producer = "onnx"
    try:
        meta = session.get_modelmeta()
        producer = f"onnx ({meta.producer_name})" if meta.producer_name else producer
    except Exception:  # metadata is decoration only
        pass
    return score_onnx, "onnxruntime", producer


def warmup_rows(meta: ModelMeta, rows: int = 32) -> Matrix:
    """Representative rows: each feature cycles through its training bins' midpoints (zeros without a
    reference), so warm-up exercises the model across its input range rather than one point."""
    x = np.zeros((rows, meta.n_features), dtype=np.float64)
    for j, name in enumerate(meta.features):
        ref = meta.reference.features.get(name)
        if ref is None:
            continue
        edges = np.asarray(ref.bin_edges)
        mids = (edges[:-1] + edges[1:]) / 2
        x[:, j] = mids[(np.arange(rows) + j) % len(mids)]
    return x


def _check_scores(score: ScoreFn, rows: Matrix) -> None:
    for batch in (rows[:1], rows):
        try:
            out = score(batch)
        except (ArtifactRejected, ModelLoadError):
            raise
        except Exception as e:
            raise ModelLoadError(f"the model failed on warm-up rows: {type(e).__name__}: {e}") from e
        if out.shape != (len(batch),) or not np.all(np.isfinite(out)):
            raise ModelLoadError(f"the model answered {out.shape} / non-finite scores on warm-up rows")


def warm_up(model: LoadedModel, rounds: int) -> None:
    """Run the model on batches of 1 and 32 rows ``rounds`` times (first-call allocations, caches, branch
    predictors); the server is ready only afterwards."""
    single, batch = model.warmup_rows[:1], model.warmup_rows
    for _ in range(rounds):
        model.score(single)
        model.score(batch)
