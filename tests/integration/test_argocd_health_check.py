"""The Argo CD health check for MLModel, run by gopher-lua (Argo CD's Lua runtime) on its health_test.yaml,
in Argo CD's own layout: every case passes as a built-in check and as an argocd-cm check.

Needs no cluster (the testdata was captured from one by test_gitops_health.py); it lives here because it builds
a Go tool from the module proxy.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from localenv import gotools
from tests.integration.test_gitops_health import EXPECTED, HEALTH_DIR

CUSTOMIZATIONS = HEALTH_DIR.parents[1]


@pytest.fixture(scope="module")
def runner() -> Path:
    return gotools.build("argocd-health-check")


def run_tests(runner: Path, root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(runner), "test", str(root)], capture_output=True, text=True, check=False, timeout=120)


def test_every_health_test_case_passes_in_gopher_lua(runner: Path) -> None:
    done = run_tests(runner, CUSTOMIZATIONS)
    print("\n" + done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    cases = yaml.safe_load((HEALTH_DIR / "health_test.yaml").read_text())["tests"]
    # two runs per case (built-in and argocd-cm), each printed
    assert done.stdout.count("PASS") == 2 * len(cases) and "FAIL" not in done.stdout


def test_health_test_agrees_with_the_phase_table(runner: Path) -> None:
    """The expectations in health_test.yaml are the ones the integration test asserts on live objects."""
    cases = {Path(c["inputPath"]).stem: c["healthStatus"]["status"]
             for c in yaml.safe_load((HEALTH_DIR / "health_test.yaml").read_text())["tests"]}
    captured = {name: cases[name] for name in cases if name in EXPECTED}
    assert captured == {name: e.argocd for name, e in EXPECTED.items()}
    on_disk = {p.stem for p in (HEALTH_DIR / "testdata").glob("*.yaml")}
    assert on_disk == set(cases), "every testdata file has a case and every case a file"


def test_a_wrong_expectation_fails(runner: Path, tmp_path: Path) -> None:
    """The runner is not a rubber stamp: one expected status changed makes it fail and say which case."""
    copy = tmp_path / "resource_customizations"
    shutil.copytree(CUSTOMIZATIONS, copy)
    tests_file = copy / "modelwarden.io" / "MLModel" / "health_test.yaml"
    doc = yaml.safe_load(tests_file.read_text())
    halted = next(c for c in doc["tests"] if c["inputPath"] == "testdata/halted-error-budget.yaml")
    halted["healthStatus"]["status"] = "Healthy"
    tests_file.write_text(yaml.safe_dump(doc))
    done = run_tests(runner, copy)
    assert done.returncode == 1
    assert "FAIL  built-in  modelwarden.io/MLModel/testdata/halted-error-budget.yaml  Degraded" in done.stdout


def test_the_argocd_cm_snippet_in_the_docs_is_the_health_check() -> None:
    text = (HEALTH_DIR.parents[4] / "docs" / "gitops-argocd.md").read_text()
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    configmap = yaml.safe_load(block)
    assert configmap["data"]["resource.customizations.health.modelwarden.io_MLModel"] == \
        (HEALTH_DIR / "health.lua").read_text()
