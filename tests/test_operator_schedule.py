"""Cron ticks in a time zone, catch-up after downtime and the starting deadline (pure functions;
times are written out by hand, the oracle)."""

from datetime import UTC, datetime, timedelta

from vap.operators.schedule import due, schedule_problems, ticks


def utc(*args):
    return datetime(*args, tzinfo=UTC)


def test_daily_schedule_across_both_dst_changes_fires_at_local_wall_clock_time():
    # Europe/Berlin: CET (UTC+1) until 2027-03-28 02:00 → CEST (UTC+2) until 2027-10-31 03:00.
    spring = ticks("30 3 * * *", "Europe/Berlin", utc(2027, 3, 26, 12), utc(2027, 3, 29, 12))
    assert spring == [utc(2027, 3, 27, 2, 30), utc(2027, 3, 28, 1, 30), utc(2027, 3, 29, 1, 30)]
    autumn = ticks("30 3 * * *", "Europe/Berlin", utc(2027, 10, 30, 12), utc(2027, 11, 1, 12))
    assert autumn == [utc(2027, 10, 31, 2, 30), utc(2027, 11, 1, 2, 30)]


def test_skipped_local_hour_fires_once_and_repeated_hour_once():
    # 02:30 does not exist on 2027-03-28 in Berlin; 02:30 occurs twice on 2027-10-31.
    spring = ticks("30 2 * * *", "Europe/Berlin", utc(2027, 3, 27, 12), utc(2027, 3, 28, 12))
    autumn = ticks("30 2 * * *", "Europe/Berlin", utc(2027, 10, 30, 12), utc(2027, 10, 31, 12))
    assert spring == [utc(2027, 3, 28, 1, 0)]  # 03:00 CEST, when the clock jumps over 02:30
    assert autumn == [utc(2027, 10, 31, 0, 30)]  # the first 02:30 (CEST), not the second (CET)


def test_catch_up_after_downtime_never_floods():
    last, now = utc(2027, 1, 1, 0, 0), utc(2027, 1, 1, 10, 0, 30)  # 10 hourly ticks missed
    assert due("0 * * * *", "UTC", last, now, "Skip").run == [utc(2027, 1, 1, 10)]  # only the one due now
    late = now + timedelta(minutes=30)  # now nothing is due: Skip runs none, Latest one
    assert due("0 * * * *", "UTC", last, late, "Skip").run == []
    assert due("0 * * * *", "UTC", last, late, "Latest").run == [utc(2027, 1, 1, 10)]
    everything = due("0 * * * *", "UTC", last, late, "All", max_runs=3)
    assert everything.run == [utc(2027, 1, 1, 8), utc(2027, 1, 1, 9), utc(2027, 1, 1, 10)]
    assert len(everything.skipped) == 7 and everything.newest == utc(2027, 1, 1, 10)


def test_starting_deadline_expires_old_ticks():
    last, now = utc(2027, 1, 1, 0, 0), utc(2027, 1, 1, 10, 30)
    d = due("0 * * * *", "UTC", last, now, "All", max_runs=100, deadline_s=3600 + 60)
    assert d.run == [utc(2027, 1, 1, 10)] and len(d.expired) == 9
    assert due("0 * * * *", "UTC", last, now, "Latest", deadline_s=60).run == []  # 10:00 is 30 min late


def test_malformed_schedule_and_zone_are_named():
    assert any("not a 5-field cron" in p for p in schedule_problems("every day", "UTC"))
    assert any("not a 5-field cron" in p for p in schedule_problems("61 * * * *", "UTC"))
    assert any("timeZone 'Mars/Olympus'" in p for p in schedule_problems("0 3 * * *", "Mars/Olympus"))
    assert schedule_problems("0 3 * * 1-5", "America/New_York") == []
