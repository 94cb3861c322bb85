"""The flow catalogue: every row of the seed document's flow tables, as checked data.

The seed document is the oneM2M contribution "Smart Grid Activities in North America", which
quotes rows of the SGIP/OpenSG "SG Network System Requirements Specification". Each file
`configs/flows/*.toml` holds one of its tables: the table's caption, then one `[[row]]` per
row with the document's words kept as they are (`source`, `requirement`, `how_often`, ...)
and the same facts in parsed form (`latency_seconds`, `rate`, ...). The loader reads both,
parses the words again and refuses a row whose parsed fields disagree with its words, so a
hand edit cannot make the two drift. docs/flows.md describes the format and parsing rules.

Usage: `load_catalogue()` (the repository's configs/flows) or `load_catalogue(directory)`;
`python -m interop.catalogue [DIRECTORY]` checks a directory and prints the rows per table.
"""

from __future__ import annotations

import re
import sys
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DEFAULT_DIRECTORY = Path(__file__).resolve().parent.parent / "configs" / "flows"

# The payload types of the tables' header, plus "negot-thrd", which one PHEV row uses.
PayloadType = Literal[
    "cmd", "ack", "resp-data", "comm-err", "cmd-err", "alarm", "alert", "negot-thrd"
]

# Which GridM2M part plays the row in a run (docs/flows.md, "Who models a row").
ModelledBy = Literal["meter-agent", "headend-app", "gateway", "han-ae", "esi", "not-modelled"]

SECONDS = {
    "sec": 1,
    "second": 1,
    "min": 60,
    "minute": 60,
    "hr": 3600,
    "hour": 3600,
    "day": 86400,
    "week": 7 * 86400,
    "month": 30 * 86400,  # the tables' "per month" is read as 30 days
    "year": 365 * 86400,
}

_ID = r"^[a-z0-9]+(-[a-z0-9]+)*$"
_Words = Annotated[str, Field(min_length=1)]
_Tuple = Field(strict=False)  # TOML arrays arrive as lists


class CatalogueError(ValueError):
    """A flow table that cannot be loaded: which file, which row, which field, and why."""

    def __init__(self, path: Path, row_id: str | None, field: str | None, problem: str) -> None:
        self.path = path
        self.row_id = row_id
        self.field = field
        self.problem = problem
        where = str(path)
        if row_id is not None:
            where += f": row {row_id}"
        if field is not None:
            where += f": field {field}"
        super().__init__(f"{where}: {problem}")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class Threshold(_Frozen):
    """One reliability requirement: this share of messages arrives within the window."""

    fraction: Annotated[float, Field(gt=0, le=1)]
    above: bool = False  # the words say "> N%": strictly more than `fraction`
    # The window the share is counted over; None when the words give none (every message).
    window_min_seconds: Annotated[int, Field(gt=0)] | None = None
    window_max_seconds: Annotated[int, Field(gt=0)] | None = None

    @model_validator(mode="after")
    def _window_is_a_range(self) -> Threshold:
        low, high = self.window_min_seconds, self.window_max_seconds
        if (low is None) != (high is None) or (low is not None and high is not None and low > high):
            raise ValueError("window_min_seconds and window_max_seconds must form a range")
        return self


class Rate(_Frozen):
    """The "How Often" cell: count per `per_population` members of `population` per period.

    The period is a time (`period_seconds`), a triggering event (`trigger`: one count per
    trigger), or both (a trigger the document counts per period, "SW oper per day").
    """

    count_min: Annotated[int, Field(ge=0)] | None = None  # None: the document says "x"
    count_max: Annotated[int, Field(ge=0)] | None = None
    per_population: Annotated[int, Field(ge=1)] = 1
    population: _Words
    trigger: _Words | None = None
    period_seconds: Annotated[int, Field(gt=0)] | None = None
    note: _Words | None = None  # the cell's remark in brackets

    @model_validator(mode="after")
    def _consistent(self) -> Rate:
        low, high = self.count_min, self.count_max
        if (low is None) != (high is None) or (low is not None and high is not None and low > high):
            raise ValueError("count_min and count_max must both be set, low <= high, or neither")
        if self.trigger is None and self.period_seconds is None:
            raise ValueError("a rate needs a period_seconds, a trigger, or both")
        return self

    def per_member_per_day(self) -> tuple[float, float] | None:
        """(low, high) messages per population member per day, for a pure time rate."""
        if self.count_min is None or self.count_max is None:
            return None
        if self.trigger is not None or self.period_seconds is None:
            return None
        scale = 86400 / (self.period_seconds * self.per_population)
        return self.count_min * scale, self.count_max * scale

    def per_trigger(self) -> tuple[float, float] | None:
        """(low, high) messages per population member per trigger, for a triggered rate."""
        if self.count_min is None or self.count_max is None or self.trigger is None:
            return None
        return self.count_min / self.per_population, self.count_max / self.per_population


