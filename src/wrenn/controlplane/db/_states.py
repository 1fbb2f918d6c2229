"""The statuses a capsule and a host go through, as the database stores them (plain strings, so a
`StrEnum` member and the stored value compare equal), and the groups that queries select by.

Capsule:

    pending --create--> running <--pause/resume--> paused --(long)--> hibernating --> hibernated
       |                   |  \\--host silent--> missing --host back--> running
       +--boot failed--> error   \\--destroy / gone / timeout--> stopped

`starting` is a hibernated capsule waking on the host the scheduler picked.
"""

from __future__ import annotations

import enum


class CapsuleStatus(enum.StrEnum):
    PENDING = "pending"
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    HIBERNATING = "hibernating"
    HIBERNATED = "hibernated"
    #: Its host went silent; its VM may well be alive and come back with it.
    MISSING = "missing"
    STOPPED = "stopped"
    ERROR = "error"


class HostStatus(enum.StrEnum):
    PENDING = "pending"  # created, not registered yet
    ONLINE = "online"
    UNREACHABLE = "unreachable"


class UserStatus(enum.StrEnum):
    #: Signed up, the activation e-mail not followed yet (only when activation is required).
    INACTIVE = "inactive"
    ACTIVE = "active"
    #: Disabled by a platform admin: no token or key of theirs works.
    DISABLED = "disabled"
    #: Soft-deleted by its owner: deleted for good after the grace period.
    DELETED = "deleted"


C = CapsuleStatus
#: Listed to their team: every capsule that has not ended.
VISIBLE = (C.PENDING, C.STARTING, C.RUNNING, C.PAUSED, C.HIBERNATING, C.HIBERNATED)
#: Paused, to E2B: its memory is kept somewhere and it resumes on demand.
ASLEEP = (C.PAUSED, C.HIBERNATING, C.HIBERNATED)
#: Holding (or maybe still holding) memory and a slot on its host: what placement counts.
LOADED = (C.PENDING, C.STARTING, C.RUNNING, C.MISSING)
#: A VM runs for it: made `missing` when its host goes silent.
LIVE = (C.RUNNING, C.STARTING)
#: Still on its host's disk (running or not): what a host deletion would destroy.
ON_HOST = (C.PENDING, C.STARTING, C.RUNNING, C.PAUSED, C.MISSING)
#: Ended: kept as rows, never listed.
ENDED = (C.STOPPED, C.ERROR)
