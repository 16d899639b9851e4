"""KServe's sklearn model server, for the benchmark; run by the kserve virtualenv's python (see ``__init__.py``).

    python kserve_sklearn.py --model_dir DIR [--model_name NAME] [--http_port PORT] [other kserve.ModelServer flags]

KServe's ``sklearnserver`` package is not on PyPI (KServe builds it into its container image from its
repository), so this is its serving path put together from the published ``kserve`` package: a ``kserve.Model``
that loads the one ``.joblib``/``.pkl``/``.pickle`` file in ``--model_dir`` with joblib, and on each request
turns the payload into an array with ``kserve.utils.utils.get_predict_input``, calls the estimator's
``predict_proba`` (``PREDICT_PROBA=true``) or ``predict``, and answers with ``get_predict_response``. It is served
by ``kserve.ModelServer`` with KServe's defaults and command line, except where KServe would listen beyond
loopback: the REST server binds 127.0.0.1 (KServe hard-codes 0.0.0.0), and gRPC is off unless
``--enable_grpc true`` is passed (its server hard-codes ``[::]``); the benchmark drives REST only.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import joblib  # type: ignore[import-untyped]
import kserve  # type: ignore[import-not-found]
import uvicorn
from kserve.errors import InferenceError, ModelMissingError  # type: ignore[import-not-found]
from kserve.utils.utils import get_predict_input, get_predict_response  # type: ignore[import-not-found]

LOOPBACK = "127.0.0.1"
MODEL_FILE_SUFFIXES = (".joblib", ".pkl", ".pickle")


class _LoopbackConfig(uvicorn.Config):
    """uvicorn's configuration with the host forced to loopback: kserve's REST server builds its own."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["host"] = LOOPBACK
        super().__init__(*args, **kwargs)


class SKLearnModel(kserve.Model):  # type: ignore[misc]
    def __init__(self, name: str, model_dir: Path) -> None:
        super().__init__(name)
        self.model_dir = model_dir
        self.predict_proba = os.environ.get("PREDICT_PROBA", "false").lower() == "true"
        self.ready = False

    def load(self) -> bool:
        files = sorted(p for p in self.model_dir.iterdir() if p.is_file() and p.suffix in MODEL_FILE_SUFFIXES)
        if not files:
            raise ModelMissingError(str(self.model_dir))
        if len(files) > 1:
            raise RuntimeError(f"exactly one model file expected in {self.model_dir}, found {files}")
        self.estimator = joblib.load(files[0])
        self.ready = True
        return True

    def predict(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
        try:
            instances = get_predict_input(payload)
            if self.predict_proba and hasattr(self.estimator, "predict_proba"):
                result = self.estimator.predict_proba(instances)
            else:
                result = self.estimator.predict(instances)
            return get_predict_response(payload, result, self.name)
        except Exception as exc:
            raise InferenceError(str(exc)) from exc


def main() -> None:
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--model_dir", type=Path, required=True, help="directory holding the one model file")
    args, _ = parser.parse_known_args()
    uvicorn.Config = _LoopbackConfig  # type: ignore[misc]
    model = SKLearnModel(args.model_name, args.model_dir)
    model.load()
    kserve.ModelServer(enable_grpc=args.enable_grpc and "--enable_grpc" in sys.argv).start([model])


if __name__ == "__main__":
    main()
