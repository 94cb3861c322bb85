"""The interop run report: checking a run's results and writing them as JSON, Markdown and HTML.

The report under test is made from real catalogue rows (three tables, every status, an
interrupted run) with latency samples drawn from a seeded generator. The HTML page is also
opened in a real headless Chromium (skipped, with the reason, when none is installed), which
must draw every chart without asking the network for anything. With
GRIDM2M_REPORT_SCREENSHOT=<png path> set, that case saves a picture of the page.
"""

# The report writes ranges with an en dash and the clock speed with a multiplication sign.
# ruff: noqa: RUF001

from __future__ import annotations

import copy
import json
import math
import os
import random
import re
import shutil
from collections.abc import AsyncIterator, Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, async_playwright

from interop.catalogue import FlowRow, load_catalogue
from interop.report import (
    COLUMNS,
    SCHEMA,
    ReportError,
    main,
    plotly_js,
    validate_report,
    write_report,
)
from interop.sizes import size_rule

CATALOGUE = load_catalogue()
INJECTED = '<script>alert("row")</script>'

TOP_KEYS = [
    "schema", "complete", "incomplete_reason", "started", "finished", "wall_s",
    "settings", "system", "summary", "rows",
]  # fmt: skip
ROW_KEYS = [
    "id", "table", "source", "target", "use_case", "requirement", "payload_type", "family",
    "modelled_by", "status", "reason", "sent", "delivered", "within_budget",
    "reliability_required", "reliability_above", "reliability_measured", "latency_budget_s",
    "latency_s", "size_bytes", "latency_samples_s",
]  # fmt: skip


def percentile(values: list[float], share: float) -> float | None:
    """Nearest rank."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def result(
    row_id: str,
    status: str,
    family: str | None,
    *,
    sent: int = 0,
    latencies: tuple[float, float] = (0.0, 0.0),  # lognormal median and spread
    lost: int = 0,
    reason: str | None = None,
    sizes: tuple[int, int] | None = None,
    offending: tuple[int, ...] = (),
) -> dict[str, Any]:
    """A row's entry as the runner makes it, from the catalogue row and simulated samples."""
    row: FlowRow = CATALOGUE.get(row_id)
    rng = random.Random(row_id)
    delivered = sent - lost
    median, spread = latencies
    samples = [round(median * rng.lognormvariate(0, spread), 4) for _ in range(delivered)]
    within = sum(1 for value in samples if value <= row.latency_seconds)
    threshold = row.reliability_thresholds[0]
    rule = size_rule(row)
    return {
        "id": row.id,
        "table": row.table,
        "source": row.source,
        "target": row.target,
        "use_case": row.use_case,
        "requirement": row.requirement,
        "payload_type": row.payload_type,
        "family": family,
        "modelled_by": row.modelled_by,
        "status": status,
        "reason": reason if reason is not None or status != "not-modelled" else row.model_note,
        "sent": sent,
        "delivered": delivered,
        "within_budget": within,
        "reliability_required": threshold.fraction,
        "reliability_above": threshold.above,
        "reliability_measured": round(within / sent, 5) if sent else None,
        "latency_budget_s": float(row.latency_seconds),
        "latency_s": {
            "p50": percentile(samples, 0.5),
            "p95": percentile(samples, 0.95),
            "p99": percentile(samples, 0.99),
            "max": percentile(samples, 1.0),
        },
        "size_bytes": {
            "min": sizes[0] if sizes else None,
            "max": sizes[1] if sizes else None,
            "spec_min": row.size_min_bytes,
            "spec_max": row.size_max_bytes,
            "spec_symbolic": row.size_symbolic,
            "accepted_min": rule.low if rule else None,
            "accepted_max": rule.high if rule else None,
            "rule": rule.rule if rule else "not judged",
            "out_of_range": len(offending),
            "offending": list(offending),
        },
        "latency_samples_s": rng.sample(samples, min(len(samples), 2000)),
    }


