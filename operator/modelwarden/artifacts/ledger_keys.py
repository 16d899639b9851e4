"""The decision ledger's signatures (issue 18): the operator's Ed25519 key signs each record's hash.

The private key lives in a Secret mounted into the operator (``MODELWARDEN_LEDGER_KEY_FILE``, PEM, PKCS#8); the
public keys are published in a ConfigMap (key id -> PEM) that verifiers read. A key id is the first 16 hex digits
of the sha256 of the raw public key. Shared by the operator (signing) and ``modelwarden ledger verify``.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

# The ConfigMap (in the operator's namespace) that publishes the ledger's public keys: key id -> PEM.
PUBLIC_KEYS_CONFIGMAP = "modelwarden-ledger-public-keys"


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class LedgerSigner:
    private: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> LedgerSigner:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, pem: bytes) -> LedgerSigner:
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("the ledger key must be an Ed25519 private key (PEM, PKCS#8)")
        return cls(key)

    def private_pem(self) -> bytes:
        return self.private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption())

    @property
    def key_id(self) -> str:
        return key_id(self.private.public_key())

    def public_pem(self) -> str:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    def sign(self, record_hash: str) -> str:
        return base64.b64encode(self.private.sign(record_hash.encode())).decode()


def checker(public_pems: Mapping[str, str]) -> Callable[[str, str, str], bool]:
    """``check(key_id, record_hash, signature)``: does a published key with that id verify the signature?"""
    keys: dict[str, Ed25519PublicKey] = {}
    for pem in public_pems.values():
        try:
            public = serialization.load_pem_public_key(pem.encode())
        except ValueError:
            continue
        if isinstance(public, Ed25519PublicKey):
            keys[key_id(public)] = public

    def check(kid: str, record_hash: str, signature: str) -> bool:
        public = keys.get(kid)
        if public is None:
            return False
        try:
            public.verify(base64.b64decode(signature, validate=True), record_hash.encode())
        except (InvalidSignature, ValueError):
            return False
        return True

    return check
