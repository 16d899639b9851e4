"""Pure decisions: rollout state machine, triggers, quorum, schedule.

No kopf, no kubernetes, no HTTP, no clock: time is always an argument. ``tests/unit/test_layering.py``
enforces this.
"""