def make_report() -> dict[str, Any]:
    """An interrupted run over seven rows of three tables, with every status."""
    rows = [
        # The report is judged on its own: a reason of the report's, whatever the catalogue says.
        result("bulk-read-cmd-cis-to-mdms", "not-modelled", None,
               reason="GridM2M has no CIS/Billing application in this run"),
        result("gas-interval", "pass", "reading", sent=240, latencies=(40.0, 1.2),
               sizes=(1600, 2400)),
        result("mr-multi-interval", "pass", "reading", sent=2600, latencies=(0.08, 0.6),
               sizes=(210, 2390)),
        result("mr-ondemand", "fail", "ondemand", sent=400, latencies=(1.2, 0.7), lost=3,
               sizes=(100, 100)),
        result("mr-ondemand-err", "no-traffic", "ondemand",
               reason="no error answer in this run | 1 per command that fails"),
        result("ev-fault", "pass", "event", sent=35, latencies=(0.05, 0.4), sizes=(25, 278)),
        result("ev-security-alarm", "fail", "event", sent=12, latencies=(0.3, 0.5),
               reason=f"2 payloads outside the size range {INJECTED}", sizes=(25, 900),
               offending=(400, 900)),
    ]  # fmt: skip
    measured = rows[3]["reliability_measured"]
    rows[3]["reason"] = f"{measured:.2%} within 5 s, needs > 98.0%"
    count = {s: sum(1 for r in rows if r["status"] == s) for s in ("pass", "fail", "no-traffic")}
    return {
        "schema": SCHEMA,
        "complete": False,
        "incomplete_reason": "interrupted (Ctrl-C) after 312 s",
        "started": "2026-03-02T09:00:00+00:00",
        "finished": "2026-03-02T09:05:12+00:00",
        "wall_s": 312.4,
        "settings": {
            "meters": 200,
            "transports": ["coap", "mqtt"],
            "clock_speed": 1440.0,
            "duration_s": 600.0,
            "row_filter": None,
            "flows_dir": "configs/flows",
            "impairment": {"loss": 0.01, "delay_ms": 40.0, "jitter_ms": 10.0},
        },
        "system": {"headend": "http://127.0.0.1:8080", "gateway": "dap1", "attached": False},
        "summary": {
            "rows": len(rows),
            "executed": count["pass"] + count["fail"] + count["no-traffic"],
            "passed": count["pass"],
            "failed": count["fail"],
            "not_modelled": 1,
            "no_traffic": count["no-traffic"],
        },
        "rows": rows,
    }


WORDS = {"pass": "PASS", "fail": "FAIL", "not-modelled": "NOT MODELLED", "no-traffic": "NO TRAFFIC"}


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, Path]]:
    """The report data and the files written from it (rendered once for the module)."""
    data = make_report()
    return data, write_report(copy.deepcopy(data), tmp_path_factory.mktemp("report"))


def figures_of(page: str) -> list[dict[str, Any]]:
    found = re.search(r'<script type="application/json" id="report-figures">(.*?)</script>', page)
    assert found is not None
    figures: list[dict[str, Any]] = json.loads(found[1])
    return figures


# ---- the files -------------------------------------------------------------------------------


def test_the_three_files_are_written_and_the_json_round_trips(
    written: tuple[dict[str, Any], dict[str, Path]], tmp_path: Path
) -> None:
    data, paths = written
    assert {key: path.name for key, path in paths.items()} == {
        "json": "report.json",
        "md": "report.md",
        "html": "report.html",
    }
    assert all(path.is_file() for path in paths.values())
    assert sorted(p.name for p in paths["json"].parent.iterdir()) == sorted(
        p.name for p in paths.values()
    )  # no partial files left behind

    loaded = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert loaded == data
    assert list(loaded) == TOP_KEYS
    assert all(list(row) == ROW_KEYS for row in loaded["rows"])
    assert len(loaded["rows"][2]["latency_samples_s"]) == 2000
    report = validate_report(loaded)
    assert [row.id for row in report.rows] == [row["id"] for row in data["rows"]]

    # The same data gives the same bytes (stable key order, nothing time-dependent added).
    again = write_report(loaded, tmp_path)
    for key in paths:
        assert again[key].read_bytes() == paths[key].read_bytes(), key


