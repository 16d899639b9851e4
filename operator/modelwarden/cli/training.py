"""The offline subcommands of ``modelwarden``: train, verify-artifacts, audit-features, validate-metadata,
sign and verify-signature.

They need no cluster. Output is JSON by default; exit codes: 0 ok, 1 a check failed, 2 usage or input error.
The training modules (numpy, scikit-learn...) are imported only when one of these commands runs, so the
cluster commands stay quick to start.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class UsageError(Exception):
    """Bad arguments or unusable input: printed as `error: ...` with exit code 2."""


@dataclass(frozen=True)
class CheckOutcome:
    """A command's result and whether its check passed (exit code 0) or failed (1)."""

    result: dict[str, Any]
    ok: bool


def cmd_train(args: argparse.Namespace) -> CheckOutcome:
    from modelwarden.artifacts.signing import SigningError
    from modelwarden.training.config import ConfigError, load_config
    from modelwarden.training.data import DataError
    from modelwarden.training.pipeline import TrainingError, train

    try:
        config = load_config(args.config)
        if args.seed is not None:
            config = config.model_copy(update={"seed": args.seed})
        result = train(config, args.out, previous=args.previous, force=args.force, signing_key=args.signing_key)
    except (ConfigError, DataError, TrainingError, SigningError) as e:
        raise UsageError(str(e)) from e
    return CheckOutcome(result.to_dict(), result.ok)


def cmd_verify_artifacts(args: argparse.Namespace) -> CheckOutcome:
    from modelwarden.training.verify import InputError, load_contract, verify_artifacts

    try:
        contract = load_contract(args.contract) if args.contract else None
        result = verify_artifacts(args.directory, contract=contract, integrity_only=args.integrity_only,
                                  same_as=args.same_as)
    except InputError as e:
        raise UsageError(str(e)) from e
    return CheckOutcome(result, bool(result["ok"]))


def cmd_audit_features(args: argparse.Namespace) -> CheckOutcome:
    from pydantic import ValidationError

    from modelwarden.artifacts import FeatureContract, read_model_meta
    from modelwarden.training.audit import audit, read_rows
    from modelwarden.training.verify import InputError, load_contract

    try:
        if sum(x is not None for x in (args.contract, args.artifact, args.features)) != 1:
            raise InputError("give exactly one of --contract, --artifact and --features")
        if args.contract:
            contract = load_contract(args.contract)
        elif args.artifact:
            try:
                meta = read_model_meta(args.artifact)
            except (OSError, ValidationError) as e:
                raise InputError(f"cannot read the model's features from {args.artifact}: {e}") from e
            contract = FeatureContract(name=meta.feature_contract or args.artifact.name, features=meta.features)
        else:
            names = tuple(f.strip() for f in args.features.split(",") if f.strip())
            try:
                contract = FeatureContract(name="command-line", features=names)
            except ValidationError as e:
                raise InputError(f"--features: {e.errors()[0]['msg']}") from e
        result = audit(read_rows(args.input), contract, entity_column=args.entity_column,
                       threshold=args.threshold, max_listed=args.max_listed)
    except InputError as e:
        raise UsageError(str(e)) from e
    return CheckOutcome(result, result["status"] == "pass")


def cmd_validate_metadata(args: argparse.Namespace) -> CheckOutcome:
    from modelwarden.training.metadata import validate_metadata
    from modelwarden.training.verify import InputError

    try:
        result = validate_metadata(args.paths)
    except InputError as e:
        raise UsageError(str(e)) from e
    return CheckOutcome(result, bool(result["ok"]))


def cmd_sign(args: argparse.Namespace) -> CheckOutcome:
    from modelwarden.artifacts.signing import SigningError, public_key_pem, sign_directory
    from modelwarden.training.verify import InputError, artifact_directories

    try:
        directories = artifact_directories(args.directory)
        signed = [{"directory": str(d), "signerFingerprint": sign_directory(d, args.key)} for d in directories]
        if args.public_key_out is not None:
            args.public_key_out.write_bytes(public_key_pem(args.key))
    except (InputError, SigningError) as e:
        raise UsageError(str(e)) from e
    except OSError as e:
        raise UsageError(f"cannot write {args.public_key_out}: {e.strerror or e}") from e
    return CheckOutcome({"ok": True, "signed": signed}, True)


def read_public_keys(paths: list[Path]) -> list[bytes]:
    """The PEM public keys named on the command line, each checked to be usable."""
    from modelwarden.artifacts.signing import load_public_key

    keys = []
    for path in paths:
        try:
            pem = path.read_bytes()
        except OSError as e:
            raise UsageError(f"cannot read public key {path}: {e.strerror or e}") from e
        load_public_key(pem, what=f"public key {path}")
        keys.append(pem)
    return keys


