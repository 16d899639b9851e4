"""Governance states: the kill switch, the model-error latch that needs a human, DEGRADED and its expiry."""

from __future__ import annotations

import pytest

from model_server.governance import Governance, GovernanceState

OK, DEGRADED = GovernanceState.ENABLED_OK, GovernanceState.ENABLED_DEGRADED
CONFIG, GOVERNANCE = GovernanceState.DISABLED_CONFIG, GovernanceState.DISABLED_BY_GOVERNANCE


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _governance(clock: Clock, enabled: bool = True) -> Governance:
    return Governance(config_enabled=enabled, max_model_errors=3, window_seconds=60,
                      counted_kinds={"PREDICT_ERROR"}, degraded_psi=0.25, clock=clock)


def test_errors_over_the_threshold_in_the_window_disable_until_a_human_reenables(clock: Clock) -> None:
    g = _governance(clock)
    changes: list[tuple[str, str, str]] = []
    g.add_listener(lambda old, new, reason, details: changes.append((old.value, new.value, reason)))
    g.record_model_error("PREDICT_ERROR")
    assert g.state is DEGRADED
    clock.now += 30
    g.record_model_error("PREDICT_ERROR")
    g.record_model_error("PREDICT_ERROR")
    assert g.state is GOVERNANCE
    assert not g.state.serves_model
    clock.now += 3600  # time alone does not lift it
    assert g.state is GOVERNANCE
    assert g.reenable("alice", "root cause fixed") is True
    assert g.state is OK
    assert g.reenable("alice", "again") is False
    assert changes == [
        ("ENABLED|OK", "ENABLED|DEGRADED", "MODEL_ERROR_PREDICT_ERROR"),
        ("ENABLED|DEGRADED", "DISABLED_BY_GOVERNANCE", "MODEL_ERRORS_OVER_THRESHOLD"),
        ("DISABLED_BY_GOVERNANCE", "ENABLED|OK", "REENABLED_BY_HUMAN"),
    ]


def test_errors_spread_beyond_the_window_do_not_trip(clock: Clock) -> None:
    g = _governance(clock)
    for _ in range(6):
        g.record_model_error("PREDICT_ERROR")
        clock.now += 31  # never more than two within 60 s
    assert g.state is DEGRADED
    clock.now += 60
    assert g.state is OK  # DEGRADED expires with its errors
    assert g.model_errors == 6


def test_uncounted_kinds_never_trip_but_are_counted(clock: Clock) -> None:
    g = _governance(clock)
    for _ in range(10):
        g.record_model_error("FEATURE_MISMATCH")
    assert g.state is OK
    assert g.model_errors == 10


def test_kill_switch_wins_and_the_latch_survives_it(clock: Clock) -> None:
    g = _governance(clock)
    g.set_config_enabled(False)
    assert g.state is CONFIG
    for _ in range(5):  # while disabled by config, errors do not trip governance
        g.record_model_error("PREDICT_ERROR")
    g.set_config_enabled(True)
    assert g.state is OK
    for _ in range(3):
        g.record_model_error("PREDICT_ERROR")
    g.set_config_enabled(False)
    assert g.state is CONFIG
    g.set_config_enabled(True)
    assert g.state is GOVERNANCE  # a config flip is not a human re-enable


def test_starting_disabled(clock: Clock) -> None:
    g = _governance(clock, enabled=False)
    assert g.state is CONFIG
    assert not g.config_enabled


def test_significant_drift_is_degraded(clock: Clock) -> None:
    g = _governance(clock)
    g.set_drift(0.1)
    assert g.state is OK
    g.set_drift(0.4)
    assert g.state is DEGRADED
    g.set_drift(0.05)
    assert g.state is OK
