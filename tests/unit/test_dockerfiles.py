"""Static checks of the two images' Dockerfiles (no Docker engine needed): multi-stage, base images pinned (no
`latest`, no bare name), a non-root numeric USER last, every COPY'd path present in the repository, and the server
image installing exactly the server's own dependencies, written as pyproject.toml writes them."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {"operator": ROOT / "operator" / "Dockerfile", "model_server": ROOT / "model_server" / "Dockerfile"}


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages) of a Dockerfile; continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines()
                                         if not line.lstrip().startswith("#")))
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        keyword, _, rest = line.strip().partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default.strip('"')
        elif keyword == "FROM":
            parts = rest.split()
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], parts[0])
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(image=image, name=name))
        else:
            assert stages, f"{path}: {keyword} before FROM"
            stages[-1].instructions.append((keyword, rest))
    return args, stages


@pytest.mark.parametrize("which", list(DOCKERFILES))
def test_multi_stage_pinned_non_root(which: str) -> None:
    _, stages = parse(DOCKERFILES[which])
    assert len(stages) >= 2, "multi-stage: build tools and caches stay out of the final image"
    names = {s.name for s in stages if s.name}
    for stage in stages:
        if stage.image in names:
            continue
        image = stage.image.split("@")[0]
        tag = image.rpartition(":")[2] if ":" in image.rpartition("/")[2] else ""
        assert tag and tag != "latest", f"{stage.image}: pin the base image to an exact tag (and by digest in CI)"
        assert re.search(r"\d+\.\d+\.\d+", tag), f"{stage.image}: pin an exact release, not a moving tag"
    final = stages[-1]
    users = [rest for keyword, rest in final.instructions if keyword == "USER"]
    assert users, "the final stage sets a USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, f"USER {users[-1]}: numeric and non-root (runAsNonRoot can check it)"
    assert not gid or (gid.isdigit() and int(gid) != 0)
    last_user = max(i for i, (keyword, _) in enumerate(final.instructions) if keyword == "USER")
    assert all(k != "RUN" for k, _ in final.instructions[last_user:]), "nothing runs as root after USER"
    entry = [rest for keyword, rest in final.instructions if keyword == "ENTRYPOINT"]
    assert entry and entry[-1].startswith("["), "exec-form ENTRYPOINT: the process gets SIGTERM itself"


@pytest.mark.parametrize("which", list(DOCKERFILES))
def test_copied_paths_exist(which: str) -> None:
    _, stages = parse(DOCKERFILES[which])
    copied = 0
    for stage in stages:
        for keyword, rest in stage.instructions:
            if keyword not in ("COPY", "ADD") or "--from=" in rest:
                continue
            assert keyword == "COPY", "ADD fetches and unpacks implicitly; use COPY"
            *sources, _destination = rest.split()
            for source in sources:
                assert (ROOT / source).exists(), f"{which}/Dockerfile copies {source}, which is not in the repository"
                copied += 1
    assert copied >= 3


def _pip_requirements(path: Path) -> list[str]:
    text = re.sub(r"\\\n", " ", path.read_text())
    return re.findall(r'"([^"]+)"', " ".join(re.findall(r"pip install(?! --no-deps)([^&]*)", text)))


def test_server_image_installs_exactly_what_the_server_imports() -> None:
    wanted = _pip_requirements(DOCKERFILES["model_server"])
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert wanted, "no pip requirements found in model_server/Dockerfile"
    assert set(wanted) <= set(declared), f"not as in pyproject.toml: {sorted(set(wanted) - set(declared))}"
    names = {re.split(r"[\[<>=;!~ ]", r, maxsplit=1)[0].lower() for r in wanted}
    assert not names & {"kopf", "prometheus-api-client", "pytest"}, "operator/dev-only packages in the server image"

    # cryptography comes with model-signing, which the artifacts' signature check uses.
    dist_of = {"sklearn": "scikit-learn", "prometheus_client": "prometheus-client", "yaml": "kubernetes",
               "model_signing": "model-signing", "cryptography": "model-signing", "OpenSSL": "pyopenssl",
               "jwt": "pyjwt"}
    imported: set[str] = set()
    # The server may import modelwarden.artifacts (DESIGN §1): its imports are the image's too.
    server_modules = [*(ROOT / "model_server").glob("*.py"), *(ROOT / "operator/modelwarden/artifacts").glob("*.py")]
    for module in sorted(server_modules):
        if module.name in ("testing.py", "demo_artifact.py"):  # test/demo helpers, not the server
            continue
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
    third_party = {m for m in imported if m not in sys.stdlib_module_names and m not in ("model_server", "modelwarden")}
    missing = {m for m in third_party if dist_of.get(m, m) not in names}
    assert not missing, f"model_server imports {sorted(missing)}, which the image does not install"
