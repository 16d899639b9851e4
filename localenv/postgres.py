"""A real, throw-away PostgreSQL server (Debian's package) on loopback.

``initdb`` refuses to run as root, so as root the server runs as the package's ``postgres`` user in a
world-traversable temporary directory it owns.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from localenv._proc import EnvironmentStartError, free_port, require_debian_package, run


def _pg_bin() -> Path:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    search = [str(p) for p in candidates]
    initdb = require_debian_package("initdb", "postgresql", search_path=search)
    return initdb.parent


def _as_server_user(args: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *args]
    return args


@dataclass
class Postgres:
    root: Path
    port: int
    bin_dir: Path
    # Besides loopback: an address of the environment's own (the node's bridge), for pods to reach.
    also_listen_on: str | None = None

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def add_user(self, name: str, password: str) -> str:
        """A login role owning a database of its name; its DSN over the non-loopback address (see :func:`start`)."""
        psql = [str(self.bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                "-v", "ON_ERROR_STOP=1", "-q"]
        run([*psql, "-c", f"CREATE ROLE \"{name}\" LOGIN PASSWORD '{password}'"], "psql create role")
        run([*psql, "-c", f"CREATE DATABASE \"{name}\" OWNER \"{name}\""], "psql create database")
        return f"postgresql://{name}:{password}@{self.also_listen_on or '127.0.0.1'}:{self.port}/{name}"

    def _ctl(self, *args: str) -> None:
        run(_as_server_user([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-w", "-t", "60",
                             "-l", str(self.root / "server.log"), *args]), f"pg_ctl {args[0]}")

    def start(self) -> None:
        listen = ",".join(a for a in ("127.0.0.1", self.also_listen_on) if a)
        opts = f"-c listen_addresses={listen} -p {self.port} -k {self.root} -c fsync=on"
        self._ctl("start", "-o", opts)

    def stop(self, mode: str = "fast") -> None:
        self._ctl("stop", "-m", mode)

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        with contextlib.suppress(EnvironmentStartError):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def start(*, pods: tuple[str, str] | None = None) -> Postgres:
    """initdb a fresh cluster (trust auth on loopback only) and start it on a free port.

    ``pods=(address, network)`` also listens on ``address`` (the node's bridge) and lets clients from ``network``
    (the pod range) in with a password only (:meth:`Postgres.add_user`)."""
    bin_dir = _pg_bin()
    root = Path(tempfile.mkdtemp(prefix="modelwarden-pg-"))
    root.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    pg = Postgres(root=root, port=free_port(), bin_dir=bin_dir, also_listen_on=pods[0] if pods else None)
    try:
        run(_as_server_user([str(bin_dir / "initdb"), "-D", str(pg.data_dir), "-U", "postgres",
                             "--auth=trust", "--encoding=UTF8", "--no-instructions"]), "initdb",
            cwd=str(root))
        if pods:
            with (pg.data_dir / "pg_hba.conf").open("a") as hba:
                hba.write(f"host all all {pods[1]} scram-sha-256\n")
        pg.start()
    except (EnvironmentStartError, subprocess.SubprocessError) as e:
        log = root / "server.log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        raise EnvironmentStartError(f"PostgreSQL did not start: {e}\n{tail}") from e
    return pg
