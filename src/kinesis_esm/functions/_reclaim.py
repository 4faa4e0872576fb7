"""Which idle execution environments to reclaim, and when to look again (pure: time passed in).

An environment idle for ``timeout`` seconds or more is reclaimed, the least recently used
first, as long as the function keeps ``minimum`` environments alive (busy ones count towards
the minimum: they stay warm when they come back). A busy environment is never a candidate:
only the idle ones are passed in.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["next_reclaim", "reclaimable"]


def reclaimable(
    idle_since: Sequence[float], *, busy: int, now: float, timeout: float, minimum: int
) -> list[int]:
    """Indices into ``idle_since`` (when each idle environment went idle) of the environments
    to close now, least recently used first. ``timeout`` 0 never reclaims."""
    if timeout <= 0:
        return []
    spare = len(idle_since) + busy - minimum
    if spare <= 0:
        return []
    # the same sum as next_reclaim's, so an environment is due exactly when that said
    expired = sorted((since, i) for i, since in enumerate(idle_since) if since + timeout <= now)
    return [i for _, i in expired[:spare]]


def next_reclaim(
    idle_since: Sequence[float], *, busy: int, timeout: float, minimum: int
) -> float | None:
    """When an environment becomes reclaimable if nothing changes meanwhile; None when none
    can (no idle environment, no more alive than the minimum, or ``timeout`` 0)."""
    if timeout <= 0 or not idle_since or len(idle_since) + busy <= minimum:
        return None
    return min(idle_since) + timeout