def test_the_json_keeps_lists_of_numbers_on_one_line(
    written: tuple[dict[str, Any], dict[str, Path]],
) -> None:
    text = written[1]["json"].read_text(encoding="utf-8")
    lines = text.splitlines()
    assert '  "schema": "gridm2m-interop-report/2",' in lines
    samples = [line for line in lines if '"latency_samples_s": [' in line]
    assert len(samples) == 7
    assert all(line.endswith("]") or line.endswith("],") for line in samples)
    assert len(lines) < 400


# ---- Markdown --------------------------------------------------------------------------------


def table_lines(markdown: str) -> dict[str, list[str]]:
    """The cells of each row line (`| `id` | ... |`), by row id."""
    rows = {}
    for line in markdown.splitlines():
        found = re.match(r"\| `([a-z0-9-]+)` \|", line)
        if found:
            cells = re.split(r"(?<!\\)\|", line)[1:-1]
            rows[found[1]] = [cell.strip() for cell in cells]
    return rows


def test_the_markdown_has_the_header_and_a_line_per_row(
    written: tuple[dict[str, Any], dict[str, Path]],
) -> None:
    data, paths = written
    markdown = paths["md"].read_text(encoding="utf-8")
    assert "**INCOMPLETE: interrupted (Ctrl-C) after 312 s**" in markdown
    assert "**FAIL: 2 of 6 executed rows failed**" in markdown
    assert "Rows: 7 · executed 6 · passed 3 · failed 2 · not modelled 1 · no traffic 1" in markdown
    for setting in ("- Meters: 200", "- Transports: coap, mqtt", "- Clock speed: 1440×",
                    "- Duration: 10 min", "- Impairment: loss 1 %, delay 40 ms, jitter 10 ms",
                    "- Wall time: 5.21 min"):  # fmt: skip
        assert setting in markdown.splitlines(), setting

    headings = [line[3:] for line in markdown.splitlines() if line.startswith("## ")]
    captions = list(dict.fromkeys(row["table"] for row in data["rows"]))
    assert headings == [c.replace("*", "\\*") for c in captions] + ["Failing rows"]

    lines = table_lines(markdown)
    assert list(lines) == [row["id"] for row in data["rows"]]
    for row in data["rows"]:
        cells = lines[row["id"]]
        assert len(cells) == len(COLUMNS), cells
        verdict = cells[-1]
        assert verdict.startswith(WORDS[row["status"]]), (row["id"], verdict)
        other_words = set(WORDS.values()) - {WORDS[row["status"]]}
        assert not any(verdict.startswith(word) for word in other_words)
    assert lines["mr-ondemand"][3:6] == ["400", "397", str(data["rows"][3]["within_budget"])]
    assert lines["bulk-read-cmd-cis-to-mdms"][-1].startswith("NOT MODELLED (GridM2M has no CIS")
    assert lines["mr-ondemand-err"][-1] == (
        "NO TRAFFIC (no error answer in this run \\| 1 per command that fails)"
    )
    assert lines["ev-security-alarm"][9] == "25–900 (2 out of range: 400, 900)"
    assert lines["ev-security-alarm"][10] == "25–278"
    assert lines["gas-interval"][8] == "4 h"
    assert lines["mr-ondemand"][6] == "97 % (> 98 %)"

    failing = markdown.split("## Failing rows", 1)[1]
    assert "- `mr-ondemand`: 97.00% within 5 s, needs > 98.0%" in failing
    escaped = '&lt;script>alert("row")&lt;/script>'
    assert f"- `ev-security-alarm`: 2 payloads outside the size range {escaped}" in failing
    assert "<script>" not in markdown


