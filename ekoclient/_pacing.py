"""Client-side pacing from the server's ``X-RateLimit-*`` figures (opt-in, per credential).

With ``rate_limit(adaptive=True)`` a client stays under its key's limit instead of bouncing
off 429s: while the last figures seen for a credential say its budget is low, calls to that
credential leave at the rate the server refills it, each reserving the next free slot.

Why the refill rate: the server's limiter (GCRA) refills ``limit - remaining`` units over
the ``reset`` seconds until full, so one call per ``reset / (limit - remaining)`` seconds
keeps ``remaining`` where it is; ``reset`` is rounded up by the server, so the estimate errs
slow, never fast. Above the headroom nobody waits, so a lightly used key pays nothing. The
decision is one pure function, called by the sync and the async executor alike.
"""

from __future__ import annotations

from ._tokens import RateLimitInfo


def pace(
    info: RateLimitInfo | None,
    slot: float,
    now: float,
    *,
    headroom: float = 0.2,
    max_delay: float = 60.0,
) -> tuple[float, float]:
    """Seconds to wait before sending, and the credential's next free slot.

    ``info`` is the credential's last figures (``observed_at`` on the same clock as
    ``now``), ``slot`` the earliest time its next call may leave (what this function
    returned last time). Pacing starts when ``remaining`` is at or below ``headroom`` of
    the limit (at least 1): enough slack for the calls already in flight, whose answers
    will lower it further.
    """
    if info is None or info.limit is None or info.remaining is None or info.reset is None:
        return 0.0, slot
    limit, remaining, reset = info.limit, info.remaining, info.reset
    if limit <= 0 or reset <= 0 or now - info.observed_at >= reset:
        return 0.0, slot  # no limit, a full bucket, or figures so old it has refilled
    if remaining > max(1.0, headroom * limit):
        return 0.0, slot
    spacing = reset / max(1, limit - remaining)
    start = slot if slot > now else now
    delay = min(start - now, max_delay)
    return delay, now + delay + spacing
