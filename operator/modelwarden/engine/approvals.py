"""Approval quorum: one approval per required role, for the exact version and sha256, from distinct people.

Who may approve in which role is enforced by the API server (the ValidatingAdmissionPolicy in
``manifests/admission``); this module decides whether the approvals that exist make a quorum.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Approval:
    name: str
    role: str
    approver: str
    version: str
    sha256: str
    approved_at: str | None = None
    # the artifact signer this approval signed off (None: given while no signature was required)
    signer: str | None = None


@dataclass(frozen=True)
class Quorum:
    met: bool
    # role -> the approval chosen for it (distinct approvers), only when met
    assignment: dict[str, Approval] = field(default_factory=dict)
    missing_roles: tuple[str, ...] = ()
    message: str = ""


def evaluate_quorum(required_roles: Sequence[str], approvals: Iterable[Approval], *, version: str,
                    sha256: str, signer: str | None = None) -> Quorum:
    """``signer``: the fingerprint of the verified signature when the model requires one (None: none required).
    An approval binds the signature requirement it was given under (issue 27): dropping or changing the
    requirement after approval needs new approvals."""
    approvals = list(approvals)
    same_bytes = [a for a in approvals if a.version == version and a.sha256 == sha256]
    matching = [a for a in same_bytes if a.signer == signer]
    unbound = sorted({a.approver for a in same_bytes if a.signer != signer})
    stale = sorted({a.approver for a in approvals if a.version == version and a.sha256 != sha256})
    by_role: dict[str, list[Approval]] = {r: [] for r in required_roles}
    for a in sorted(matching, key=lambda a: (a.approved_at or "", a.name)):
        if a.role in by_role:
            by_role[a.role].append(a)

    assignment = _assign_distinct(list(required_roles), by_role)
    if assignment is not None:
        people = ", ".join(f"{role}: {a.approver}" for role, a in assignment.items())
        return Quorum(met=True, assignment=assignment, message=f"approved for {version} ({people})")

    missing = tuple(r for r in required_roles if not by_role[r])
    parts = []
    if missing:
        parts.append(f"waiting for {', '.join(missing)} approval of {version} sha256 {sha256[:12]}")
    else:
        # Every role has an approval, yet no assignment to distinct people exists.
        holders = {r: sorted({a.approver for a in by_role[r]}) for r in required_roles}
        detail = "; ".join(f"{r} by {', '.join(p)}" for r, p in holders.items())
        parts.append(f"each required role needs a different person ({detail})")
    if stale:
        parts.append(f"approvals by {', '.join(stale)} are for a different sha256 and do not count")
    if unbound:
        required = f"a signature by {signer[:12]}" if signer else "no signature"
        parts.append(f"approvals by {', '.join(unbound)} were given under another signature requirement (now: "
                     f"{required}) and do not count")
    return Quorum(met=False, missing_roles=missing, message="; ".join(parts))


def _assign_distinct(roles: list[str], by_role: dict[str, list[Approval]],
                     taken: frozenset[str] = frozenset()) -> dict[str, Approval] | None:
    """A matching of roles to approvals with no person used twice (backtracking; roles are few)."""
    if not roles:
        return {}
    role, rest = roles[0], roles[1:]
    for a in by_role[role]:
        if a.approver in taken:
            continue
        tail = _assign_distinct(rest, by_role, taken | {a.approver})
        if tail is not None:
            return {role: a, **tail}
    return None
