"""Issue 27, item 8: an approval binds the signature requirement it was given under. Dropping
`spec.artifact.signature` after approval (or a different signer) needs new approvals; a table over the pure quorum."""

from __future__ import annotations

import pytest

from modelwarden.engine.approvals import Approval, evaluate_quorum

SHA = "ab" * 32
SIGNER, OTHER = "11" * 32, "22" * 32


def approvals(signer: str | None) -> list[Approval]:
    return [Approval(name=f"a-{role}", role=role, approver=who, version="v2", sha256=SHA, signer=signer)
            for role, who in (("finance", "fiona"), ("regulatory", "rick"))]


@pytest.mark.parametrize(("given_under", "now_required", "met", "says"), [
    (None, None, True, ""),                            # no signature then, none now
    (SIGNER, SIGNER, True, ""),                        # signed off the signer that verified
    (SIGNER, None, False, "another signature requirement (now: no signature)"),  # spec.artifact.signature dropped
    (SIGNER, OTHER, False, "another signature requirement (now: a signature by 222222222222)"),  # another signer
    (None, SIGNER, False, "another signature requirement"),  # required later: the signer was never signed off
])
def test_an_approval_counts_only_under_the_signature_requirement_it_was_given_for(
        given_under: str | None, now_required: str | None, met: bool, says: str) -> None:
    quorum = evaluate_quorum(["finance", "regulatory"], approvals(given_under), version="v2", sha256=SHA,
                             signer=now_required)
    assert quorum.met is met and says in quorum.message, quorum.message
