"""Instants in the API: the one parser of the times a request gives, and how the API writes one.

Written: UTC, microseconds, `Z`, exactly as the database's documents write theirs
(`to_char(... 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')`), so times read the same whichever side rendered
them.

Read (`parse_time`, every time a route takes): RFC 3339 (section 5.6), nothing else:
`YYYY-MM-DDTHH:MM:SS`, an optional fraction, then `Z` or an offset `+HH:MM`/`-HH:MM` (`T` and `Z`
in either case, as RFC 3339 allows). Refused, each with its reason: a bare number (a Unix time is
ambiguous: seconds or milliseconds, and of which zone's calendar), a time without an offset, a
date alone, a leap second (`:60`), a fraction finer than a microsecond (the ledger's resolution;
trailing zeros are fine, up to nanoseconds), and an instant outside `EARLIEST`..`LATEST` once
turned into UTC (the range both Python and the API's four-digit years can write:
`9999-12-31T23:59:59.999999-08:00` is in the year 10000 in UTC, and refused).
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

from wallet.domain.errors import VALIDATION_ERROR, WalletError

EARLIEST = datetime(1, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
TIME_FORMAT_HINT = (
    "an RFC 3339 instant, YYYY-MM-DDTHH:MM:SS with an optional fraction, then Z or an offset ±HH:MM"
    " (e.g. 2026-01-31T12:00:00Z)"
)

_RFC3339 = re.compile(
    r"(?P<year>\d{4})-(?P<month>\d{2})-(?P<day>\d{2})[Tt]"
    r"(?P<hour>\d{2}):(?P<minute>\d{2}):(?P<second>\d{2})(?:\.(?P<fraction>\d{1,9}))?"
    r"(?:(?P<utc>[Zz])|(?P<sign>[+-])(?P<offset_hour>\d{2}):(?P<offset_minute>\d{2}))",
    re.ASCII,
)
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", re.ASCII)
_NO_OFFSET = re.compile(r"\d{4}-\d{2}-\d{2}([Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?", re.ASCII)
_SPACE_SEPARATED = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}.*", re.ASCII)
# A `+` sent unencoded in a URL's query arrives as a space.
_SPACED_OFFSET = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)? \d{2}:\d{2}", re.ASCII)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US_PER_DAY = 86_400_000_000


def api_time(instant: datetime) -> str:
    assert instant.tzinfo is not None, instant
    return instant.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _days_since_epoch(year: int, month: int, day: int) -> int:
    """Days from 1970-01-01 to a date of the proleptic Gregorian calendar, year 0 included (Python
    stops at year 1; the calendar repeats every 400 years, 146,097 days)."""
    if year == 0:
        return _days_since_epoch(400, month, day) - 146_097
    return (date(year, month, day) - date(1970, 1, 1)).days


def parse_time(text: str) -> datetime:
    """The instant `text` names, in UTC; a ValueError saying why when it names none (see above)."""
    found = _RFC3339.fullmatch(text)
    if found is None:
        if _NUMBER.fullmatch(text):
            raise ValueError(f"a bare number is not a time: give {TIME_FORMAT_HINT}")
        if _SPACED_OFFSET.fullmatch(text):
            raise ValueError("the offset lost its sign: a '+' in a URL's query string must be sent as %2B")
        if _SPACE_SEPARATED.fullmatch(text):
            raise ValueError("the date and the time must be joined by 'T' (RFC 3339)")
        if _NO_OFFSET.fullmatch(text):
            raise ValueError(
                f"a date, or a time without an offset, names no instant: give {TIME_FORMAT_HINT}"
            )
        raise ValueError(f"not a time: give {TIME_FORMAT_HINT}")
    part = {name: int(value) for name, value in found.groupdict().items() if value and value.isdigit()}
    if part["second"] == 60:
        raise ValueError("leap seconds (:60) are not supported")
    if part["hour"] > 23 or part["minute"] > 59 or part["second"] > 59:
        raise ValueError("hour, minute or second out of range")
    if part.get("offset_hour", 0) > 23 or part.get("offset_minute", 0) > 59:
        raise ValueError("offset out of range (at most ±23:59)")
    fraction = found["fraction"] or ""
    if fraction[6:].strip("0"):
        raise ValueError("finer than a microsecond, the ledger's resolution")
    try:
        days = _days_since_epoch(part["year"], part["month"], part["day"])
    except ValueError as exc:  # month 13, February 30, ...
        raise ValueError(f"no such date: {exc}") from None
    offset_minutes = part.get("offset_hour", 0) * 60 + part.get("offset_minute", 0)
    if found["sign"] == "-":
        offset_minutes = -offset_minutes
    micros = (
        days * _US_PER_DAY
        + ((part["hour"] * 60 + part["minute"] - offset_minutes) * 60 + part["second"]) * 1_000_000
        + int(fraction[:6].ljust(6, "0"))
    )
    if micros < (EARLIEST - _EPOCH) // timedelta(microseconds=1):
        raise ValueError(f"before {api_time(EARLIEST)}, the earliest instant the service takes")
    if micros > (LATEST - _EPOCH) // timedelta(microseconds=1):
        raise ValueError(f"after {api_time(LATEST)}, the latest instant the service takes")
    return _EPOCH + timedelta(microseconds=micros)


def check_period(from_time: datetime | None, to_time: datetime | None) -> None:
    """A period [from, to) of a read: `from` may not be after `to` (they may be equal: an empty
    period). 422 `validation_error` naming `from`, on every route that takes both."""
    if from_time is not None and to_time is not None and from_time > to_time:
        raise WalletError(
            VALIDATION_ERROR,
            f"from ({api_time(from_time)}) must not be after to ({api_time(to_time)})",
            "from",
        )


def ten_years_after(instant: datetime) -> datetime:
    """The same date and time ten years on (28 February for 29 February): the latest a bonus's
    `expires_at` may be, from the moment it is asked for."""
    try:
        return instant.replace(year=instant.year + 10)
    except ValueError:
        return instant.replace(year=instant.year + 10, day=28)
