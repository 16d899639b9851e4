"""The peers of the server benchmark: MLServer with mlserver-sklearn (its defaults, and ``parallel_workers=0``)
and KServe's sklearn server, each installed from PyPI into its own virtualenv under
``$MODELWARDEN_CACHE/bench-venvs/`` (created on first use, reused while its requirements are unchanged), and
started on 127.0.0.1 from a joblib file of the same fitted estimator that model_server serves from skops or
ONNX. scikit-learn, numpy and joblib are pinned to the versions of this virtualenv, so every peer unpickles the
file with the code that wrote it (no ``InconsistentVersionWarning``) and runs the same ``predict_proba`` as the
in-process floor.

KServe's ``sklearnserver`` package is not published on PyPI (``pip download sklearnserver``: "No matching
distribution found"; KServe builds it into its container image from its repository), so the KServe peer is
``kserve.ModelServer`` from the published ``kserve`` package serving ``kserve_sklearn.py`` beside this file:
a ``kserve.Model`` that does what sklearnserver's model does on a request (see that file).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx

from localenv import cache_dir
from model_server.testing import LOOPBACK, free_port, wait_until

MLSERVER_VERSION = "1.7.1"
KSERVE_VERSION = "0.21.0"
# Same libraries as the in-process floor, at this virtualenv's versions.
PINNED_FROM_OURS = ("scikit-learn", "numpy", "joblib")
PIP_TIMEOUT = 1800.0
MODEL_NAME = "bench"


class PeerError(RuntimeError):
    """A peer could not be installed or started; the message says what failed and what the tool printed."""


@dataclass(frozen=True)
class Venv:
    name: str
    requirements: tuple[str, ...]

    def requirement_list(self) -> list[str]:
        return [*self.requirements, *(f"{d}=={version(d)}" for d in PINNED_FROM_OURS)]

    def path(self) -> Path:
        key = json.dumps([list(sys.version_info[:2]), self.requirement_list()])
        return cache_dir() / "bench-venvs" / f"{self.name}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


# MLServer 1.7 does not start with uvloop 0.22 or later.
MLSERVER_VENV = Venv(f"mlserver-{MLSERVER_VERSION}",
                     (f"mlserver=={MLSERVER_VERSION}", f"mlserver-sklearn=={MLSERVER_VERSION}", "uvloop<0.22"))
KSERVE_VENV = Venv(f"kserve-{KSERVE_VERSION}", (f"kserve=={KSERVE_VERSION}",))


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def ensure_venv(venv: Venv, progress: Callable[[str], None]) -> Path:
    """The virtualenv's directory, created and installed with pip on first use. ``PeerError`` with pip's own
    output when it cannot be installed."""
    directory = venv.path()
    marker = directory / "bench-installed.txt"
    if marker.exists():
        return directory
    python = directory / "bin" / "python"
    reqs = venv.requirement_list()
    progress(f"creating {directory} and installing {' '.join(reqs)} (a few minutes, once)")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(directory)], check=True, capture_output=True)
    try:
        proc = subprocess.run([str(python), "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
                               *reqs], capture_output=True, text=True, timeout=PIP_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise PeerError(f"pip install {' '.join(reqs)} did not finish in {PIP_TIMEOUT:g}s") from exc
    if proc.returncode != 0:
        raise PeerError(f"pip install {' '.join(reqs)} failed with exit code {proc.returncode}:\n"
                        f"{_tail(proc.stderr or proc.stdout)}")
    freeze = subprocess.run([str(python), "-m", "pip", "freeze"], check=True, capture_output=True, text=True)
    marker.write_text(freeze.stdout)
    return directory


def installed(venv_dir: Path, *names: str) -> str:
    """``name==version`` for each of ``names`` as installed in the virtualenv, from its pip freeze."""
    pins = {line.split("==")[0].lower().replace("_", "-"): line
            for line in (venv_dir / "bench-installed.txt").read_text().splitlines() if "==" in line}
    return ", ".join(pins.get(n, f"{n} (not installed)") for n in names)


@dataclass(frozen=True)
class Launch:
    """How to start one peer and what to send it."""

    argv: list[str]
    cwd: Path
    env: dict[str, str]
    ready_url: str
    infer_url: str
    body: bytes  # one row
    probability: Callable[[httpx.Response], float]  # P(class 1) from the response
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),)


def mlserver(venv_dir: Path, model_file: Path, work: Path, row: list[float], *,
             parallel_workers: int | None) -> Launch:
    """``mlserver start`` on a model repository with one model (``mlserver_sklearn.SKLearnModel``). Settings
    are MLServer's defaults except the listening address and ports (HTTP, gRPC and metrics all on 127.0.0.1),
    the scratch directories, and ``parallel_workers`` when given. The request is OIP v2: one FP64 ``[1, 28]``
    tensor, asking for the ``predict_proba`` output."""
    repo = work / f"mlserver-pw{'default' if parallel_workers is None else parallel_workers}"
    (repo / MODEL_NAME).mkdir(parents=True, exist_ok=True)
    http_port = free_port()
    settings: dict[str, Any] = {"host": LOOPBACK, "http_port": http_port, "grpc_port": free_port(),
                                "metrics_port": free_port(), "metrics_dir": str(repo / ".metrics"),
                                "environments_dir": str(repo / ".envs")}
    if parallel_workers is not None:
        settings["parallel_workers"] = parallel_workers
    (repo / "settings.json").write_text(json.dumps(settings, indent=2))
    (repo / MODEL_NAME / "model-settings.json").write_text(json.dumps(
        {"name": MODEL_NAME, "implementation": "mlserver_sklearn.SKLearnModel",
         "parameters": {"uri": str(model_file), "version": "1.0.0"}}, indent=2))
    base = f"http://{LOOPBACK}:{http_port}"
    body = json.dumps({"inputs": [{"name": "input-0", "shape": [1, len(row)], "datatype": "FP64", "data": row}],
                       "outputs": [{"name": "predict_proba"}]})
    return Launch(argv=[str(venv_dir / "bin" / "mlserver"), "start", str(repo)], cwd=repo, env={},
                  ready_url=f"{base}/v2/models/{MODEL_NAME}/ready", infer_url=f"{base}/v2/models/{MODEL_NAME}/infer",
                  body=body.encode(), probability=lambda r: float(r.json()["outputs"][0]["data"][1]))


def kserve(venv_dir: Path, model_file: Path, work: Path, row: list[float]) -> Launch:
    """``kserve_sklearn.py`` (KServe's ModelServer serving sklearnserver's model) with ``PREDICT_PROBA=true``;
    the request is KServe's default protocol, v1: ``{"instances": [[28 numbers]]}``. ``model_file`` must be
    the only model file in its directory."""
    http_port = free_port()
    base = f"http://{LOOPBACK}:{http_port}"
    argv = [str(venv_dir / "bin" / "python"), str(Path(__file__).with_name("kserve_sklearn.py")),
            "--model_dir", str(model_file.parent), "--model_name", MODEL_NAME, "--http_port", str(http_port)]
    return Launch(argv=argv, cwd=work, env={"PREDICT_PROBA": "true"}, ready_url=f"{base}/v1/models/{MODEL_NAME}",
                  infer_url=f"{base}/v1/models/{MODEL_NAME}:predict", body=json.dumps({"instances": [row]}).encode(),
                  probability=lambda r: float(r.json()["predictions"][0][1]))


def kserve_v2_binary(venv_dir: Path, model_file: Path, work: Path, row: list[float]) -> Launch:
    """The same KServe server, asked through OIP v2 the way the KServe SDK asks by default: one FP64
    ``[1, 28]`` tensor as binary tensor data after the JSON header (``Inference-Header-Content-Length``)."""
    launch = kserve(venv_dir, model_file, work, row)
    base = launch.infer_url.split("/v1/")[0]
    body, headers = binary_request("input-0", row)
    return Launch(argv=launch.argv, cwd=work, env=launch.env, ready_url=f"{base}/v2/models/{MODEL_NAME}/ready",
                  infer_url=f"{base}/v2/models/{MODEL_NAME}/infer", body=body, headers=headers,
                  probability=lambda r: float(r.json()["outputs"][0]["data"][1]))


def binary_request(name: str, row: list[float], parameters: dict[str, Any] | None = None) -> tuple[
        bytes, tuple[tuple[str, str], ...]]:
    """An OIP request with one FP64 ``[1, len(row)]`` tensor in the binary tensor data extension."""
    raw = struct.pack(f"<{len(row)}d", *row)
    header = json.dumps({"inputs": [{"name": name, "shape": [1, len(row)], "datatype": "FP64",
                                     "parameters": {"binary_data_size": len(raw)}}],
                         **({"parameters": parameters} if parameters else {})}).encode()
    return header + raw, (("Content-Type", "application/octet-stream"),
                          ("Inference-Header-Content-Length", str(len(header))))


@contextmanager
def serve(launch: Launch, *, log_path: Path, cpu: str | None, timeout: float = 120.0) -> Iterator[None]:
    """Start the peer (pinned to ``cpu``, which its worker processes inherit) in its own process group and wait
    until the model is ready; on exit, SIGTERM to that group, then SIGKILL to whatever is left of it."""
    argv = ["taskset", "-c", cpu, *launch.argv] if cpu is not None else launch.argv
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    with log_path.open("ab") as log:
        proc = subprocess.Popen(argv, cwd=launch.cwd, env={**env, **launch.env}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def ready() -> bool:
            if proc.poll() is not None:
                raise PeerError(f"{launch.argv[0]} exited with {proc.returncode}:\n"
                                f"{_tail(log_path.read_text(errors='replace'))}")
            return httpx.get(launch.ready_url, timeout=2).status_code == 200

        try:
            wait_until(ready, timeout, f"{' '.join(launch.argv[:2])} to be ready")
        except TimeoutError as exc:
            raise PeerError(f"{exc}:\n{_tail(log_path.read_text(errors='replace'))}") from exc
        yield
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # Worker processes left behind by the peer: the group outlives its leader while it has members.
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


@dataclass(frozen=True)
class Peer:
    label: str
    venv: Venv
    launch: Callable[[Path, Path, Path, list[float]], Launch]  # (venv dir, model file, scratch dir, row)


PEERS: dict[str, Peer] = {
    "mlserver": Peer(f"MLServer {MLSERVER_VERSION} + mlserver-sklearn (defaults: parallel_workers=1)", MLSERVER_VENV,
                     lambda venv, model, work, row: mlserver(venv, model, work, row, parallel_workers=None)),
    "mlserver-pw0": Peer(f"MLServer {MLSERVER_VERSION} + mlserver-sklearn (parallel_workers=0)", MLSERVER_VENV,
                         lambda venv, model, work, row: mlserver(venv, model, work, row, parallel_workers=0)),
    "kserve": Peer(f"KServe {KSERVE_VERSION} ModelServer + sklearnserver's model", KSERVE_VENV, kserve),
    "kserve-v2-binary": Peer(f"KServe {KSERVE_VERSION} ModelServer + sklearnserver's model, OIP v2 binary tensor",
                             KSERVE_VENV, kserve_v2_binary),
}
