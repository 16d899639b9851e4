"""Our small Go tools (``hack/<name>/``, each a module pinning its dependencies), built from the Go module proxy
by ``hack/build-go-tool.sh`` and cached outside the repository: ``kstatus-check`` (the kstatus library Flux is
built on) and ``argocd-health-check`` (Argo CD's Lua runtime, gopher-lua)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from localenv._proc import REPO_ROOT, EnvironmentStartError, cache_dir, progress

TOOLS = ("kstatus-check", "argocd-health-check")


def build(name: str, timeout: float = 1800) -> Path:
    """The tool's binary, built on first use (progress on stderr); raises EnvironmentStartError saying why not."""
    if name not in TOOLS:
        raise ValueError(f"unknown Go tool {name!r}; known: {', '.join(TOOLS)}")
    env = {**os.environ, "MODELWARDEN_CACHE": str(cache_dir())}
    try:
        done = subprocess.run(["bash", str(REPO_ROOT / "hack" / "build-go-tool.sh"), name], env=env, check=False,
                              stdout=subprocess.PIPE, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise EnvironmentStartError(f"building {name} took over {e.timeout:.0f}s; run "
                                    f"`bash hack/build-go-tool.sh {name}` by hand to see its progress") from e
    lines = done.stdout.strip().splitlines()
    path = Path(lines[-1]) if lines else Path()
    if done.returncode != 0 or not lines or not path.is_file():
        raise EnvironmentStartError(f"building {name} failed (hack/build-go-tool.sh exited {done.returncode}); "
                                    "see its output above")
    return path


def main() -> None:
    for name in TOOLS:
        progress("go-tools", f"{name}: {build(name)}")


if __name__ == "__main__":
    main()
