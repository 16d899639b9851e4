"""The shipped Prometheus rules, checked and unit-tested by the real promtool."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from localenv._proc import require_debian_package

ROOT = Path(__file__).resolve().parents[2]


def test_rules_pass_promtool_check_and_unit_tests() -> None:
    promtool = require_debian_package("promtool", "prometheus")
    check = subprocess.run([promtool, "check", "rules", ROOT / "manifests/prometheus/rules.yaml"],
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    tested = subprocess.run([promtool, "test", "rules", "rules_test.yaml"], cwd=ROOT / "tests/prometheus",
                            capture_output=True, text=True, check=False)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_prometheusrule_is_generated_from_the_rules_file() -> None:
    shipped = (ROOT / "manifests/prometheus/prometheusrule.yaml").read_text()
    generated = subprocess.run([sys.executable, ROOT / "hack/gen_prometheusrule.py"], capture_output=True,
                               text=True, check=True).stdout
    assert shipped == generated, "stale: run `make rules`"
