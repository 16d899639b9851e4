"""End to end, as `python -m localenv.demo --inject drift` runs it (issue 20): v2 is healthy by every error metric
but its scores are shifted; it goes through a shadow stage on mirrored live traffic, disagrees with v1 and is
halted there — no user answer ever came from it, the incident names the numbers, a page goes out."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_drifted_v2_is_stopped_in_its_shadow_stage() -> None:
    done = subprocess.run([sys.executable, "-m", "localenv.demo", "--inject", "drift"], cwd=ROOT,
                          capture_output=True, text=True, timeout=900, check=False)
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-4000:]
    assert "phase Halted" in out
    assert re.search(r"Incident rb-\S+ — ShadowDisagreement: shadow stage failed", out), out[-3000:]
    assert re.search(r"shadow  v2  Failed .* compared \d+", out), out[-3000:]
    assert "user answers from v2: 0" in out
    assert "Page sent (PagerDuty Events v2): " in out and "Page sent (PagerDuty Events v2): none" not in out
