"""Container images for the real node, built without any registry.

* a **base image** made from Debian packages: ``debootstrap`` of the host's Debian release with its own
  ``python3`` (no Docker Hub);
* the **operator** and **model server** images, built for real from ``operator/Dockerfile`` and
  ``model_server/Dockerfile`` by ``buildah`` (Debian package) with that base as their ``PYTHON_IMAGE``
  build argument; their ``pip install`` steps reach PyPI exactly as the host's pip does;
* a **sandbox ("pause") image**: a tiny static Go program that sleeps until signalled.

Each image is written once as a docker-archive under ``$MODELWARDEN_CACHE/images``, named by a hash of its
inputs (a changed Dockerfile, source file or base rebuilds it; anything else is reused), and imported into
the node's containerd by :mod:`localenv.node`.

    python -m localenv.images build     # build (or reuse) all of them; prints each archive
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from localenv._proc import REPO_ROOT, EnvironmentStartError, cache_dir, progress, require_debian_package

# The one image reference each image is known by: the Dockerfiles document them, the operator's
# MODELWARDEN_SERVER_IMAGE and the chart's values default to them, and the local build tags exactly these.
SERVER_IMAGE = "ghcr.io/modelwarden/model-server:0.1.0"
OPERATOR_IMAGE = "ghcr.io/modelwarden/operator:0.1.0"
# Named in containerd's sandbox_image; local only (a registry never sees it).
PAUSE_IMAGE = "localhost/modelwarden/pause:1.0"
BASE_IMAGE_REPO = "localhost/modelwarden/debian-python"
# What the base needs: python3 with venv (Dockerfiles run `python -m venv`, so `python` too), CA certificates for
# pip, and useradd/groupadd for the Dockerfiles' non-root user.
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates", "passwd")

PAUSE_SOURCE = """\
// The pod sandbox: holds the pod's namespaces and does nothing else until it is told to stop.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	<-stop
}
"""


@dataclass(frozen=True)
class BuiltImage:
    reference: str
    archive: Path


def images_dir() -> Path:
    return cache_dir() / "images"


def _debian_release() -> str:
    fields = dict(line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line)
    codename = fields.get("VERSION_CODENAME", "").strip('"')
    if fields.get("ID", "").strip('"') != "debian" or not codename:
        raise EnvironmentStartError("the local images are made from this machine's Debian release; /etc/os-release "
                                    "does not name one")
    return codename


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:16]


def _tree_bytes(*paths: Path) -> bytes:
    """Every file under ``paths`` (relative name and content), in a stable order; caches and bytecode left out."""
    out = []
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            if "__pycache__" in f.parts or f.suffix == ".pyc":
                continue
            out.append(str(f.relative_to(REPO_ROOT)).encode() + b"\0" + f.read_bytes())
    return b"\0\0".join(out)


class Builder:
    """buildah with its own storage under the cache; every RUN uses the host network (no bridge, no NAT)."""

    def __init__(self) -> None:
        self.buildah = require_debian_package("buildah", "buildah")
        self.root = images_dir() / "buildah"

    def _cmd(self, *args: str | os.PathLike[str]) -> list[str]:
        return [str(self.buildah), "--root", str(self.root / "storage"), "--runroot", str(self.root / "run"),
                "--storage-driver", "overlay", *(os.fspath(a) for a in args)]

    def run(self, *args: str | os.PathLike[str], what: str, show: bool = False) -> str:
        done = subprocess.run(self._cmd(*args), text=True, check=False,
                              stdout=None if show else subprocess.PIPE,
                              stderr=None if show else subprocess.STDOUT)
        if done.returncode != 0:
            raise EnvironmentStartError(f"{what}: buildah {' '.join(map(str, args[:2]))} exited {done.returncode}"
                                        + ("; see its output above" if show else f":\n{done.stdout[-3000:]}"))
        return (done.stdout or "").strip()

    def export(self, reference: str, archive: Path) -> None:
        tmp = archive.with_suffix(".partial")
        tmp.unlink(missing_ok=True)
        self.run("push", "--quiet", reference, f"docker-archive:{tmp}:{reference}", what=f"exporting {reference}")
        tmp.rename(archive)


def _cached(name: str, key: str) -> Path:
    return images_dir() / f"{name}-{key}.tar"


def _drop_stale(name: str, keep: Path) -> None:
    for old in images_dir().glob(f"{name}-*.tar"):
        if old != keep:
            old.unlink(missing_ok=True)


def build_base(builder: Builder) -> BuiltImage:
    release = _debian_release()
    mirror = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
    key = _digest(release.encode(), mirror.encode(), " ".join(BASE_PACKAGES).encode())
    reference = f"{BASE_IMAGE_REPO}:{release}-{key}"
    archive = _cached("base", key)
    if archive.exists():
        _ensure_loaded(builder, reference, archive)
        return BuiltImage(reference, archive)
    debootstrap = require_debian_package("debootstrap", "debootstrap", ["/usr/sbin"])
    rootfs = images_dir() / f"base-{key}.rootfs"
    if rootfs.exists():
        shutil.rmtree(rootfs)
    rootfs.mkdir(parents=True)
    started = time.monotonic()
    progress("images", f"debootstrap {release} ({', '.join(BASE_PACKAGES)}) from {mirror} — once, a few minutes")
    done = subprocess.run([str(debootstrap), "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                           release, str(rootfs), mirror], check=False, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        raise EnvironmentStartError(f"debootstrap of {release} failed ({done.returncode}):\n{done.stdout[-3000:]}")
    # Apt's package lists and downloaded .debs are not part of a base image.
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for f in (rootfs / cache).glob("*"):
            if f.is_file():
                f.unlink()
    python = subprocess.run(["chroot", str(rootfs), "python3", "--version"], capture_output=True, text=True,
                            check=False).stdout.strip()
    progress("images", f"debootstrap done in {time.monotonic() - started:.0f}s ({python}); committing the base")
    container = builder.run("from", "scratch", what="creating the base image")
    try:
        builder.run("copy", container, f"{rootfs}/", "/", what="copying the base root filesystem")
        builder.run("config", "--env", "LANG=C.UTF-8", "--cmd", "python3", container, what="configuring the base")
        builder.run("commit", "--quiet", container, reference, what="committing the base")
    finally:
        builder.run("rm", container, what="removing the working container")
    shutil.rmtree(rootfs)
    builder.export(reference, archive)
    _drop_stale("base", archive)
    progress("images", f"base {reference} ready in {time.monotonic() - started:.0f}s")
    return BuiltImage(reference, archive)


def _ensure_loaded(builder: Builder, reference: str, archive: Path) -> None:
    """The archive is the cache; buildah's own storage may have been wiped: load it back (the archive keeps its tag)."""
    if subprocess.run(builder._cmd("inspect", "--type", "image", reference), capture_output=True,
                      check=False).returncode != 0:
        builder.run("pull", "--quiet", f"docker-archive:{archive}", what=f"loading {reference}")


