"""Process, port and waiting helpers shared by the local environment's components."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


class EnvironmentStartError(RuntimeError):
    """A real component of the local environment could not be installed or started.

    Tests never skip on this: the run fails with this message, which says what failed and where its log is.
    """


def cache_dir() -> Path:
    """Where built binaries and long-lived state live: outside the repository, reused across runs."""
    explicit = os.environ.get("MODELWARDEN_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "modelwarden"


def progress(component: str, message: str) -> None:
    print(f"[{component} {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text[-lines:])


def start_process(
    args: Sequence[str | os.PathLike[str]],
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start a long-running server detached from our process group, its output appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [os.fspath(a) for a in args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still answers kill(0); reap it if it is ours.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def stop_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; a process that is already gone is fine."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return
            time.sleep(0.05)


def wait_until(
    check: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    log_path: Path | None = None,
    process: subprocess.Popen[bytes] | None = None,
    interval: float = 0.2,
) -> None:
    """Poll ``check`` until it is true; fail with the log's tail if time runs out or the process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = log_tail(log_path) if log_path else ""
            raise EnvironmentStartError(f"{what}: process exited with {process.returncode}.\n{tail}")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(interval)
    tail = f"\nlast lines of {log_path}:\n{log_tail(log_path)}" if log_path else ""
    raise EnvironmentStartError(f"{what}: not ready after {timeout:.0f}s.{tail}")


def run(args: Sequence[str | os.PathLike[str]], what: str, cwd: str | None = None) -> str:
    """Run a short command; a failure becomes an EnvironmentStartError naming the command and its output."""
    try:
        done = subprocess.run(
            [os.fspath(a) for a in args], capture_output=True, text=True, check=False, cwd=cwd, timeout=300
        )
    except FileNotFoundError as e:
        raise EnvironmentStartError(f"{what}: {e.filename} is not installed") from e
    if done.returncode != 0:
        cmd = " ".join(os.fspath(a) for a in args)
        raise EnvironmentStartError(f"{what}: `{cmd}` exited {done.returncode}:\n{done.stderr or done.stdout}")
    return str(done.stdout)


def require_debian_package(binary: str, package: str, search_path: Sequence[str] = ()) -> Path:
    """Find ``binary``; install Debian's ``package`` if it is missing (root, as on CI), else fail clearly."""
    for candidate in [*(Path(p) / binary for p in search_path), shutil.which(binary)]:
        if candidate and Path(candidate).exists():
            return Path(candidate)
    script = REPO_ROOT / "hack" / "install-system-deps.sh"
    progress("deps", f"{binary} missing; installing Debian package {package}")
    run(["bash", script, package], f"installing {package}")
    for candidate in [*(Path(p) / binary for p in search_path), shutil.which(binary)]:
        if candidate and Path(candidate).exists():
            return Path(candidate)
    raise EnvironmentStartError(f"{binary} still not found after installing {package}")
