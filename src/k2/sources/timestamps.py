"""RFC 3339 timestamps as venues write them (``2021-04-17T16:43:37.056746Z``) <-> UTC microseconds. Pure.

Coinbase (and Kraken WebSocket v2) send times as RFC 3339 text rather than epoch numbers. K2 reads
them with plain integer arithmetic (days from the civil date, Howard Hinnant's algorithm) instead
of :class:`datetime.datetime`, for two reasons:

* the result is exact: 1 to 9 fractional digits, floored to the microsecond (nanosecond text is
  never rounded up into the next microsecond);
* a well-formed time of any year parses to an integer, so a time beyond year 9999 (or before year
  1, or 2^63 microseconds away) is reported by the time-window check as ``out_of_range``, the same
  reason as an absurd epoch number, while text that is not a timestamp at all is a ``wrong_type``.

Accepted: ``[+-]YYYY[Y...]-MM-DDTHH:MM:SS[.f{1,9}](Z|+HH:MM|-HH:MM)``, ASCII digits only, a real
calendar date (no February 30th), no leap second. :func:`format_us` writes the inverse (``Z``,
microseconds), e.g. for an emulator's own messages.
"""

from __future__ import annotations

import re

_RFC3339 = re.compile(
    r"([+-]?[0-9]{4,19})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})",
    re.ASCII,
)
_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_US_PER_DAY = 86_400_000_000


def _leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (any year, negative ones included)."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146_097 + doe - 719_468


def civil_from_days(days: int) -> tuple[int, int, int]:
    """The (year, month, day) of a day number from :func:`days_from_civil`."""
    days += 719_468
    era = days // 146_097
    doe = days - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + (3 if mp < 10 else -9)
    return yoe + era * 400 + (month <= 2), month, day


def parse_us(text: str) -> int | None:
    """Microseconds since the epoch (UTC) of an RFC 3339 timestamp; None when ``text`` is not one."""
    m = _RFC3339.fullmatch(text)
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    if not 1 <= month <= 12 or hour > 23 or minute > 59 or second > 59:
        return None
    last = 29 if month == 2 and _leap(year) else _DAYS_IN_MONTH[month - 1]
    if not 1 <= day <= last:
        return None
    fraction = m.group(7) or ""
    micros = int((fraction + "000000")[:6])  # floor to the microsecond
    zone = m.group(8)
    offset_s = 0
    if zone not in ("Z", "z"):
        zh, zm = int(zone[1:3]), int(zone[4:6])
        if zh > 23 or zm > 59:
            return None
        offset_s = (zh * 3600 + zm * 60) * (1 if zone[0] == "+" else -1)
    seconds = hour * 3600 + minute * 60 + second - offset_s
    return days_from_civil(year, month, day) * _US_PER_DAY + seconds * 1_000_000 + micros


def format_us(us: int) -> str:
    """``us`` (UTC microseconds since the epoch) as RFC 3339 with six fractional digits and ``Z``;
    years outside 0..9999 are written with a sign and as many digits as they need."""
    days, rest = divmod(us, _US_PER_DAY)
    year, month, day = civil_from_days(days)
    seconds, micros = divmod(rest, 1_000_000)
    hour, seconds = divmod(seconds, 3600)
    minute, second = divmod(seconds, 60)
    y = f"{year:04d}" if 0 <= year <= 9999 else f"{year:+05d}"
    return f"{y}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}.{micros:06d}Z"
