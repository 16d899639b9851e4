"""End to end, as `python -m localenv.demo --inject drift` runs it on the real node: v2 is healthy by every error
metric but scores shifted, goes through a shadow stage under the ``replicas`` router (its pods kept out of the
model's Service) and is halted there — no answer through the Service ever came from v2 (the answers' headers)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_drifting_v2_is_stopped_in_shadow_before_any_user_saw_it() -> None:
    done = subprocess.run([sys.executable, "-m", "localenv.demo", "--inject", "drift"], cwd=ROOT,
                          capture_output=True, text=True, timeout=900, check=False)
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-4000:]
    v1 = re.search(r"v1: sha256 ([0-9a-f]{64})", out)
    assert v1 is not None, out
    assert "Halted in shadow: ShadowDisagreement" in out, out[-3000:]
    numbers = re.search(r"Shadow stage of v2: verdict Failed, numbers (\{.*\})", out)
    assert numbers is not None, out[-3000:]
    values = json.loads(numbers.group(1))
    assert float(values["compared"]) >= 200
    assert float(values["decisionAgreement"]) < 0.95 or float(values["scorePsi"]) > 0.2 or float(
        values["p99ScoreDifference"]) > 0.05, values
    during = re.search(r"Answers through the Service during the stage: (\d+), .*; from v2: (\d+)", out)
    assert during is not None, out[-3000:]
    assert int(during.group(1)) > 0 and int(during.group(2)) == 0, during.group(0)
    assert (f"Served now (the last 100 answers through the Service): {v1.group(1)} — v1's sha256 is {v1.group(1)}: "
            "MATCH") in out
    assert "phase Halted" in out
