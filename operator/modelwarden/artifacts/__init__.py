"""Artifact manifest, SHA256 verification, feature contract and model metadata (shared with the server).

No kopf, no kubernetes: the inference server imports this package, and so will the training pipeline.

* :mod:`.hashing`  - ``sha256_file``, ``sha256_bytes``
* :mod:`.manifest` - ``manifest.json``: files with SHA256 and size, the history chain, ``verify_manifest``
* :mod:`.contract` - ``FeatureContract`` and its ``FeatureMismatch``
* :mod:`.meta`     - ``model_meta.json`` with the training reference distributions for drift, ``psi``
* :mod:`.signing`  - OpenSSF model-signing signatures over the directory (imported on its own: it loads the
  signing library)
"""

from modelwarden.artifacts.contract import FEATURE_MISMATCH, FeatureContract, FeatureMismatch
from modelwarden.artifacts.hashing import is_sha256_hex, sha256_bytes, sha256_file
from modelwarden.artifacts.manifest import (
    MANIFEST_FILENAME,
    SIGNATURE_FILENAME,
    HistoryEntry,
    Manifest,
    ManifestFile,
    ManifestProblem,
    ModelFormat,
    build_manifest,
    manifest_sha256,
    read_manifest,
    verify_history,
    verify_manifest,
    write_manifest,
)
from modelwarden.artifacts.meta import (
    MODEL_META_FILENAME,
    DriftReference,
    ModelMeta,
    ReferenceDistribution,
    psi,
    read_model_meta,
)

__all__ = [
    "FEATURE_MISMATCH",
    "MANIFEST_FILENAME",
    "MODEL_META_FILENAME",
    "SIGNATURE_FILENAME",
    "DriftReference",
    "FeatureContract",
    "FeatureMismatch",
    "HistoryEntry",
    "Manifest",
    "ManifestFile",
    "ManifestProblem",
    "ModelFormat",
    "ModelMeta",
    "ReferenceDistribution",
    "build_manifest",
    "is_sha256_hex",
    "manifest_sha256",
    "psi",
    "read_manifest",
    "read_model_meta",
    "sha256_bytes",
    "sha256_file",
    "verify_history",
    "verify_manifest",
    "write_manifest",
]