def cmd_verify_signature(args: argparse.Namespace) -> CheckOutcome:
    from modelwarden.artifacts.signing import SigningError, verify_directory_signature
    from modelwarden.training.verify import InputError, artifact_directories

    try:
        keys = read_public_keys(args.public_key)
        checks = [(d, verify_directory_signature(d, keys)) for d in artifact_directories(args.directory)]
    except (InputError, SigningError) as e:
        raise UsageError(str(e)) from e
    ok = all(c.ok for _, c in checks)
    return CheckOutcome({"ok": ok, "artifacts": [{"directory": str(d), **c.to_dict()} for d, c in checks],
                         "problems": [f"{d}: {c.reason}: {c.message}" for d, c in checks if not c.ok]}, ok)


def _threshold(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not 0 <= number <= 1:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return number


def add_subcommands(sub: Any) -> None:
    """Register the offline subcommands on ``build_parser()``'s subparsers."""
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("-o", "--output", choices=["json", "yaml", "text"], default="json")

    p = sub.add_parser("train", parents=[output], help="train a model from a YAML config into artifact directories")
    p.add_argument("config", type=Path, help="training config (YAML; see examples/training/*.yaml)")
    p.add_argument("--out", type=Path, required=True, help="writes OUT/skops/ and OUT/onnx/")
    p.add_argument("--previous", type=Path, default=None,
                   help="the artifacts this version replaces (chains the manifest history)")
    p.add_argument("--seed", type=int, default=None, help="override the config's seed")
    p.add_argument("--force", action="store_true", help="replace existing OUT/<format>/ directories")
    p.add_argument("--signing-key", type=Path, default=None, metavar="KEY",
                   help="sign each artifact directory with this PEM private key (OpenSSF model-signing, model.sig)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sign", parents=[output],
                       help="sign an artifact directory (or each one of a training output) in the OpenSSF "
                            "model-signing format")
    p.add_argument("directory", type=Path)
    p.add_argument("--key", type=Path, required=True,
                   help="PEM elliptic-curve private key (P-256/384/521), e.g. from `openssl ecparam -genkey`")
    p.add_argument("--public-key-out", type=Path, default=None, metavar="PUB",
                   help="also write the matching public key (PEM) for verifiers")
    p.set_defaults(func=cmd_sign)

    p = sub.add_parser("verify-signature", parents=[output],
                       help="check model.sig against trusted public keys over every file of the directory")
    p.add_argument("directory", type=Path)
    p.add_argument("--public-key", type=Path, action="append", required=True, metavar="PUB",
                   help="a trusted PEM public key (repeat for several)")
    p.set_defaults(func=cmd_verify_signature)

    p = sub.add_parser("verify-artifacts", parents=[output],
                       help="check every sha256, the reports' schemas and status, and the feature contract")
    p.add_argument("directory", type=Path, help="an artifact directory or the output of `modelwarden train`")
    p.add_argument("--contract", type=Path, default=None,
                   help="feature contract (JSON/YAML: name, features, nFeatures; or an MLModel)")
    p.add_argument("--integrity-only", action="store_true",
                   help="do not fail on a bias or evaluation report whose status is fail")
    p.add_argument("--same-as", type=Path, default=None, metavar="DIR",
                   help="also require every file to have the same sha256 as in DIR (reproducibility)")
    p.set_defaults(func=cmd_verify_artifacts)

    p = sub.add_parser("audit-features", parents=[output],
                       help="share of entities whose features satisfy the contract (passes at >= 0.95)")
    p.add_argument("input", type=Path, help="entity rows: CSV with a header, or JSON")
    p.add_argument("--contract", type=Path, default=None, help="feature contract (JSON/YAML, or an MLModel)")
    p.add_argument("--artifact", type=Path, default=None, help="use the features of this artifact directory")
    p.add_argument("--features", default=None, help="comma-separated feature names")
    p.add_argument("--entity-column", default="entity_id")
    p.add_argument("--threshold", type=_threshold, default=0.95)
    p.add_argument("--max-listed", type=int, default=1000, help="list at most this many incomplete entities")
    p.set_defaults(func=cmd_audit_features)

    p = sub.add_parser("validate-metadata", parents=[output], help="check model_meta.json of artifact directories")
    p.add_argument("paths", type=Path, nargs="+", metavar="DIR")
    p.set_defaults(func=cmd_validate_metadata)
