"""Schedule entries (TS-0004 m2m:scheduleEntry) as `actw` time windows read them: seven
crontab fields in UTC, second minute hour day month weekday year."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cse.core import schedule


def _at(*moment: int) -> float:
    return datetime(*moment, tzinfo=UTC).timestamp()


SUNDAY_NOON = _at(2026, 1, 4, 12, 0, 0)


@pytest.mark.parametrize(
    ("entry", "moment", "expected"),
    [
        ("* * * * * * *", SUNDAY_NOON, True),
        ("0 0 12 4 1 0 2026", SUNDAY_NOON, True),  # every field exact; Sunday is 0
        ("* * 9-17 * * 1-5 *", SUNDAY_NOON, False),
        ("* * 9-17 * * 1-5 *", _at(2026, 1, 5, 9, 0, 0), True),  # Monday 09:00
        ("* * 9-17 * * 1-5 *", _at(2026, 1, 5, 18, 0, 0), False),
        ("* */15 * * * * *", _at(2026, 1, 5, 9, 45, 0), True),
        ("* */15 * * * * *", _at(2026, 1, 5, 9, 50, 0), False),
        ("* 0-30/10 * * * * *", _at(2026, 1, 5, 9, 20, 0), True),
        ("* 0-30/10 * * * * *", _at(2026, 1, 5, 9, 25, 0), False),
        ("* 5,7-8,*/20 * * * * *", _at(2026, 1, 5, 9, 8, 0), True),
        ("* 5,7-8,*/20 * * * * *", _at(2026, 1, 5, 9, 40, 0), True),
        ("* 5,7-8,*/20 * * * * *", _at(2026, 1, 5, 9, 6, 0), False),
        ("  *  * * * *\t* 2027 ", SUNDAY_NOON, False),  # any white space between fields
    ],
)
def test_an_entry_matches_the_moments_its_fields_allow(
    entry: str, moment: float, expected: bool
) -> None:
    assert schedule.matches(entry, moment) is expected


@pytest.mark.parametrize(
    "entry",
    [
        "",
        "* * * * * *",  # six fields
        "* * * * * * * *",  # eight
        "x * * * * * *",
        "-1 * * * * * *",
        "* 60 * * * * *",
        "* * 24 * * * *",
        "* * * 0 * * *",  # days of the month start at 1
        "* * * * 13 * *",
        "* * * * * 7 *",  # Sunday is 0 only
        "*/0 * * * * * *",
        "3/2 * * * * * *",  # a step after a single number
        "*,5 * * * * * *",
        "5- * * * * * *",
        "1,,2 * * * * * *",
    ],
)
def test_a_malformed_entry_is_refused_with_the_reason(entry: str) -> None:
    with pytest.raises(ValueError, match=r"\S"):
        schedule.parse(entry)
