"""Which ticks of a cron schedule are due, in its time zone, after a gap (pure: no clock, no API).

Ticks are wall-clock times in `timeZone` (croniter over zone-aware datetimes: across a DST
change a daily 03:30 fires at 03:30 local time; a time the spring change skips fires once when
the clock jumps; one the autumn change repeats fires once, at its first occurrence). After downtime, the catch-up policy bounds what runs: `Skip` runs only a tick that is due
now, `Latest` the newest missed one, `All` every missed one up to `maxRuns` (newest first kept);
a tick older than `startingDeadlineSeconds` never runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

CATCH_UP = ("Skip", "Latest", "All")
# A tick is "due now" (not missed) when the reconciler sees it within this long: two timer periods.
ON_TIME = timedelta(seconds=120)
# Never enumerate more ticks than this after a gap (a per-minute schedule after a week's downtime).
SCAN_LIMIT = 1000


@dataclass
class Due:
    run: list[datetime] = field(default_factory=list)  # ticks to start, oldest first (UTC)
    skipped: list[datetime] = field(default_factory=list)  # missed, dropped by the catch-up policy
    expired: list[datetime] = field(default_factory=list)  # missed, past startingDeadlineSeconds
    newest: datetime | None = None  # the newest tick seen: the next scan starts after it


def schedule_problems(cron: str, time_zone: str) -> list[str]:
    problems = []
    if not isinstance(cron, str) or len(cron.split()) != 5 or not croniter.is_valid(cron):
        problems.append(f"schedule {cron!r} is not a 5-field cron expression (minute hour day month weekday), e.g. '0 3 * * *'")
    try:
        ZoneInfo(time_zone)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        problems.append(f"timeZone {time_zone!r} is not an IANA time zone, e.g. 'Europe/Berlin' or 'UTC'")
    return problems


def ticks(cron: str, time_zone: str, after: datetime, until: datetime) -> list[datetime]:
    """Ticks t with after < t <= until, as UTC instants (at most SCAN_LIMIT, the newest kept)."""
    zone = ZoneInfo(time_zone)
    it = croniter(cron, after.astimezone(zone))
    out: list[datetime] = []
    wall = None
    while True:
        local = it.get_next(datetime)
        t = local.astimezone(UTC)
        if t > until:
            return out
        if local.replace(tzinfo=None) == wall:
            continue  # the repeated hour after a DST change: that wall-clock time fired already
        wall = local.replace(tzinfo=None)
        out.append(t)
        if len(out) > SCAN_LIMIT:
            out.pop(0)


def due(cron: str, time_zone: str, last: datetime, now: datetime, catch_up: str = "Latest",
        max_runs: int = 1, deadline_s: int | None = None) -> Due:
    """What to do with the ticks after `last` (the previous scan's newest tick) up to `now`."""
    seen = ticks(cron, time_zone, last, now)
    out = Due(newest=seen[-1] if seen else None)
    live = []
    for t in seen:
        (out.expired if deadline_s is not None and (now - t).total_seconds() > deadline_s else live).append(t)
    on_time = [t for t in live if now - t <= ON_TIME]
    missed = [t for t in live if now - t > ON_TIME]
    if catch_up == "Skip":
        keep = on_time[-1:]
    elif catch_up == "Latest":
        keep = live[-1:]
    else:
        keep = live[-max(1, max_runs):]
    out.run = keep
    out.skipped = [t for t in missed if t not in keep] + [t for t in on_time[:-1] if t not in keep]
    return out