def test_a_complete_run_has_no_incomplete_marker(tmp_path: Path) -> None:
    data = make_report()
    data["complete"], data["incomplete_reason"] = True, None
    for row in data["rows"]:
        if row["status"] == "fail":
            row["status"], row["reason"] = "pass", None
    data["summary"].update(passed=5, failed=0)
    paths = write_report(data, tmp_path)
    markdown = paths["md"].read_text(encoding="utf-8")
    assert "INCOMPLETE" not in markdown
    assert "Complete run." in markdown
    assert "**PASS: all 5 rows with a result passed**" in markdown
    assert markdown.split("## Failing rows", 1)[1].strip() == "None."
    page = paths["html"].read_text(encoding="utf-8")
    assert '<div class="banner complete">Complete run.</div>' in page
    assert "banner incomplete" not in page


# ---- HTML ------------------------------------------------------------------------------------


class Links(HTMLParser):
    """Every src and href of the page's tags (the text inside scripts is not read as tags)."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.scripts += tag == "script"
        self.links += [(tag, value or "") for name, value in attrs if name in ("src", "href")]


def test_the_html_page_needs_no_network(written: tuple[dict[str, Any], dict[str, Path]]) -> None:
    page = written[1]["html"].read_text(encoding="utf-8")
    parser = Links()
    parser.feed(page)
    assert parser.links, "the failing rows link to their table lines"
    assert all(value.startswith("#") for _, value in parser.links), parser.links
    assert parser.scripts == 3  # the figures' data, plotly.js, the drawing
    assert page.count(plotly_js()) == 1
    assert "<script src" not in page and "<link" not in page


def test_the_html_page_escapes_the_data(written: tuple[dict[str, Any], dict[str, Path]]) -> None:
    data, paths = written
    page = paths["html"].read_text(encoding="utf-8")
    assert "alert(" not in plotly_js()
    assert INJECTED not in page
    assert "&lt;script&gt;alert(&quot;row&quot;)&lt;/script&gt;" in page
    for row in data["rows"]:
        assert f'<tr class="{row["status"]}" id="row-{row["id"]}">' in page
        assert f"<code>{row['id']}</code>" in page
    assert '<div class="banner incomplete">INCOMPLETE: interrupted (Ctrl-C) after 312 s</div>' in (
        page
    )
    blob = re.search(r'id="report-figures">(.*?)</script>', page)
    assert blob is not None and "<" not in blob[1]


def test_the_html_tables_mark_what_misses_the_requirement(
    written: tuple[dict[str, Any], dict[str, Path]],
) -> None:
    page = written[1]["html"].read_text(encoding="utf-8")

    def marked(row_id: str) -> list[str]:
        """The columns of a row's line whose cell is marked as missing the requirement (red),
        or the latency cell when some message took longer than the budget (amber)."""
        line = re.search(rf'<tr class="[a-z-]+" id="row-{row_id}">(.*?)</tr>', page)
        assert line is not None, row_id
        cells = re.findall(r"<td([^>]*)>", line[1])
        assert len(cells) == len(COLUMNS)
        return [
            column + (" (late)" if "late" in cell else "")
            for column, cell in zip(COLUMNS, cells, strict=True)
            if "over" in cell or "late" in cell
        ]

    assert marked("mr-ondemand") == [
        "reliability (required)",
        "latency p50 / p95 / p99 / max (late)",
    ]
    assert marked("ev-security-alarm") == ["size seen"]
    assert marked("ev-fault") == marked("mr-ondemand-err") == []
    assert '<tr class="fail" id="row-mr-ondemand">' in page
    assert "tr.fail td.result { background: #cf222e; }" in page


def test_the_html_page_has_latency_and_reliability_charts_per_family(
    written: tuple[dict[str, Any], dict[str, Path]],
) -> None:
    data, paths = written
    page = paths["html"].read_text(encoding="utf-8")
    figures = figures_of(page)
    families: dict[str, list[dict[str, Any]]] = {}
    for row in data["rows"]:
        if row["status"] != "not-modelled":
            families.setdefault(row["family"], []).append(row)
    assert list(families) == ["reading", "ondemand", "event"]
    assert len(figures) == 2 * len(families)

    for (family, rows), latency, reliability in zip(
        families.items(), figures[::2], figures[1::2], strict=True
    ):
        assert f'<div id="{latency["div"]}"></div>' in page
        assert f'<div id="{reliability["div"]}"></div>' in page
        ids = [row["id"] for row in rows]

        layout = latency["layout"]
        assert layout["xaxis"]["type"] == "log", family
        assert layout["yaxis"]["categoryarray"] == ids
        boxes = [trace for trace in latency["data"] if trace["type"] == "box"]
        assert [box["name"] for box in boxes] == [r["id"] for r in rows if r["latency_samples_s"]]
        for box, row in zip(boxes, (r for r in rows if r["latency_samples_s"]), strict=True):
            assert len(box["x"]) == len(row["latency_samples_s"])
            assert min(box["x"]) >= 0.001  # a log axis has no zero
        (budget,) = [trace for trace in latency["data"] if trace["name"] == "latency budget"]
        assert budget["x"] == [row["latency_budget_s"] for row in rows]
        assert budget["y"] == ids
        low, high = layout["xaxis"]["range"]
        assert 10**low < min(budget["x"]) and 10**high > max(budget["x"])

        required, measured = reliability["data"]
        assert required["x"] == [pytest.approx(100 * r["reliability_required"]) for r in rows]
        shown = [r for r in rows if r["reliability_measured"] is not None]
        assert measured["y"] == [r["id"] for r in shown]
        assert measured["x"] == [pytest.approx(100 * r["reliability_measured"]) for r in shown]
        colours = {"pass": "#1a7f37", "fail": "#cf222e"}
        assert measured["marker"]["color"] == [colours[r["status"]] for r in shown]


# ---- checking the data -----------------------------------------------------------------------


def without(*path: str | int) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        target: Any = data
        for part in path[:-1]:
            target = target[part]
        del target[path[-1]]

    return change


def setting(value: Any, *path: str | int) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        target: Any = data
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value

    return change


def more_delivered_than_sent(data: dict[str, Any]) -> None:
    data["rows"][1]["delivered"] = data["rows"][1]["sent"] + 1


def the_same_id_twice(data: dict[str, Any]) -> None:
    data["rows"][4]["id"] = data["rows"][2]["id"]


def too_many_samples(data: dict[str, Any]) -> None:
    row = data["rows"][2]
    row["latency_samples_s"] = row["latency_samples_s"] + [0.1]


@pytest.mark.parametrize(
    ("change", "field", "row_id", "problem"),
    [
        (without("settings"), "settings", None, "Field required"),
        (without("rows", 3, "latency_s", "p95"), "rows[3].latency_s.p95", "mr-ondemand",
         "Field required"),
        (without("rows", 0, "reason"), "rows[0].reason", "bulk-read-cmd-cis-to-mdms",
         "Field required"),
        (setting("x", "rows", 0, "colour"), "rows[0].colour", "bulk-read-cmd-cis-to-mdms",
         "Extra inputs are not permitted"),
        (setting("gridm2m-interop-report/1", "schema"), "schema", None, "is not"),
        (setting("ok", "rows", 1, "status"), "rows[1].status", "gas-interval", "'pass'"),
        (setting("12", "rows", 1, "sent"), "rows[1].sent", "gas-interval", "valid integer"),
        (setting(1.5, "settings", "impairment", "loss"), "settings.impairment.loss", None,
         "less than or equal to 1"),
        (setting(None, "rows", 1, "latency_budget_s"), "rows[1].latency_budget_s",
         "gas-interval", "valid number"),
        (setting("yesterday", "started"), "started", None, "not an ISO 8601"),
        (setting("2026-03-02T09:00:00", "finished"), "finished", None, "not in UTC"),
        (setting("still running", "incomplete_reason"), "incomplete_reason", None, None),
        (more_delivered_than_sent, "rows[1].delivered", "gas-interval", "only 240 sent"),
        (the_same_id_twice, "rows[4].id", "mr-multi-interval", "also used by rows[2]"),
        (too_many_samples, "rows[2].latency_samples_s", "mr-multi-interval", "at most 2000"),
        (setting(0.05, "rows", 3, "latency_s", "p99"), "rows[3].latency_s.p99", "mr-ondemand",
         "below p95"),
        (setting(3, "summary", "failed"), "summary.failed", None, "2 rows have status fail"),
        (setting(8, "summary", "rows"), "summary.rows", None, "the report has 7"),
        (setting(7, "summary", "executed"), "summary.executed", None, "rows - not modelled"),
    ],
)  # fmt: skip
def test_a_faulty_report_is_refused_naming_the_field(
    change: Callable[[dict[str, Any]], None],
    field: str,
    row_id: str | None,
    problem: str | None,
    tmp_path: Path,
) -> None:
    data = make_report()
    if field == "incomplete_reason":
        data["complete"] = True  # a complete run with a reason for being incomplete
    change(data)
    with pytest.raises(ReportError) as raised:
        write_report(data, tmp_path / "out")
    error = raised.value
    assert error.field == field
    assert error.row_id == row_id
    assert f"field {field}" in str(error)
    if row_id is not None:
        assert f"(row {row_id})" in str(error)
    if problem is not None:
        assert problem in error.problem
    assert not (tmp_path / "out").exists()  # nothing written


def test_the_report_must_be_an_object() -> None:
    with pytest.raises(ReportError, match="expected a JSON object, not list"):
        validate_report([make_report()])


# ---- the command -----------------------------------------------------------------------------


def test_main_renders_again_from_the_json(
    written: tuple[dict[str, Any], dict[str, Path]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    paths = written[1]
    first = paths["json"].parent
    assert main([str(paths["json"]), str(tmp_path / "again")]) == 0
    printed = capsys.readouterr().out.split()
    assert [Path(line).name for line in printed] == ["report.json", "report.md", "report.html"]
    for name in ("report.json", "report.md", "report.html"):
        assert (tmp_path / "again" / name).read_bytes() == (first / name).read_bytes()


def test_main_reports_a_faulty_file_and_usage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_report()
    del data["rows"][5]["sent"]
    source = tmp_path / "report.json"
    source.write_text(json.dumps(data), encoding="utf-8")
    assert main([str(source), str(tmp_path / "out")]) == 1
    assert "field rows[5].sent (row ev-fault): Field required" in capsys.readouterr().err
    source.write_text("{", encoding="utf-8")
    assert main([str(source), str(tmp_path / "out")]) == 1
    assert "not JSON" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.json"), str(tmp_path / "out")]) == 1
    assert "cannot read" in capsys.readouterr().err
    assert main([str(source)]) == 2
    assert "usage:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---- the page in a browser -------------------------------------------------------------------

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run"]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.skip("no Chromium installed (Debian package chromium: apt-get install chromium)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        yield launched
        await launched.close()


async def test_the_page_draws_every_chart_offline(
    browser: Browser, written: tuple[dict[str, Any], dict[str, Path]]
) -> None:
    path = written[1]["html"]
    expected = figures_of(path.read_text(encoding="utf-8"))
    page = await browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    requested: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("request", lambda request: requested.append(request.url))
    await page.goto(path.resolve().as_uri())
    await page.wait_for_function(
        f"document.querySelectorAll('.js-plotly-plot').length === {len(expected)}"
    )
    assert errors == []
    assert all(url.startswith(("file:", "data:", "blob:")) for url in requested), requested
    for figure in expected:
        chart = page.locator(f"#{figure['div']}")
        assert await chart.locator("svg.main-svg").count() >= 1
        boxes = sum(1 for trace in figure["data"] if trace["type"] == "box")
        assert await chart.locator(".boxlayer .trace").count() == boxes, figure["div"]
        # Each row is a tick on the category axis, the first at the top.
        ticks = await chart.locator(".yaxislayer-above .ytick text").evaluate_all(
            "texts => texts.map(t => [t.getBoundingClientRect().top, t.textContent])"
        )
        assert [text for _, text in sorted(ticks)] == figure["layout"]["yaxis"]["categoryarray"]
    screenshot = os.environ.get("GRIDM2M_REPORT_SCREENSHOT")
    if screenshot:
        await page.screenshot(path=screenshot, full_page=True)