class Size(NamedTuple):
    """The payload size cell: a byte range, or a symbol such as "xMB" (both bounds None)."""

    min_bytes: int | None
    max_bytes: int | None
    symbolic: str | None


class FlowRow(_Frozen):
    """One row of a flow table: the document's words, the parsed facts, how GridM2M plays it."""

    id: Annotated[str, Field(pattern=_ID)]
    table: _Words  # the table's caption in the document (set from the file)

    # The document's words, one field per column.
    ref: _Words | None = None  # the specification's flow reference (first table only)
    source: _Words
    target: _Words
    use_case: _Words
    requirement: _Words
    payload_name: _Words | None = None  # first table only
    payload_type: PayloadType
    clock: _Words
    how_often: _Words
    reliability: _Words
    latency: _Words
    size_type: _Words | None = None  # "native, Intgrt, display" (first table only)
    size: _Words
    note: _Words | None = None  # a remark of the catalogue's own about the row

    # The same facts, parsed (checked against the words when loading).
    targets: Annotated[tuple[_Words, ...], _Tuple]
    clock_from_hour: Annotated[int, Field(ge=0, le=23)]
    clock_to_hour: Annotated[int, Field(ge=1, le=24)]  # below clock_from_hour: past midnight
    rate: Rate
    reliability_thresholds: Annotated[tuple[Threshold, ...], _Tuple]
    latency_seconds: Annotated[int, Field(gt=0)]
    size_min_bytes: Annotated[int, Field(gt=0)] | None = None
    size_max_bytes: Annotated[int, Field(gt=0)] | None = None
    size_symbolic: _Words | None = None

    # Which GridM2M part plays the row, and with what.
    modelled_by: ModelledBy
    model_note: _Words | None = None
    agent_flows: Annotated[tuple[Annotated[str, Field(pattern=_ID)], ...], _Tuple] = ()
    via: Annotated[tuple[Annotated[str, Field(pattern=_ID)], ...], _Tuple] = ()


# ---- parsing the document's words ---------------------------------------------------------


def _seconds(amount: int, unit: str) -> int:
    return amount * SECONDS[unit.lower().rstrip("s")]  # "hrs" -> "hr", "days" -> "day"


_UNIT = r"(?P<unit>sec|secs|seconds?|min|mins|minutes?|hr|hrs|hours?|days?)"


def parse_clock(words: str) -> tuple[int, int]:
    """The clock window: "7AM - 6PM" -> (7, 18), "24x7" -> (0, 24), "6PM - 6AM" -> (18, 6)."""
    text = words.strip()
    if text.lower() == "24x7":
        return 0, 24
    match = re.fullmatch(r"(\d{1,2})\s*(AM|PM)\s*-\s*(\d{1,2})\s*(AM|PM)", text, re.IGNORECASE)
    if match is None:
        raise ValueError('expected "24x7" or "<h>AM|PM - <h>AM|PM"')
    hours = []
    for number, half in ((match[1], match[2]), (match[3], match[4])):
        hour = int(number)
        if not 1 <= hour <= 12:
            raise ValueError(f"hour {hour} is not on a 12-hour clock")
        hours.append(hour % 12 + (12 if half.upper() == "PM" else 0))
    start, end = hours
    if end == 0:
        end = 24  # a window that ends at midnight
    if start == end:
        raise ValueError("the window starts and ends at the same hour")
    return start, end


def parse_latency(words: str) -> int:
    """Seconds: "< 5 sec" -> 5; "< 4 hr (expected window of data delivery)" -> 14400."""
    match = re.fullmatch(rf"<\s*(?P<n>\d+)\s*{_UNIT}(?:\s*\([^()]*\))?", words.strip())
    if match is None:
        raise ValueError('expected "< <number> sec|min|hr|day" (a remark in brackets may follow)')
    seconds = _seconds(int(match["n"]), match["unit"])
    if seconds == 0:
        raise ValueError("a latency of zero")
    return seconds


