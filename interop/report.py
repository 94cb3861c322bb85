"""The interoperability run report: one run's results per catalogue row, as JSON, Markdown, HTML.

The runner hands over a plain, JSON-serialisable dict (schema `SCHEMA`, described by the
`Report` model below: every key is present, null where a value is unknown). This module checks
it and writes three files into a directory:

- `report.json`: the checked data, keys in schema order, each list of numbers on one line;
- `report.md`: the run's settings, a summary line, one table per catalogue table (the row's
  caption) and the failing rows with their reasons;
- `report.html`: one self-contained page that works offline (plotly.js, as the installed
  `plotly` package ships it, is embedded once): the same header and tables, colour-coded, and
  per flow family a latency chart (one box per row on a log axis, with the row's latency
  budget marked) and a reliability chart (measured against required).

Usage: `write_report(data, directory)`, or from a saved file
`python -m interop.report report.json OUTDIR`.
"""

from __future__ import annotations

import functools
import html
import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCHEMA = "gridm2m-interop-report/2"

# Latency samples kept per row (the runner samples down to this many).
MAX_SAMPLES = 2000

# The meter agent's families (docs/flows.md) and the head-end's, in the order the report shows
# them. A row with another family comes after these; a row without one goes under "other".
FAMILIES = (
    "reading",
    "ondemand",
    "event",
    "prepay",
    "drdlc",
    "han",
    "firmware",
    "phev",
    "command",
    "status",
)
FAMILY_TITLES = {
    "reading": "Meter reading",
    "ondemand": "On-demand reads",
    "event": "Meter events",
    "prepay": "Pre-pay",
    "drdlc": "DR/DLC",
    "han": "Premise network (HAN)",
    "firmware": "Firmware and program update",
    "phev": "PHEV (head-end to DAP)",
    "command": "Head-end commands",
    "status": "Status",
    "other": "Other",
}

Status = Literal["pass", "fail", "not-modelled", "no-traffic"]
STATUS_WORDS: dict[str, str] = {
    "pass": "PASS",
    "fail": "FAIL",
    "not-modelled": "NOT MODELLED",
    "no-traffic": "NO TRAFFIC",
}
STATUS_COLOURS: dict[str, str] = {
    "pass": "#1a7f37",
    "fail": "#cf222e",
    "not-modelled": "#6e7781",
    "no-traffic": "#9a6700",
}

_ID = r"^[a-z0-9]+(-[a-z0-9]+)*$"
_Count = Annotated[int, Field(ge=0)]
_NonNegative = Annotated[float, Field(ge=0)]
_Share = Annotated[float, Field(ge=0, le=1)]
_Text = Annotated[str, Field(min_length=1)]


