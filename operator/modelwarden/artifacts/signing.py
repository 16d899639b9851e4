"""Signatures over a whole artifact directory, in the OpenSSF model-signing format (``model-signing``).

``sign_directory`` writes ``DIR/model.sig``: a Sigstore bundle whose DSSE payload is an in-toto statement
listing every file of the directory with its sha256 (the library's ``files`` serialization). Signing is
key-based (an elliptic-curve private key, PEM; P-256, P-384 or P-521): nothing here can reach a
transparency log. The signature covers ``manifest.json`` too, so it is written after the manifest and is the
one file the manifest does not list.

``verify_directory_signature`` checks the signature against a set of trusted public keys and says what
failed: no signature, a signature that cannot be read, a signer outside the trusted set, a signature that
does not verify, or files changed, added or removed since signing. The signer is named by the library's key
hint: the SHA256 of the public key's PEM (SubjectPublicKeyInfo) encoding, which is also our fingerprint.

Hashing is configured the same way on both sides and spelled out here: sha256 per file, nothing ignored
but the signature itself (the library's default would also skip ``.git*`` paths, which would let a
``.gitignore`` slip into a signed model unnoticed).
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import model_signing
from cryptography import exceptions as crypto_exceptions
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from model_signing._signing import sign_ec_key, sign_sigstore_pb

from modelwarden.artifacts.hashing import sha256_bytes, sha256_file
from modelwarden.artifacts.manifest import SIGNATURE_FILENAME

SUPPORTED_CURVES: Final = ("secp256r1", "secp384r1", "secp521r1")

Reason = Literal["Verified", "SignatureMissing", "SignatureMalformed", "SignerUntrusted", "SignatureInvalid",
                 "ContentChanged"]


class SigningError(ValueError):
    """A key or directory that cannot be used to sign or verify (a usage error, not a failed check)."""


@dataclass(frozen=True)
class SignatureCheck:
    """The outcome of verifying one directory. ``reason`` is ``Verified`` exactly when ``ok``."""

    ok: bool
    reason: Reason
    message: str
    signer_fingerprint: str | None = None
    changed: tuple[str, ...] = field(default=())
    added: tuple[str, ...] = field(default=())
    removed: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "reason": self.reason, "message": self.message,
                "signerFingerprint": self.signer_fingerprint, "changed": list(self.changed),
                "added": list(self.added), "removed": list(self.removed)}


def _public_pem(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public_key(pem: bytes, *, what: str = "public key") -> ec.EllipticCurvePublicKey:
    """Parse a PEM public key the library can verify with; a clear error otherwise."""
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as e:
        raise SigningError(f"{what} is not a PEM public key: {e}") from e
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in SUPPORTED_CURVES:
        raise SigningError(f"{what} must be an elliptic-curve key on P-256, P-384 or P-521 "
                           f"(e.g. `openssl ecparam -name prime256v1 -genkey -noout -out key.pem`)")
    return key


def key_fingerprint(public_key_pem: bytes) -> str:
    """The signer's identity: SHA256 (hex) of the public key's canonical PEM, as model-signing's key hint."""
    return sha256_bytes(_public_pem(load_public_key(public_key_pem)))


def _hashing_config() -> Any:
    config = model_signing.hashing.Config()  # type: ignore[no-untyped-call]
    return config.set_ignored_paths(paths=[SIGNATURE_FILENAME], ignore_git_paths=False)


def load_private_key(private_key: str | Path, *, password: str | None = None) -> ec.EllipticCurvePrivateKey:
    """Read a PEM private key the library can sign with; a clear error otherwise (check it before training)."""
    private_key = Path(private_key)
    try:
        pem = private_key.read_bytes()
    except OSError as e:
        raise SigningError(f"cannot read signing key {private_key}: {e.strerror or e}") from e
    try:
        key = serialization.load_pem_private_key(pem, password.encode() if password is not None else None)
    except (ValueError, TypeError) as e:
        raise SigningError(f"signing key {private_key} is not a usable PEM private key: {e}") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name not in SUPPORTED_CURVES:
        raise SigningError(f"signing key {private_key} must be an elliptic-curve key on P-256, P-384 or P-521 "
                           f"(e.g. `openssl ecparam -name prime256v1 -genkey -noout -out key.pem`)")
    return key