_SHARE = re.compile(
    r"(?P<above>>\s*)?(?P<pct>\d+(?:\.\d+)?)\s*%(?:\s+success)?"
    rf"(?:\s+(?:every|over|per)\s+(?P<low>\d+)(?:\s*-\s*(?P<high>\d+))?\s*{_UNIT})?"
)


def parse_reliability(words: str) -> tuple[Threshold, ...]:
    """Thresholds: "> 98%" is one, "90% success every 4-6 hr, 98% success over 1 day" two."""
    thresholds = []
    for part in words.split(","):
        match = _SHARE.fullmatch(part.strip())
        if match is None:
            raise ValueError(
                f'cannot read "{part.strip()}": expected "[>] N% [success] [every|over L[-H] unit]"'
            )
        fraction = float(Decimal(match["pct"]) / 100)
        if not 0 < fraction <= 1:
            raise ValueError(f"{match['pct']}% is not a share of messages")
        low = high = None
        if match["low"] is not None:
            low = _seconds(int(match["low"]), match["unit"])
            high = _seconds(int(match["high"] or match["low"]), match["unit"])
            if low == 0 or low > high:
                raise ValueError(f'the window of "{part.strip()}" is not a range')
        thresholds.append(
            Threshold(
                fraction=fraction,
                above=match["above"] is not None,
                window_min_seconds=low,
                window_max_seconds=high,
            )
        )
    return tuple(thresholds)


def _period(word: str) -> int | None:
    return SECONDS.get(word.lower().rstrip("s"))


def parse_how_often(words: str) -> Rate:
    """Read "<count> per [<scale> per] | <population> per | <period or trigger> [(remark)]".

    "25 per 1000 per | DAPjm-ElectrMtr per | day": 25 messages per 1000 meters per day.
    "1 per | DAPjm-ElectrMtr per | x on-demand Mtr read cmd": 1 per meter per command.
    "1 per | DAPjm-connected-PHEV per | 2-4 per day": 1 per PHEV each of 2-4 times a day,
    read as 2-4 per PHEV per day. A count "x" (unknown) leaves count_min/count_max unset.
    """
    parts = [part.strip() for part in words.split("|")]
    if len(parts) != 3:
        raise ValueError('expected three parts separated by "|": count, population, period')
    head = re.fullmatch(
        r"(?P<count>x|\d+(?:\s*-\s*\d+)?)\s+per(?:\s+(?P<scale>\d+)\s+per)?", parts[0]
    )
    if head is None:
        raise ValueError(f'cannot read the count "{parts[0]}": expected "N[-M] per [K per]"')
    population = re.fullmatch(r"(?P<name>\S.*?)\s+per", parts[1])
    if population is None:
        raise ValueError(f'cannot read the population "{parts[1]}": expected "<name> per"')
    count_min = count_max = None
    if head["count"] != "x":
        low, _, high = head["count"].partition("-")
        count_min, count_max = int(low), int(high or low)
    rest, note = parts[2], None
    remark = re.fullmatch(r"(?P<rest>.*?)\s*\((?P<note>[^()]+)\)", rest)
    if remark is not None:
        rest, note = remark["rest"], remark["note"].strip()
    trigger, period = None, _period(rest)
    times = re.fullmatch(r"(?P<low>\d+)(?:\s*-\s*(?P<high>\d+))?\s+per\s+(?P<unit>\w+)", rest)
    triggered = re.fullmatch(r"(?P<trigger>.+?)\s+per\s+(?P<unit>\w+)", rest)
    if period is None and times is not None and _period(times["unit"]) is not None:
        # "1 per PHEV per 2-4 per day": the count happens 2-4 times in the period.
        period = _period(times["unit"])
        if count_min is not None and count_max is not None:
            count_min *= int(times["low"])
            count_max *= int(times["high"] or times["low"])
    elif period is None and triggered is not None and _period(triggered["unit"]) is not None:
        trigger, period = triggered["trigger"], _period(triggered["unit"])
    elif period is None and rest and not re.search(r"\bper\b", rest):
        trigger = rest
    elif period is None:
        raise ValueError(f'cannot read the period "{parts[2]}": expected a period or a trigger')
    return Rate(
        count_min=count_min,
        count_max=count_max,
        per_population=int(head["scale"] or 1),
        population=population["name"],
        trigger=trigger,
        period_seconds=period,
        note=note,
    )