def _host_pip_mounts() -> list[str]:
    """Let the image's `pip install` reach PyPI the way the host's pip does: the host's pip configuration and CA
    bundle (a TLS-inspecting proxy's CA lives there on some CI machines), read-only, during the build only."""
    mounts = []
    for path in ("/etc/pip.conf", "/etc/ssl/certs/ca-certificates.crt"):
        if Path(path).is_file():
            mounts += ["--volume", f"{path}:{path}:ro"]
    return mounts


def build_dockerfile(builder: Builder, name: str, dockerfile: Path, reference: str, base: BuiltImage,
                     inputs: tuple[Path, ...]) -> BuiltImage:
    key = _digest(base.reference.encode(), _tree_bytes(dockerfile, *inputs))
    archive = _cached(name, key)
    if archive.exists():
        progress("images", f"{reference}: cached ({archive.name})")
        return BuiltImage(reference, archive)
    started = time.monotonic()
    progress("images", f"building {reference} from {dockerfile.relative_to(REPO_ROOT)} on {base.reference} "
             "(buildah; pip install from PyPI — a few minutes cold)")
    # --layers: a step whose inputs did not change (the server's pip install of its dependencies) is reused.
    builder.run("bud", "--network", "host", "--pull-never", "--layers=true", "--format", "docker",
                *_host_pip_mounts(), "--build-arg", f"PYTHON_IMAGE={base.reference}",
                "-f", dockerfile, "-t", reference, REPO_ROOT, what=f"building {reference}", show=True)
    builder.export(reference, archive)
    _drop_stale(name, archive)
    # The previous build of this reference is untagged now; its layers would pile up in buildah's storage.
    try:
        builder.run("rmi", "--prune", what="pruning untagged images")
    except EnvironmentStartError as e:  # a build beside this one, or one killed midway, still uses a layer
        progress("images", f"left untagged images for the next build to prune: {str(e).splitlines()[0]}")
    progress("images", f"{reference} built in {time.monotonic() - started:.0f}s")
    return BuiltImage(reference, archive)


def build_pause(builder: Builder) -> BuiltImage:
    key = _digest(PAUSE_SOURCE.encode())
    archive = _cached("pause", key)
    if archive.exists():
        return BuiltImage(PAUSE_IMAGE, archive)
    go = shutil.which("go")
    if not go:
        raise EnvironmentStartError("go is not installed; the sandbox image is compiled from a few lines of Go")
    work = images_dir() / "pause-src"
    work.mkdir(parents=True, exist_ok=True)
    (work / "main.go").write_text(PAUSE_SOURCE)
    progress("images", "compiling the sandbox (pause) binary")
    done = subprocess.run([go, "build", "-trimpath", "-ldflags", "-s -w", "-o", "pause", "main.go"], cwd=work,
                          env={**os.environ, "CGO_ENABLED": "0", "GO111MODULE": "off"}, capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise EnvironmentStartError(f"compiling the pause binary failed:\n{done.stderr}")
    container = builder.run("from", "scratch", what="creating the pause image")
    try:
        builder.run("copy", "--chmod", "0755", container, work / "pause", "/pause", what="copying pause")
        builder.run("config", "--entrypoint", '["/pause"]', "--user", "65535:65535", container,
                    what="configuring pause")
        builder.run("commit", "--quiet", container, PAUSE_IMAGE, what="committing pause")
    finally:
        builder.run("rm", container, what="removing the working container")
    builder.export(PAUSE_IMAGE, archive)
    _drop_stale("pause", archive)
    return BuiltImage(PAUSE_IMAGE, archive)


def build_all() -> list[BuiltImage]:
    """The sandbox, server and operator images (building the Debian base first if either needs it)."""
    images_dir().mkdir(parents=True, exist_ok=True)
    builder = Builder()
    pause = build_pause(builder)
    base = build_base(builder)
    sources = (REPO_ROOT / "pyproject.toml", REPO_ROOT / "README.md", REPO_ROOT / "operator" / "modelwarden",
               REPO_ROOT / "model_server")
    server = build_dockerfile(builder, "model-server", REPO_ROOT / "model_server" / "Dockerfile", SERVER_IMAGE,
                              base, sources)
    operator = build_dockerfile(builder, "operator", REPO_ROOT / "operator" / "Dockerfile", OPERATOR_IMAGE,
                                base, sources)
    return [pause, server, operator]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localenv.images", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["build"])
    parser.parse_args(argv)
    try:
        for image in build_all():
            print(f"{image.reference}\t{image.archive}")
    except EnvironmentStartError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