def sign_directory(directory: str | Path, private_key: str | Path, *, password: str | None = None) -> str:
    """Sign every file of ``directory`` into ``directory/model.sig``; returns the signer's fingerprint."""
    directory = Path(directory)
    key = load_private_key(private_key, password=password)
    if not directory.is_dir():
        raise SigningError(f"{directory} is not a directory")
    partial = directory.with_name(f".{directory.name}.sig.partial")  # outside the directory being hashed
    try:
        signer = model_signing.signing.Config()  # type: ignore[no-untyped-call]
        signer.set_hashing_config(_hashing_config()).use_elliptic_key_signer(
            private_key=Path(private_key), password=password).sign(directory, partial)
        os.replace(partial, directory / SIGNATURE_FILENAME)
    except ValueError as e:
        partial.unlink(missing_ok=True)
        raise SigningError(f"cannot sign {directory}: {e}") from e
    return sha256_bytes(_public_pem(key.public_key()))


def public_key_pem(private_key: str | Path, *, password: str | None = None) -> bytes:
    """The PEM public key of a signing key (what verifiers are given)."""
    return _public_pem(load_private_key(private_key, password=password).public_key())


def _signed_payload(bundle: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The key hint and the in-toto statement of a model-signing bundle (not yet verified)."""
    hint = bundle.get("verificationMaterial", {}).get("publicKey", {}).get("hint") or None
    envelope = bundle["dsseEnvelope"]
    statement = json.loads(base64.b64decode(envelope["payload"], validate=True))
    if not isinstance(statement, dict) or not isinstance(statement.get("predicate"), dict):
        raise ValueError("the payload is not an in-toto statement")
    return hint, statement


def _present_files(directory: Path) -> dict[str, Path]:
    found = {}
    for root, dirs, files in os.walk(directory):
        for name in files + [d for d in dirs if (Path(root) / d).is_symlink()]:
            rel = (Path(root) / name).relative_to(directory).as_posix()
            if rel != SIGNATURE_FILENAME:
                found[rel] = Path(root) / name
    return found


def _content_diff(directory: Path, statement: dict[str, Any]) -> tuple[tuple[str, ...], ...] | None:
    """Changed, added and removed files against the signed list (``None`` if not a per-file sha256 list)."""
    predicate = statement["predicate"]
    serialization_ = predicate.get("serialization", {})
    if serialization_.get("method") != "files" or serialization_.get("hash_type") != "sha256":
        return None
    signed = {r["name"]: r["digest"] for r in predicate.get("resources", [])}
    present = _present_files(directory)
    changed = tuple(sorted(n for n in signed.keys() & present.keys()
                           if present[n].is_symlink() or sha256_file(present[n]) != signed[n]))
    return changed, tuple(sorted(present.keys() - signed.keys())), tuple(sorted(signed.keys() - present.keys()))


def verify_signature_over_digests(signature: bytes, present: Mapping[str, str],
                                  trusted_keys: Sequence[bytes]) -> SignatureCheck:
    """Like :func:`verify_directory_signature`, for a directory that is not on disk: ``present`` maps each of
    its files (relative POSIX path, the signature excluded) to its sha256 as streamed by the caller. The
    signature is checked by the library's own key verifier; the file list it authenticates is then compared with
    ``present``. Raises :class:`SigningError` only for an unusable trusted key or no keys."""
    if not trusted_keys:
        raise SigningError("no trusted public key to verify with")
    trusted = {key_fingerprint(pem): pem for pem in trusted_keys}
    try:
        hint, statement = _signed_payload(json.loads(signature))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        return SignatureCheck(False, "SignatureMalformed", f"{SIGNATURE_FILENAME} is not a model-signing bundle: {e}")
    if hint is not None and hint not in trusted:
        return SignatureCheck(False, "SignerUntrusted",
                              f"signed by key {hint}, which is not among the trusted keys "
                              f"({', '.join(sorted(trusted))})", signer_fingerprint=hint)
    predicate = statement["predicate"]
    serialization_ = predicate.get("serialization", {}) if isinstance(predicate, dict) else {}
    if serialization_.get("method") != "files" or serialization_.get("hash_type") != "sha256":
        return SignatureCheck(False, "SignatureMalformed",
                              f"{SIGNATURE_FILENAME} does not list each file's sha256 (the files serialization)")
    failure = SignatureCheck(False, "SignatureInvalid", "the signature does not verify with any trusted key")
    with tempfile.TemporaryDirectory(prefix="modelwarden-sig-") as scratch:
        # The library reads the bundle and keys from files; both are small (the bundle's size is bounded by the
        # caller).
        bundle_path = Path(scratch) / SIGNATURE_FILENAME
        bundle_path.write_bytes(signature)
        for fingerprint in [hint] if hint is not None else sorted(trusted):
            key_path = Path(scratch) / f"{fingerprint}.pub"
            key_path.write_bytes(trusted[fingerprint])
            try:
                # The verifier behind model_signing.verifying.Config.verify, without its hashing of a local
                # directory: it authenticates the DSSE payload only (model-signing 1.1, pinned in pyproject).
                sign_ec_key.Verifier(key_path).verify(sign_sigstore_pb.Signature.read(bundle_path))
            except (crypto_exceptions.InvalidSignature, ValueError, KeyError, TypeError) as e:
                failure = SignatureCheck(False, "SignatureInvalid", f"the signature does not verify with key "
                                         f"{fingerprint}: {e or type(e).__name__}", signer_fingerprint=hint)
                continue
            signed = {r["name"]: r["digest"] for r in predicate.get("resources", [])}
            changed = tuple(sorted(n for n in signed.keys() & present.keys() if present[n] != signed[n]))
            added = tuple(sorted(present.keys() - signed.keys()))
            removed = tuple(sorted(signed.keys() - present.keys()))
            if changed or added or removed:
                parts = [*(f"{n} changed" for n in changed), *(f"{n} added (not signed)" for n in added),
                         *(f"{n} removed" for n in removed)]
                return SignatureCheck(False, "ContentChanged", "files differ from what was signed: " + "; ".join(parts),
                                      signer_fingerprint=fingerprint, changed=changed, added=added, removed=removed)
            return SignatureCheck(True, "Verified", f"signature by key {fingerprint} verifies over every file",
                                  signer_fingerprint=fingerprint)
    return failure


def verify_directory_signature(directory: str | Path, trusted_keys: Sequence[bytes]) -> SignatureCheck:
    """Does ``directory/model.sig`` verify, by one of ``trusted_keys`` (PEM public keys), over exactly the
    files now in ``directory``? Raises :class:`SigningError` only for an unusable trusted key or no keys."""
    directory = Path(directory)
    if not trusted_keys:
        raise SigningError("no trusted public key to verify with")
    trusted = {key_fingerprint(pem): pem for pem in trusted_keys}
    signature = directory / SIGNATURE_FILENAME
    if not signature.is_file():
        return SignatureCheck(False, "SignatureMissing", f"{SIGNATURE_FILENAME} is missing: the artifact is unsigned")
    try:
        hint, statement = _signed_payload(json.loads(signature.read_bytes()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return SignatureCheck(False, "SignatureMalformed", f"{SIGNATURE_FILENAME} is not a model-signing bundle: {e}")
    if hint is not None and hint not in trusted:
        return SignatureCheck(False, "SignerUntrusted",
                              f"signed by key {hint}, which is not among the trusted keys "
                              f"({', '.join(sorted(trusted))})", signer_fingerprint=hint)
    candidates = [hint] if hint is not None else sorted(trusted)
    failure = SignatureCheck(False, "SignatureInvalid", "the signature does not verify with any trusted key")
    for fingerprint in candidates:
        # The library reads keys from files; trusted keys often come from a Secret or ConfigMap.
        with tempfile.NamedTemporaryFile(suffix=".pub") as key_file:
            key_file.write(trusted[fingerprint])
            key_file.flush()
            verifier = model_signing.verifying.Config()  # type: ignore[no-untyped-call]
            verifier.set_hashing_config(_hashing_config()).use_elliptic_key_verifier(public_key=key_file.name)
            try:
                verifier.verify(directory, signature)
            except crypto_exceptions.InvalidSignature:
                failure = SignatureCheck(False, "SignatureInvalid",
                                         f"the signature does not verify with key {fingerprint}: "
                                         "the signature or its signed file list was altered",
                                         signer_fingerprint=hint)
                continue
            except ValueError as e:
                if not str(e).startswith("Signature mismatch"):
                    failure = SignatureCheck(False, "SignatureInvalid", f"verification failed: {e}",
                                             signer_fingerprint=hint)
                    continue
                # The signature itself verified: its file list is authentic, so it may explain the difference.
                diff = _content_diff(directory, statement)
                if diff is None:
                    return SignatureCheck(False, "ContentChanged", str(e), signer_fingerprint=fingerprint)
                changed, added, removed = diff
                parts = [*(f"{n} changed" for n in changed), *(f"{n} added (not signed)" for n in added),
                         *(f"{n} removed" for n in removed)]
                return SignatureCheck(False, "ContentChanged",
                                      "files differ from what was signed: " + "; ".join(parts),
                                      signer_fingerprint=fingerprint, changed=changed, added=added,
                                      removed=removed)
            return SignatureCheck(True, "Verified", f"signature by key {fingerprint} verifies over every file",
                                  signer_fingerprint=fingerprint)
    return failure