def parse_size(words: str) -> Size:
    """Bytes: "25" -> 25..25, "200 - 2400" -> 200..2400, "xMB" -> symbolic (left open).

    A number may say what it is for: "1600 for 4hr of data - 2400 for 6hr of data" is
    1600..2400.
    """
    text = words.strip()
    if re.fullmatch(r"[a-z]+[kKMG]?B", text):
        return Size(None, None, text)
    numbers = []
    for part in re.split(r"\s+-\s+", text):
        match = re.fullmatch(r"(\d+)(?:\s+for\s+\S.*)?", part)
        if match is None:
            raise ValueError(f'cannot read "{part}": expected "N", "N - M" or "N for <what>"')
        numbers.append(int(match[1]))
    if len(numbers) > 2:
        raise ValueError("more than two sizes")
    low, high = numbers[0], numbers[-1]
    if low == 0 or low > high:
        raise ValueError(f"{low} - {high} is not a range of bytes")
    return Size(low, high, None)


def parse_targets(words: str) -> tuple[str, ...]:
    """The actors of a target cell: "CIS/Billing - Utility, MDMS, NMS" -> three."""
    actors = tuple(actor.strip() for actor in words.split(","))
    if not all(actors):
        raise ValueError("an empty actor in the list")
    return actors


# ---- checking and loading -----------------------------------------------------------------


class _RowProblem(Exception):
    def __init__(self, field: str, problem: str) -> None:
        super().__init__(problem)
        self.field = field
        self.problem = problem


def _agree(words_field: str, words: str, parse: Callable[[str], Any]) -> Any:
    try:
        return parse(words)
    except ValueError as exc:
        raise _RowProblem(words_field, f'cannot read "{words}": {exc}') from exc


def _same(field: str, words: str, expected: object, found: object) -> None:
    if expected != found:
        raise _RowProblem(field, f'the words "{words}" give {expected!r}, the field has {found!r}')


def _check_row(row: FlowRow) -> None:
    """Parse the row's words again and compare; check the modelling fields fit together."""
    _same("targets", row.target, _agree("target", row.target, parse_targets), row.targets)
    window = _agree("clock", row.clock, parse_clock)
    _same("clock_from_hour", row.clock, window[0], row.clock_from_hour)
    _same("clock_to_hour", row.clock, window[1], row.clock_to_hour)
    _same("rate", row.how_often, _agree("how_often", row.how_often, parse_how_often), row.rate)
    thresholds = _agree("reliability", row.reliability, parse_reliability)
    _same("reliability_thresholds", row.reliability, thresholds, row.reliability_thresholds)
    latency = _agree("latency", row.latency, parse_latency)
    _same("latency_seconds", row.latency, latency, row.latency_seconds)
    size = _agree("size", row.size, parse_size)
    _same("size_min_bytes", row.size, size.min_bytes, row.size_min_bytes)
    _same("size_max_bytes", row.size, size.max_bytes, row.size_max_bytes)
    _same("size_symbolic", row.size, size.symbolic, row.size_symbolic)

    if (row.modelled_by == "meter-agent") != bool(row.agent_flows):
        raise _RowProblem("agent_flows", "set exactly when modelled_by is meter-agent")
    if row.modelled_by != "meter-agent" and row.model_note is None:
        raise _RowProblem("model_note", f"required when modelled_by is {row.modelled_by}")
    if row.modelled_by in ("gateway", "han-ae", "esi") and not row.via:
        raise _RowProblem("via", f"required when modelled_by is {row.modelled_by}")
    if row.id in row.via:
        raise _RowProblem("via", "a row cannot be carried over itself")
    for name, values in (("agent_flows", row.agent_flows), ("via", row.via)):
        if len(set(values)) != len(values):
            raise _RowProblem(name, "lists an id twice")


