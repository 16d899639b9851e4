"""``python -m model_server``: serve one model version (settings from the environment).

``--help-env`` lists the environment variables; ``--check`` verifies and loads the artifact, prints the
result as JSON and exits 0 or 1 without serving (for an init container or a pipeline step).
"""

from __future__ import annotations

import argparse
import sys

import orjson

from model_server import logs
from model_server.config import ENV_VARS, ConfigError, Settings


def _help_env() -> str:
    width = max(map(len, ENV_VARS))
    return "\n".join(f"{name:<{width}}  {default:<18} {meaning}" for name, (default, meaning) in ENV_VARS.items())


def _check(settings: Settings) -> int:
    from model_server.loader import ArtifactRejected, ModelLoadError, load_artifact, warm_up

    try:
        model = load_artifact(settings)
        warm_up(model, 1)
    except (ArtifactRejected, ModelLoadError) as e:
        print(orjson.dumps({"ok": False, "kind": e.kind, "error": str(e)}).decode())
        return 1
    print(orjson.dumps({"ok": True, "sha256": model.sha256, "format": model.format, "estimator": model.estimator,
                        "fast_path": model.fast_path, "contract": model.contract.name,
                        "n_features": model.contract.n_features}).decode())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model_server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--help-env", action="store_true", help="list the environment variables and exit")
    parser.add_argument("--check", action="store_true", help="verify and load the artifact, then exit")
    args = parser.parse_args(argv)
    if args.help_env:
        print(_help_env())
        return 0
    try:
        settings = Settings.from_env()
    except ConfigError as e:
        print(orjson.dumps({"level": "ERROR", "component": "MODEL_SERVER", "event": "CONFIG_ERROR",
                            "message": str(e)}).decode(), file=sys.stderr)
        return 2
    logs.configure(settings.log_level)
    if args.check:
        return _check(settings)

    from model_server.app import ModelServer
    from model_server.transport import HttpServer

    return HttpServer(ModelServer(settings), settings).run()


if __name__ == "__main__":
    sys.exit(main())