class ReportError(ValueError):
    """A report that does not follow the schema: which field (and row), and why."""

    def __init__(self, field: str, problem: str, row_id: str | None = None) -> None:
        self.field = field
        self.problem = problem
        self.row_id = row_id
        where = f"field {field}" if row_id is None else f"field {field} (row {row_id})"
        super().__init__(f"invalid interop report: {where}: {problem}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class Impairment(_Strict):
    """The network impairment applied during the run."""

    loss: _Share
    delay_ms: _NonNegative
    jitter_ms: _NonNegative


class Settings(_Strict):
    meters: _Count
    transports: list[_Text]
    clock_speed: Annotated[float, Field(gt=0)]
    duration_s: _NonNegative
    row_filter: str | None
    flows_dir: str
    impairment: Impairment


class System(_Strict):
    headend: str
    gateway: str
    attached: bool  # the run used a system that was already running


class Summary(_Strict):
    rows: _Count
    executed: _Count
    passed: _Count
    failed: _Count
    not_modelled: _Count
    no_traffic: _Count


class Latency(_Strict):
    p50: _NonNegative | None
    p95: _NonNegative | None
    p99: _NonNegative | None
    max: _NonNegative | None


class Sizes(_Strict):
    min: _Count | None
    max: _Count | None
    spec_min: _Count | None
    spec_max: _Count | None
    spec_symbolic: str | None
    accepted_min: _Count | None  # the sizes the rule accepts (interop/sizes.py)
    accepted_max: _Count | None
    rule: str
    out_of_range: _Count
    offending: list[_Count]  # distinct sizes outside, the smallest and largest


class RowResult(_Strict):
    """One catalogue row's result in the run."""

    id: Annotated[str, Field(pattern=_ID)]
    table: _Text
    source: str
    target: str
    use_case: str
    requirement: str
    payload_type: str
    family: str | None
    modelled_by: str
    status: Status
    reason: str | None
    sent: _Count
    delivered: _Count
    within_budget: _Count
    reliability_required: Annotated[float, Field(gt=0, le=1)]
    reliability_above: bool  # the words say "> N%": strictly more than the fraction
    reliability_measured: _Share | None
    latency_budget_s: Annotated[float, Field(gt=0)]
    latency_s: Latency
    size_bytes: Sizes
    latency_samples_s: list[_NonNegative]


class Report(_Strict):
    """A whole run: when, with what settings, against what system, and the rows' results."""

    schema_: Literal["gridm2m-interop-report/2"] = Field(alias="schema")
    complete: bool  # false when interrupted or a part failed
    incomplete_reason: str | None
    started: str  # ISO 8601, UTC
    finished: str
    wall_s: _NonNegative
    settings: Settings
    system: System
    summary: Summary
    rows: list[RowResult]


# ---- checking ---------------------------------------------------------------------------------


def _path(loc: Iterable[int | str]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or "report"


def _row_id(data: Mapping[str, Any], loc: tuple[int | str, ...]) -> str | None:
    """The id of the row a pydantic error location points into, when it has a readable one."""
    if len(loc) < 2 or loc[0] != "rows" or not isinstance(loc[1], int):
        return None
    rows = data.get("rows")
    if not isinstance(rows, list) or not 0 <= loc[1] < len(rows):
        return None
    row = rows[loc[1]]
    row_id = row.get("id") if isinstance(row, dict) else None
    return row_id if isinstance(row_id, str) else None


def _check_time(field: str, text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ReportError(field, f"{text!r} is not an ISO 8601 date and time") from exc
    if moment.utcoffset() != timedelta(0):
        raise ReportError(field, f"{text!r} is not in UTC (expected a Z or +00:00 suffix)")
    return moment


def _check_row(index: int, row: RowResult) -> None:
    def fail(field: str, problem: str) -> ReportError:
        return ReportError(f"rows[{index}].{field}", problem, row.id)

    if row.delivered > row.sent:
        raise fail("delivered", f"{row.delivered} delivered but only {row.sent} sent")
    if row.within_budget > row.delivered:
        raise fail(
            "within_budget", f"{row.within_budget} within budget but {row.delivered} delivered"
        )
    samples = len(row.latency_samples_s)
    if samples > MAX_SAMPLES:
        raise fail("latency_samples_s", f"{samples} samples, at most {MAX_SAMPLES} are kept")
    if samples > row.delivered:
        raise fail("latency_samples_s", f"{samples} samples for {row.delivered} delivered")
    latency = row.latency_s
    previous: tuple[str, float] | None = None
    for name in ("p50", "p95", "p99", "max"):
        value = getattr(latency, name)
        if value is None:
            continue
        if previous is not None and value < previous[1]:
            raise fail(f"latency_s.{name}", f"{value} is below {previous[0]} ({previous[1]})")
        previous = (name, value)
    sizes = row.size_bytes
    for low, high in (("min", "max"), ("spec_min", "spec_max"), ("accepted_min", "accepted_max")):
        low_value, high_value = getattr(sizes, low), getattr(sizes, high)
        if low_value is not None and high_value is not None and low_value > high_value:
            raise fail(f"size_bytes.{high}", f"{high_value} is below {low} ({low_value})")


def _check(report: Report) -> None:
    started = _check_time("started", report.started)
    finished = _check_time("finished", report.finished)
    if finished < started:
        raise ReportError("finished", f"{report.finished} is before started ({report.started})")
    if report.complete and report.incomplete_reason is not None:
        raise ReportError("incomplete_reason", "set on a complete run (expected null)")
    seen: dict[str, int] = {}
    for index, row in enumerate(report.rows):
        if row.id in seen:
            raise ReportError(
                f"rows[{index}].id", f"the id is also used by rows[{seen[row.id]}]", row.id
            )
        seen[row.id] = index
        _check_row(index, row)
    summary = report.summary
    if summary.rows != len(report.rows):
        raise ReportError("summary.rows", f"{summary.rows}, but the report has {len(report.rows)}")
    for field, status in (
        ("passed", "pass"),
        ("failed", "fail"),
        ("not_modelled", "not-modelled"),
        ("no_traffic", "no-traffic"),
    ):
        count = sum(1 for row in report.rows if row.status == status)
        if getattr(summary, field) != count:
            raise ReportError(
                f"summary.{field}",
                f"{getattr(summary, field)}, but {count} rows have status {status}",
            )
    low, high = summary.passed + summary.failed, summary.rows - summary.not_modelled
    if not low <= summary.executed <= high:
        raise ReportError(
            "summary.executed",
            f"{summary.executed} is outside {low} (passed + failed) "
            f"to {high} (rows - not modelled)",
        )


def validate_report(data: object) -> Report:
    """Check `data` against the schema; ReportError names the first faulty field (and row)."""
    if isinstance(data, Report):
        data = data.model_dump(mode="json", by_alias=True)
    if not isinstance(data, Mapping):
        raise ReportError("report", f"expected a JSON object, not {type(data).__name__}")
    if "schema" in data and data["schema"] != SCHEMA:
        raise ReportError("schema", f"{data['schema']!r} is not {SCHEMA!r}")
    try:
        report = Report.model_validate(dict(data))
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(first["loc"])
        problem = first["msg"]
        if len(exc.errors()) > 1:
            problem += f" (and {len(exc.errors()) - 1} more problems)"
        raise ReportError(_path(loc), problem, _row_id(data, loc)) from exc
    _check(report)
    return report


# ---- words and numbers ------------------------------------------------------------------------


def fmt_seconds(value: float | None) -> str:
    """A duration in a readable unit: 0.0042 -> "4.2 ms", 300 -> "5 min", 14400 -> "4 h"."""
    if value is None:
        return "—"
    if value < 1:
        return f"{value * 1000:.3g} ms"
    if value < 60:
        return f"{value:.3g} s"
    if value < 3600:
        return f"{value / 60:.3g} min"
    return f"{value / 3600:.3g} h"


def fmt_share(value: float | None) -> str:
    """A fraction as a percentage, to at most two decimals: 0.995 -> "99.5 %"."""
    if value is None:
        return "—"
    text = f"{value * 100:.2f}".rstrip("0").rstrip(".")
    if text == "100" and value < 1:
        return "> 99.99 %"  # do not round a shortfall up to a perfect score
    return f"{text} %"


def fmt_required(row: RowResult) -> str:
    return ("> " if row.reliability_above else "≥ ") + fmt_share(row.reliability_required)


def _range(low: int | None, high: int | None) -> str:
    if low is None and high is None:
        return "—"
    if low == high or high is None:
        return str(low)
    if low is None:
        return str(high)
    return f"{low}\N{EN DASH}{high}"


def fmt_sizes_seen(row: RowResult) -> str:
    sizes = row.size_bytes
    text = _range(sizes.min, sizes.max)
    if sizes.out_of_range:
        shown = ", ".join(str(size) for size in sizes.offending)
        text += f" ({sizes.out_of_range} out of range: {shown})"
    return text


def fmt_sizes_spec(row: RowResult) -> str:
    """The table's size, and the sizes its rule accepts where they differ (a nominal size)."""
    sizes = row.size_bytes
    if sizes.spec_symbolic is not None:
        return sizes.spec_symbolic
    text = _range(sizes.spec_min, sizes.spec_max)
    accepted = (sizes.accepted_min, sizes.accepted_max)
    if None not in accepted and accepted != (sizes.spec_min, sizes.spec_max):
        text += f" ({_range(*accepted)})"
    return text


def fmt_latencies(row: RowResult) -> str:
    latency = row.latency_s
    return " / ".join(fmt_seconds(v) for v in (latency.p50, latency.p95, latency.p99, latency.max))


def result_words(row: RowResult) -> str:
    """PASS, FAIL, NOT MODELLED (reason), NO TRAFFIC (reason): the reason of a failure is
    listed separately."""
    words = STATUS_WORDS[row.status]
    if row.status in ("not-modelled", "no-traffic") and row.reason:
        words += f" ({row.reason})"
    return words


def reliability_short(row: RowResult) -> bool:
    """Whether the measured reliability misses the requirement."""
    measured = row.reliability_measured
    if measured is None:
        return False
    required = row.reliability_required
    return measured <= required if row.reliability_above else measured < required


def _verdict(report: Report) -> str:
    summary = report.summary
    if summary.failed:
        return f"FAIL: {summary.failed} of {summary.executed} executed rows failed"
    if not summary.executed:
        return "NOTHING EXECUTED"
    return f"PASS: all {summary.passed} rows with a result passed"


def _impairment(impairment: Impairment) -> str:
    if not (impairment.loss or impairment.delay_ms or impairment.jitter_ms):
        return "none"
    return (
        f"loss {fmt_share(impairment.loss)}, delay {impairment.delay_ms:g} ms, "
        f"jitter {impairment.jitter_ms:g} ms"
    )


def _settings_lines(report: Report) -> list[tuple[str, str]]:
    """(label, value) pairs for the header, in plain text."""
    settings, system = report.settings, report.system
    return [
        ("Started", report.started),
        ("Finished", report.finished),
        ("Wall time", fmt_seconds(report.wall_s)),
        ("Meters", str(settings.meters)),
        ("Transports", ", ".join(settings.transports) or "—"),
        ("Clock speed", f"{settings.clock_speed:g}\N{MULTIPLICATION SIGN}"),
        ("Duration", fmt_seconds(settings.duration_s)),
        ("Impairment", _impairment(settings.impairment)),
        ("Row filter", settings.row_filter or "none"),
        ("Flow catalogue", settings.flows_dir),
        ("Head-end", system.headend),
        ("Gateway", system.gateway),
        ("System", "attached to a running one" if system.attached else "started for the run"),
    ]


def _summary_line(report: Report) -> str:
    summary = report.summary
    return (
        f"Rows: {summary.rows} · executed {summary.executed} · passed {summary.passed} · "
        f"failed {summary.failed} · not modelled {summary.not_modelled} · "
        f"no traffic {summary.no_traffic}"
    )


def _status_line(report: Report) -> str:
    if report.complete:
        return "Complete run."
    return f"INCOMPLETE: {report.incomplete_reason or 'no reason given'}"


def _by_table(report: Report) -> dict[str, list[RowResult]]:
    tables: dict[str, list[RowResult]] = {}
    for row in report.rows:
        tables.setdefault(row.table, []).append(row)
    return tables


def _by_family(report: Report) -> dict[str, list[RowResult]]:
    families: dict[str, list[RowResult]] = {}
    for row in report.rows:
        families.setdefault(row.family or "other", []).append(row)

    def order(name: str) -> tuple[int, str]:
        if name in FAMILIES:
            return FAMILIES.index(name), name
        return (len(FAMILIES) + (1 if name == "other" else 0)), name

    return {name: families[name] for name in sorted(families, key=order)}


COLUMNS = (
    "id",
    "source → target",
    "payload",
    "sent",
    "delivered",
    "within budget",
    "reliability (required)",
    "latency p50 / p95 / p99 / max",
    "budget",
    "size seen",
    "size spec",
    "result",
)


def _cells(row: RowResult) -> list[str]:
    """The plain-text cells of a row, in COLUMNS order."""
    return [
        row.id,
        f"{row.source} → {row.target}",
        row.payload_type,
        str(row.sent),
        str(row.delivered),
        str(row.within_budget),
        f"{fmt_share(row.reliability_measured)} ({fmt_required(row)})",
        fmt_latencies(row),
        fmt_seconds(row.latency_budget_s),
        fmt_sizes_seen(row),
        fmt_sizes_spec(row),
        result_words(row),
    ]


# ---- Markdown ---------------------------------------------------------------------------------

_NUMERIC = frozenset({"sent", "delivered", "within budget"})


def _md(text: str) -> str:
    """Text for Markdown: on one line, with HTML and Markdown markup characters made literal."""
    text = " ".join(text.split()).replace("&", "&amp;").replace("<", "&lt;")
    for char in "\\`*_|":
        text = text.replace(char, "\\" + char)
    return text


def render_markdown(report: Report) -> str:
    lines = ["# GridM2M interop run", ""]
    status = _status_line(report)
    lines += [f"**{_md(status)}**" if not report.complete else status, ""]
    lines += [f"**{_verdict(report)}**", ""]
    lines += [f"- {label}: {_md(value)}" for label, value in _settings_lines(report)]
    lines += ["", _summary_line(report), ""]
    for table, rows in _by_table(report).items():
        lines += [f"## {_md(table)}", ""]
        lines.append("| " + " | ".join(COLUMNS) + " |")
        lines.append("|" + "|".join("---:" if c in _NUMERIC else "---" for c in COLUMNS) + "|")
        for row in rows:
            cells = [_md(cell) for cell in _cells(row)]
            cells[0] = f"`{row.id}`"
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    failing = [row for row in report.rows if row.status == "fail"]
    lines += ["## Failing rows", ""]
    if failing:
        lines += [f"- `{row.id}`: {_md(row.reason or 'no reason given')}" for row in failing]
    else:
        lines.append("None.")
    lines.append("")
    return "\n".join(lines)


# ---- HTML -------------------------------------------------------------------------------------

# Log-axis ticks from a millisecond to a day.
_TICKS = (
    (0.001, "1 ms"),
    (0.01, "10 ms"),
    (0.1, "100 ms"),
    (1, "1 s"),
    (5, "5 s"),
    (15, "15 s"),
    (30, "30 s"),
    (60, "1 min"),
    (300, "5 min"),
    (900, "15 min"),
    (3600, "1 h"),
    (4 * 3600, "4 h"),
    (86400, "1 d"),
)
_FLOOR_S = 0.001  # latencies below this are drawn at it (a log axis has no zero)
_INK = "#24292f"


@functools.cache
def plotly_js() -> str:
    """plotly.min.js, as the installed plotly Python package bundles it."""
    bundled = resources.files("plotly").joinpath("package_data", "plotly.min.js")
    try:
        return bundled.read_text(encoding="utf-8")
    except OSError as exc:
        raise RuntimeError(
            "plotly.min.js was not found in the installed plotly package "
            "(the HTML report embeds it)"
        ) from exc


def _round(value: float) -> float:
    """A sample for drawing: four significant digits, at least the log axis floor."""
    return float(f"{max(value, _FLOOR_S):.4g}")


def _log_range(values: Iterable[float]) -> list[float]:
    finite = [max(v, _FLOOR_S) for v in values]
    low, high = min(finite), max(finite)
    return [round(math.log10(low) - 0.25, 3), round(math.log10(high) + 0.25, 3)]


# Title on the left, legend on the right, both above the plot, clear of the axis labels.
_LEGEND = {"orientation": "h", "x": 1, "xanchor": "right", "y": 1.0, "yanchor": "bottom"}
_MARGIN = {"l": 30, "r": 20, "t": 50, "b": 30}


def _title(text: str) -> dict[str, Any]:
    return {"text": text, "font": {"size": 14}, "x": 0, "xanchor": "left", "xref": "paper"}


def _y_axis(ids: list[str]) -> dict[str, Any]:
    return {
        "type": "category",
        "categoryorder": "array",
        "categoryarray": ids,
        "autorange": "reversed",
        "automargin": True,
    }


def _latency_figure(rows: list[RowResult]) -> dict[str, Any]:
    """One horizontal box per row on a log axis, and each row's budget as a tick."""
    ids = [row.id for row in rows]
    traces: list[dict[str, Any]] = []
    drawn: list[float] = []
    for row in rows:
        samples = [_round(v) for v in row.latency_samples_s]
        drawn += samples
        if not samples:
            continue
        colour = STATUS_COLOURS[row.status]
        traces.append(
            {
                "type": "box",
                "orientation": "h",
                "name": row.id,
                "x": samples,
                "boxpoints": "outliers",
                "marker": {"color": colour, "size": 3},
                "line": {"color": colour, "width": 1.5},
                "showlegend": False,
            }
        )
    budgets = [row.latency_budget_s for row in rows]
    traces.append(
        {
            "type": "scatter",
            "mode": "markers",
            "name": "latency budget",
            "x": budgets,
            "y": ids,
            "marker": {"symbol": "line-ns", "size": 22, "line": {"width": 3, "color": _INK}},
            "hovertext": [f"{row.id}: budget {fmt_seconds(row.latency_budget_s)}" for row in rows],
            "hoverinfo": "text",
        }
    )
    return {
        "data": traces,
        "layout": {
            "title": _title("Latency, one way (log scale)"),
            "height": 110 + 30 * len(rows),
            "margin": _MARGIN,
            "xaxis": {
                "type": "log",
                "range": _log_range(drawn + budgets),
                "tickvals": [value for value, _ in _TICKS],
                "ticktext": [label for _, label in _TICKS],
                "zeroline": False,
            },
            "yaxis": _y_axis(ids),
            "legend": _LEGEND,
            "showlegend": True,
        },
    }


def _reliability_figure(rows: list[RowResult]) -> dict[str, Any]:
    """Per row the measured reliability (a dot in the status colour) and the requirement."""
    ids = [row.id for row in rows]
    measured = [row for row in rows if row.reliability_measured is not None]
    percents = [100 * row.reliability_required for row in rows]
    percents += [100 * (row.reliability_measured or 0) for row in measured]
    low = min(percents)
    low = max(0.0, low - max(0.5, (100 - low) * 0.3))
    high = 100 + max(0.2, (100 - low) * 0.05)
    return {
        "data": [
            {
                "type": "scatter",
                "mode": "markers",
                "name": "required",
                "x": [round(100 * row.reliability_required, 4) for row in rows],
                "y": ids,
                "marker": {"symbol": "line-ns", "size": 22, "line": {"width": 3, "color": _INK}},
                "hovertext": [f"{row.id}: required {fmt_required(row)}" for row in rows],
                "hoverinfo": "text",
            },
            {
                "type": "scatter",
                "mode": "markers",
                "name": "measured",
                "x": [round(100 * (row.reliability_measured or 0), 4) for row in measured],
                "y": [row.id for row in measured],
                "marker": {
                    "size": 11,
                    "color": [STATUS_COLOURS[row.status] for row in measured],
                    "line": {"width": 1, "color": "#ffffff"},
                },
                "hovertext": [
                    f"{row.id}: measured {fmt_share(row.reliability_measured)}"
                    f" ({row.within_budget} of {row.sent} within budget)"
                    for row in measured
                ],
                "hoverinfo": "text",
            },
        ],
        "layout": {
            "title": _title("Reliability against requirement"),
            "height": 110 + 30 * len(rows),
            "margin": _MARGIN,
            "xaxis": {"range": [round(low, 3), round(high, 3)], "ticksuffix": " %"},
            "yaxis": _y_axis(ids),
            "legend": _LEGEND,
            "showlegend": True,
        },
    }


def figures(report: Report) -> list[dict[str, Any]]:
    """The charts of the HTML page: per family with executed rows, latency then reliability.

    Each is {"div", "family", "kind", "data", "layout"}; not-modelled rows are left out.
    """
    charts: list[dict[str, Any]] = []
    for index, (family, rows) in enumerate(_by_family(report).items()):
        executed = [row for row in rows if row.status != "not-modelled"]
        if not executed:
            continue
        for kind, make in (("latency", _latency_figure), ("reliability", _reliability_figure)):
            div = f"chart-{index}-{kind}"
            charts.append({"div": div, "family": family, "kind": kind, **make(executed)})
    return charts


def _script_json(value: Any) -> str:
    """JSON safe to place inside a <script> element (no "</script>", no HTML comment)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; color: #24292f; margin: 24px; }
h1 { margin: 0 0 8px; font-size: 24px; }
h2 { margin: 28px 0 8px; font-size: 18px; }
h3 { margin: 20px 0 4px; font-size: 16px; }
.banner { padding: 8px 12px; border-radius: 6px; font-weight: 600; margin: 8px 0; }
.banner.complete { background: #dafbe1; color: #1a7f37; }
.banner.incomplete { background: #fff8c5; color: #7d4e00; border: 1px solid #d4a72c; }
.verdict.fail { color: #cf222e; } .verdict.pass { color: #1a7f37; }
dl.settings { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; }
dl.settings dt { color: #57606a; } dl.settings dd { margin: 0; }
.summary { font-weight: 600; }
table { border-collapse: collapse; font-size: 13px; width: 100%; }
th, td { border: 1px solid #d0d7de; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.over { color: #cf222e; font-weight: 600; }
td.late { color: #9a6700; font-weight: 600; }
td.result { font-weight: 600; color: #ffffff; }
tr.pass td.result { background: #1a7f37; } tr.fail td.result { background: #cf222e; }
tr.not-modelled td.result { background: #6e7781; } tr.no-traffic td.result { background: #9a6700; }
tr.fail { background: #ffebe9; } tr.not-modelled { color: #57606a; }
tr.no-traffic { background: #fff8c5; }
code { font-size: 12px; }
.charts { display: grid; grid-template-columns: 3fr 2fr; gap: 12px; }
.note { color: #57606a; }
"""

_DRAW = """
(function () {
  var figures = JSON.parse(document.getElementById("report-figures").textContent);
  var config = {responsive: true, displaylogo: false};
  figures.forEach(function (f) { Plotly.newPlot(f.div, f.data, f.layout, config); });
})();
"""


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _html_table(rows: list[RowResult]) -> str:
    head = "".join(f"<th>{_e(column)}</th>" for column in COLUMNS)
    body = []
    for row in rows:
        cells = _cells(row)
        latency = row.latency_s
        over_budget = latency.max is not None and latency.max > row.latency_budget_s
        classes = [""] * len(COLUMNS)
        for name in _NUMERIC:
            classes[COLUMNS.index(name)] = "num"
        if reliability_short(row):
            classes[COLUMNS.index("reliability (required)")] = "over"
        if over_budget:
            classes[COLUMNS.index("latency p50 / p95 / p99 / max")] = "late"
        if row.size_bytes.out_of_range:
            classes[COLUMNS.index("size seen")] = "over"
        classes[-1] = "result"
        tds = []
        for column, (cell, cls) in enumerate(zip(cells, classes, strict=True)):
            text = f"<code>{_e(cell)}</code>" if column == 0 else _e(cell)
            attribute = f' class="{cls}"' if cls else ""
            if column == 1:
                attribute += f' title="{_e(row.requirement)}"'
            tds.append(f"<td{attribute}>{text}</td>")
        body.append(f'<tr class="{_e(row.status)}" id="row-{_e(row.id)}">{"".join(tds)}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render_html(report: Report) -> str:
    """The page: header, tables, failing rows, and the charts with plotly.js inline."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>GridM2M interop run {_e(report.started)}</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>GridM2M interop run</h1>",
    ]
    banner = "complete" if report.complete else "incomplete"
    parts.append(f'<div class="banner {banner}">{_e(_status_line(report))}</div>')
    verdict = "fail" if report.summary.failed else "pass"
    parts.append(f'<p class="verdict {verdict}"><strong>{_e(_verdict(report))}</strong></p>')
    parts.append('<dl class="settings">')
    parts += [f"<dt>{_e(key)}</dt><dd>{_e(value)}</dd>" for key, value in _settings_lines(report)]
    parts.append("</dl>")
    parts.append(f'<p class="summary">{_e(_summary_line(report))}</p>')

    for table, rows in _by_table(report).items():
        parts.append(f"<h2>{_e(table)}</h2>")
        parts.append(_html_table(rows))

    parts.append("<h2>Failing rows</h2>")
    failing = [row for row in report.rows if row.status == "fail"]
    if failing:
        parts.append("<ul>")
        parts += [
            f'<li><a href="#row-{_e(row.id)}"><code>{_e(row.id)}</code></a>: '
            f"{_e(row.reason or 'no reason given')}</li>"
            for row in failing
        ]
        parts.append("</ul>")
    else:
        parts.append("<p>None.</p>")

    charts = figures(report)
    parts.append("<h2>Latency and reliability per flow family</h2>")
    parts.append(
        '<p class="note">Each box spans the quartiles of a row\'s latency samples (up to '
        f"{MAX_SAMPLES} per row), whiskers and dots show the spread; the black tick is the "
        "row's latency budget or required reliability. Latencies under 1 ms are drawn at 1 ms. "
        "Rows not modelled are left out.</p>"
    )
    families = _by_family(report)
    drawn = {chart["family"] for chart in charts}
    for family, rows in families.items():
        if family not in drawn:
            continue
        title = FAMILY_TITLES.get(family, family)
        counts = ", ".join(
            f"{sum(1 for row in rows if row.status == status)} {STATUS_WORDS[status].lower()}"
            for status in STATUS_WORDS
            if any(row.status == status for row in rows)
        )
        divs = "".join(
            f'<div id="{_e(chart["div"])}"></div>' for chart in charts if chart["family"] == family
        )
        parts.append(f"<h3>{_e(title)} <span class='note'>({_e(counts)})</span></h3>")
        parts.append(f'<div class="charts">{divs}</div>')
    if not charts:
        parts.append("<p>No executed rows to draw.</p>")

    data = [{k: chart[k] for k in ("div", "data", "layout")} for chart in charts]
    blob = _script_json(data)
    parts.append(f'<script type="application/json" id="report-figures">{blob}</script>')
    if charts:
        parts.append(f"<script>{plotly_js()}</script>")
        parts.append(f"<script>{_DRAW}</script>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ---- files ------------------------------------------------------------------------------------


def _pretty(value: Any, depth: int = 0) -> str:
    """Indented JSON, keys in the order given, with a list of plain values on one line."""
    inner, outer = "  " * (depth + 1), "  " * depth
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [
            f"{inner}{json.dumps(key, ensure_ascii=False)}: {_pretty(item, depth + 1)}"
            for key, item in value.items()
        ]
        return "{\n" + ",\n".join(items) + f"\n{outer}}}"
    if isinstance(value, list):
        if all(not isinstance(item, dict | list) for item in value):
            return "[" + ", ".join(_pretty(item, depth + 1) for item in value) + "]"
        items = [f"{inner}{_pretty(item, depth + 1)}" for item in value]
        return "[\n" + ",\n".join(items) + f"\n{outer}]"
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def report_json(report: Report) -> str:
    return _pretty(report.model_dump(mode="json", by_alias=True)) + "\n"


def _write(path: Path, text: str) -> None:
    """Write through a temporary file, so a reader never sees half a report."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


RENDERERS: dict[str, tuple[str, Callable[[Report], str]]] = {
    "json": ("report.json", report_json),
    "md": ("report.md", render_markdown),
    "html": ("report.html", render_html),
}


def write_report(data: Mapping[str, Any] | Report, directory: Path) -> dict[str, Path]:
    """Check `data` and write report.json, report.md and report.html into `directory`.

    Returns their paths under the keys "json", "md" and "html". ReportError when the data does
    not follow the schema (nothing is written then).
    """
    report = validate_report(data)
    directory.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for key, (name, render) in RENDERERS.items():
        paths[key] = directory / name
        _write(paths[key], render(report))
    return paths


def main(argv: list[str] | None = None) -> int:
    """Render the Markdown and HTML report again from a report.json."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m interop.report REPORT.json OUTDIR", file=sys.stderr)
        return 2
    source, directory = Path(args[0]), Path(args[1])
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except OSError as exc:
        print(f"error: {source}: cannot read: {exc.strerror}", file=sys.stderr)
        return 1
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        print(f"error: {source}: not JSON: {exc}", file=sys.stderr)
        return 1
    try:
        paths = write_report(data, directory)
    except ReportError as exc:
        print(f"error: {source}: {exc}", file=sys.stderr)
        return 1
    for path in paths.values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