def _describe(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "row"


def _load_table(path: Path) -> list[FlowRow]:
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise CatalogueError(path, None, None, f"cannot read: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CatalogueError(path, None, None, f"not valid TOML: {exc}") from exc
    unknown = sorted(set(data) - {"table", "row"})
    if unknown:
        raise CatalogueError(path, None, unknown[0], "unknown key (expected table and [[row]])")
    table = data.get("table")
    if not isinstance(table, str) or not table.strip():
        raise CatalogueError(path, None, "table", "the table's caption is missing or empty")
    raw_rows = data.get("row")
    if not isinstance(raw_rows, list) or not raw_rows:
        raise CatalogueError(path, None, "row", "no [[row]] entries")

    rows = []
    for index, raw in enumerate(raw_rows, start=1):
        if not isinstance(raw, dict):
            raise CatalogueError(path, f"#{index}", None, "a row must be a TOML table ([[row]])")
        row_id = raw.get("id") if isinstance(raw.get("id"), str) else f"#{index}"
        if "table" in raw:
            raise CatalogueError(path, row_id, "table", "set once per file, not per row")
        try:
            row = FlowRow.model_validate({**raw, "table": table})
        except ValidationError as exc:
            errors = exc.errors()
            problems = "; ".join(f"{_describe(e['loc'])}: {e['msg']}" for e in errors)
            raise CatalogueError(path, row_id, _describe(errors[0]["loc"]), problems) from exc
        try:
            _check_row(row)
        except _RowProblem as problem:
            raise CatalogueError(path, row_id, problem.field, problem.problem) from problem
        rows.append(row)
    return rows


@dataclass(frozen=True)
class Catalogue:
    """The loaded rows, in file order and table order."""

    rows: tuple[FlowRow, ...]

    def __iter__(self) -> Iterator[FlowRow]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, row_id: str) -> FlowRow:
        for row in self.rows:
            if row.id == row_id:
                return row
        raise KeyError(row_id)

    @property
    def tables(self) -> tuple[str, ...]:
        """The table captions, in catalogue order."""
        return tuple(dict.fromkeys(row.table for row in self.rows))

    def in_table(self, table: str) -> tuple[FlowRow, ...]:
        return tuple(row for row in self.rows if row.table == table)

    def counts(self) -> Mapping[str, int]:
        """Rows per table caption."""
        return {table: len(self.in_table(table)) for table in self.tables}

    def agent_flow_ids(self) -> tuple[str, ...]:
        """Every meter-agent flow id the catalogue names."""
        return tuple(flow for row in self.rows for flow in row.agent_flows)

    def for_agent_flow(self, flow_id: str) -> FlowRow:
        """The row a meter-agent flow implements."""
        for row in self.rows:
            if flow_id in row.agent_flows:
                return row
        raise KeyError(flow_id)


def load_catalogue(directory: str | Path = DEFAULT_DIRECTORY) -> Catalogue:
    """Load and check every `*.toml` table of `directory`; CatalogueError on the first fault."""
    folder = Path(directory)
    paths = sorted(folder.glob("*.toml"))
    if not paths:
        raise CatalogueError(folder, None, None, "no flow tables (*.toml) here")
    rows: list[FlowRow] = []
    where: dict[str, Path] = {}
    agent_flows: dict[str, str] = {}
    for path in paths:
        for row in _load_table(path):
            if row.id in where:
                raise CatalogueError(path, row.id, "id", f"already used in {where[row.id]}")
            where[row.id] = path
            for flow in row.agent_flows:
                if flow in agent_flows:
                    raise CatalogueError(
                        path, row.id, "agent_flows", f"{flow} already maps to {agent_flows[flow]}"
                    )
                agent_flows[flow] = row.id
            rows.append(row)
    for row in rows:
        for other in row.via:
            if other not in where:
                raise CatalogueError(where[row.id], row.id, "via", f"no row has the id {other}")
    return Catalogue(tuple(rows))


def main(argv: list[str] | None = None) -> int:
    """Check a catalogue directory and print its row count per table."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1:
        print("usage: python -m interop.catalogue [DIRECTORY]", file=sys.stderr)
        return 2
    try:
        catalogue = load_catalogue(args[0] if args else DEFAULT_DIRECTORY)
    except CatalogueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for table, count in catalogue.counts().items():
        print(f"{count:4d}  {table}")
    print(f"{len(catalogue):4d}  rows in {len(catalogue.tables)} tables")
    return 0


if __name__ == "__main__":
    sys.exit(main())
