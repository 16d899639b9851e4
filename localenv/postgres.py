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

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        run(_as_server_user([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-w", "-t", "60",
                             "-l", str(self.root / "server.log"), *args]), f"pg_ctl {args[0]}")

    def start(self) -> None:
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=on"
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


def start() -> Postgres:
    """initdb a fresh cluster (trust auth on loopback only) and start it on a free port."""
    bin_dir = _pg_bin()
    root = Path(tempfile.mkdtemp(prefix="modelwarden-pg-"))
    root.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    pg = Postgres(root=root, port=free_port(), bin_dir=bin_dir)
    try:
        run(_as_server_user([str(bin_dir / "initdb"), "-D", str(pg.data_dir), "-U", "postgres",
                             "--auth=trust", "--encoding=UTF8", "--no-instructions"]), "initdb",
            cwd=str(root))
        pg.start()
    except (EnvironmentStartError, subprocess.SubprocessError) as e:
        log = root / "server.log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        raise EnvironmentStartError(f"PostgreSQL did not start: {e}\n{tail}") from e
    return pg
