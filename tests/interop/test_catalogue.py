"""The flow catalogue against the seed document, its parsing rules, and malformed rows."""

# The table captions are quoted from the document, en dashes included.
# ruff: noqa: RUF001

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from interop.catalogue import (
    DEFAULT_DIRECTORY,
    CatalogueError,
    Rate,
    Size,
    Threshold,
    load_catalogue,
    main,
    parse_clock,
    parse_how_often,
    parse_latency,
    parse_reliability,
    parse_size,
    parse_targets,
)

# The flow tables of the seed document ("Smart Grid Activities in North America"), as its
# text has them (cells one per line; the document's prose paragraphs left out).
SEED = Path(__file__).parent / "data" / "seed_tables.txt"

HOUR = 3600
DAY = 86400

# Rows per table, counted by hand in the seed; the seed is also counted by code below.
EXPECTED_ROWS = {
    "Figure 2 - System Characteristics Requirement": 9,
    "Use Case Meter Reading. Data Flow from “2-Way Meter – Electr *” to “DAP”.": 7,
    "Use Case Meter Reading. Data Flow from “2-Way Meter – Electr *” to “all BUT DAP”.": 7,
    "Use Case Meter Event. Data Flow from “2-Way Meter – Electr *” to “DAP”": 5,
    "Use Case PHEV. Data Flow from “AMI Head-End” to “DAP” or “DMS”.": 7,
    "Use Case Pre-Pay. Data Flow from “2-Way Meter – Electr” to “DAP”.": 10,
    "Use Case DR/DLC. Data Flow from “2-Way Meter – Electr” to “DAP”.": 8,
    "Use Case Premise Network Admin. Data Flow from “2-Way Meter – Electr” to “DAP”.": 10,
    "Use Case = Firmware/Program update. Data Flow from “2-Way Meter – Electr” to “DAP”.": 7,
}

# The document's columns in the order it prints them within a row.
CELLS = (
    "ref",
    "source",
    "target",
    "use_case",
    "requirement",
    "payload_name",
    "payload_type",
    "clock",
    "how_often",
    "reliability",
    "latency",
    "size_type",
    "size",
)


# ---- reading the seed, independently of the catalogue -------------------------------------


def joined(text: str) -> str:
    """The seed's words with line breaks undone: a line ending in "-" continues the word."""
    return re.sub(r"\s+", " ", re.sub(r"(?<=\S-)\n\s*", "", text)).strip()


def squeezed(text: str) -> str:
    return re.sub(r"\s+", "", text)


def seed_tables() -> dict[str, str]:
    """Caption -> the seed text of that table.

    A "Use Case ... Data Flow from ..." caption stands above its table (which may continue
    over a page break); the Figure 2 caption stands below its table.
    """
    text = SEED.read_text(encoding="utf-8")
    end = text.index("\nConclusion")
    caption = re.compile(r"^\s*(Use Case\b.*Data Flow from .*|Figure 2 - .*)$", re.MULTILINE)
    marks = list(caption.finditer(text, 0, end))
    tables = {}
    previous_end = 0
    for index, mark in enumerate(marks):
        name = mark.group(1).strip()
        if name.startswith("Figure"):
            tables[name] = text[previous_end : mark.start()]
        else:
            following = marks[index + 1].start() if index + 1 < len(marks) else end
            tables[name] = text[mark.end() : following]
        previous_end = mark.end()
    return tables


def count_rows(table_text: str) -> tuple[int, int]:
    """Rows of a seed table counted two ways: requirement sentences and latency cells."""
    words = joined(table_text)
    requirements = re.findall(r"\b(?:shall|may) (?:be able to|send)\b", words)
    latencies = re.findall(r"< \d+ (?:sec|min|hr)\b", words)
    return len(requirements), len(latencies)


# ---- the catalogue against the seed --------------------------------------------------------


def test_seed_tables_are_the_expected_ones() -> None:
    tables = seed_tables()
    assert list(tables) == list(EXPECTED_ROWS)
    for caption, text in tables.items():
        assert count_rows(text) == (EXPECTED_ROWS[caption], EXPECTED_ROWS[caption]), caption


def test_every_seed_row_is_in_the_catalogue() -> None:
    catalogue = load_catalogue()
    assert dict(catalogue.counts()) == EXPECTED_ROWS
    assert len(catalogue) == sum(EXPECTED_ROWS.values()) == 70


def test_rows_keep_the_documents_words_in_the_documents_order() -> None:
    catalogue = load_catalogue()
    for caption, text in seed_tables().items():
        words = joined(text)
        flat = squeezed(text)
        position = 0
        for row in catalogue.in_table(caption):
            assert row.requirement in words, row.id
            # Every cell of the row, in column order, follows the previous row's cells.
            cells = squeezed("".join(getattr(row, name) or "" for name in CELLS))
            found = flat.find(cells, position)
            assert found >= 0, f"{row.id}: its cells are not in the seed after the previous row"
            position = found + len(cells)


def test_the_rows_the_issue_names_are_there() -> None:
    catalogue = load_catalogue()
    chain = [
        ("bulk-read-cmd-cis-to-mdms", "CIS/Billing - Utility", "MDMS"),
        ("bulk-read-cmd-mdms-to-headend", "MDMS", "AMI Head-End(j)"),
        ("bulk-read-data-headend-to-mdms", "AMI Head-End(j)", "MDMS"),
        ("bulk-read-data-mdms-to-cis", "MDMS", "CIS/Billing - Utility"),
    ]
    for row_id, source, target in chain:
        row = catalogue.get(row_id)
        assert (row.source, row.target) == (source, target)
    gas = [row for row in catalogue if "Gas C/I" in row.source or "ESI" in row.source]
    assert {row.ref for row in gas} == {
        "[1Dg or (16Ga + 5Ba) or (16Gb + 5Bb)] + [1Ca or (1Cb + 1Cba) or (1Cc + 1Cba)]",
        "1Dg",
        "16Ga",
        "5Ba",
        "16Gb",
    }
    phev = [row for row in catalogue if row.use_case == "PHEV"]
    assert len(phev) == 7
    assert {row.source for row in phev} == {"AMI Head-End(j)"}
    elsewhere = {actor for row in catalogue for actor in row.targets if actor != "DAPjm"}
    assert {"MDMS", "CIS/Billing - Utility", "NMS", "Cust. EMS", "IPD", "DMS"} <= elsewhere


def test_parsed_fields_of_selected_rows() -> None:
    catalogue = load_catalogue()
    gas = catalogue.get("gas-interval")
    assert gas.reliability_thresholds == (
        Threshold(fraction=0.90, window_min_seconds=4 * HOUR, window_max_seconds=6 * HOUR),
        Threshold(fraction=0.98, window_min_seconds=DAY, window_max_seconds=DAY),
        Threshold(
            fraction=0.995, above=True, window_min_seconds=2 * DAY, window_max_seconds=2 * DAY
        ),
    )
    assert (gas.latency_seconds, gas.size_min_bytes, gas.size_max_bytes) == (4 * HOUR, 1600, 2400)
    assert (gas.rate.count_min, gas.rate.count_max, gas.rate.period_seconds) == (1, 6, DAY)

    bulk = catalogue.get("bulk-read-data-mdms-to-cis")
    assert (bulk.size_symbolic, bulk.size_min_bytes, bulk.size_max_bytes) == ("xMB", None, None)
    assert (bulk.clock_from_hour, bulk.clock_to_hour) == (18, 6)
    assert bulk.rate.count_min is None and bulk.rate.population == "Utl"

    switch = catalogue.get("pp-switch-state")
    assert switch.rate.per_member_per_day() == (1 / 1000, 50 / 1000)
    assert (switch.clock_from_hour, switch.clock_to_hour, switch.latency_seconds) == (8, 20, 30)

    price = catalogue.get("phev-price-to-dap")
    assert (price.rate.count_min, price.rate.count_max, price.rate.period_seconds) == (2, 4, DAY)

    audit = catalogue.get("ev-audit-alert")
    assert (audit.latency_seconds, audit.rate.period_seconds) == (60, 30 * DAY)
    assert catalogue.get("mr-ondemand-err-to-cis-mdms-nms").targets == (
        "CIS/Billing - Utility",
        "MDMS",
        "NMS",
    )


def test_every_row_says_how_gridm2m_plays_it() -> None:
    catalogue = load_catalogue()
    for row in catalogue:
        if row.modelled_by == "meter-agent":
            assert row.agent_flows and row.targets == ("DAPjm",), row.id
        else:
            assert row.model_note, row.id
        for other in row.via:
            assert catalogue.get(other).modelled_by == "meter-agent", row.id


# ---- parsing rules -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("words", "window"),
    [
        ("24x7", (0, 24)),
        ("7AM - 6PM", (7, 18)),
        ("7AM - 10PM", (7, 22)),
        ("6PM - 6AM", (18, 6)),
        ("12AM - 12PM", (0, 12)),
        ("6PM - 12AM", (18, 24)),
    ],
)
def test_parse_clock(words: str, window: tuple[int, int]) -> None:
    assert parse_clock(words) == window


@pytest.mark.parametrize(
    ("words", "seconds"),
    [
        ("< 5 sec", 5),
        ("< 1 min", 60),
        ("< 1 hr", 3600),
        ("< 30 seconds", 30),
        ("< 4 hr (expected window of data delivery)", 4 * HOUR),
    ],
)
def test_parse_latency(words: str, seconds: int) -> None:
    assert parse_latency(words) == seconds


def test_parse_reliability() -> None:
    assert parse_reliability("> 98%") == (Threshold(fraction=0.98, above=True),)
    assert parse_reliability("98% success over 1 day") == (
        Threshold(fraction=0.98, window_min_seconds=DAY, window_max_seconds=DAY),
    )


@pytest.mark.parametrize(
    ("words", "size"),
    [
        ("25", Size(25, 25, None)),
        ("200 - 2400", Size(200, 2400, None)),
        ("1600 for 4hr of data - 2400 for 6hr of data", Size(1600, 2400, None)),
        ("xMB", Size(None, None, "xMB")),
    ],
)
def test_parse_size(words: str, size: Size) -> None:
    assert parse_size(words) == size


@pytest.mark.parametrize(
    ("words", "rate"),
    [
        (
            "1-50 per 1000 per | DAPjm-PrePay-ElectrMtr per | day",
            Rate(
                count_min=1,
                count_max=50,
                per_population=1000,
                population="DAPjm-PrePay-ElectrMtr",
                period_seconds=DAY,
            ),
        ),
        (
            "1 per | DAPjm-ElectrMtr per | x on-demand Mtr read cmd",
            Rate(
                count_min=1,
                count_max=1,
                population="DAPjm-ElectrMtr",
                trigger="x on-demand Mtr read cmd",
            ),
        ),
        (
            "1 per 1000 per | DAPjm-PrePay-ElectrMtr per | SW oper per day",
            Rate(
                count_min=1,
                count_max=1,
                per_population=1000,
                population="DAPjm-PrePay-ElectrMtr",
                trigger="SW oper",
                period_seconds=DAY,
            ),
        ),
        (
            "x per | Utl per | day (batches of y Mtrs)",
            Rate(population="Utl", period_seconds=DAY, note="batches of y Mtrs"),
        ),
        (
            "1 per | DAPjm-connected-PHEV per | 2-4 per day",
            Rate(count_min=2, count_max=4, population="DAPjm-connected-PHEV", period_seconds=DAY),
        ),
        (
            "1 per 1000 per | DAPjm-ElectrMtr per | month",
            Rate(
                count_min=1,
                count_max=1,
                per_population=1000,
                population="DAPjm-ElectrMtr",
                period_seconds=30 * DAY,
            ),
        ),
    ],
)
def test_parse_how_often(words: str, rate: Rate) -> None:
    assert parse_how_often(words) == rate


@pytest.mark.parametrize(
    ("parse", "words"),
    [
        (parse_clock, "7AM-25PM"),
        (parse_clock, "mornings"),
        (parse_clock, "6PM - 6PM"),
        (parse_latency, "soon"),
        (parse_latency, "5 sec"),
        (parse_latency, "< 0 sec"),
        (parse_reliability, "98"),
        (parse_reliability, "> 120%"),
        (parse_reliability, "90% every 6-4 hr"),
        (parse_size, "2400 - 200"),
        (parse_size, "big"),
        (parse_size, "1 - 2 - 3"),
        (parse_how_often, "25 per day"),
        (parse_how_often, "many per | Mtr per | day"),
        (parse_how_often, "1 per | Mtr | day"),
        (parse_how_often, "1 per | Mtr per | 3 per fortnight"),
        (parse_targets, "MDMS, , NMS"),
    ],
)
def test_unreadable_words_are_refused(parse: Callable[[str], object], words: str) -> None:
    with pytest.raises(ValueError):
        parse(words)


# ---- malformed catalogues ------------------------------------------------------------------

FIRST_ROW_FILE = "02_meter_reading_to_dap.toml"  # its first row is mr-multi-interval


def copy_with(tmp_path: Path, old: str, new: str) -> Path:
    """A copy of the catalogue where the first `old` of FIRST_ROW_FILE becomes `new`."""
    folder = tmp_path / "flows"
    shutil.copytree(DEFAULT_DIRECTORY, folder)
    path = folder / FIRST_ROW_FILE
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return folder


def load_error(folder: Path) -> CatalogueError:
    with pytest.raises(CatalogueError) as caught:
        load_catalogue(folder)
    return caught.value


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        # a missing word field, and a missing parsed field
        ('requirement = "2-Way Meter - Electr shall be able to send multiple', "#", "requirement"),
        ("latency_seconds = 5\n", "", "latency_seconds"),
        # words that cannot be read
        ('latency = "< 5 sec"', 'latency = "quickly"', "latency"),
        ('size = "200 - 2400"', 'size = "2400 - 200"', "size"),
        ('clock = "7AM - 6PM"', 'clock = "daytime"', "clock"),
        ('reliability = "> 98%"', 'reliability = "high"', "reliability"),
        ('how_often = "25 per 1000', 'how_often = "often | 25 per 1000', "how_often"),
        # parsed fields that disagree with the words
        ("latency_seconds = 5\n", "latency_seconds = 50\n", "latency_seconds"),
        ("size_max_bytes = 2400", "size_max_bytes = 2000", "size_max_bytes"),
        ("clock_to_hour = 18", "clock_to_hour = 19", "clock_to_hour"),
        ("count_max = 25", "count_max = 26", "rate"),
        ("fraction = 0.98", "fraction = 0.95", "reliability_thresholds"),
        # wrong types and unknown fields
        ("clock_from_hour = 7", 'clock_from_hour = "7"', "clock_from_hour"),
        ('payload_type = "resp-data"', 'payload_type = "data"', "payload_type"),
        ("[[row]]\n", '[[row]]\ncolour = "red"\n', "colour"),
        ("count_min = 25", "count_min = 25\nper_hour = 2", "rate.per_hour"),
        # the modelling fields
        ('agent_flows = ["mr-multi-interval"]', "agent_flows = []", "agent_flows"),
        ('modelled_by = "meter-agent"', 'modelled_by = "the meter"', "modelled_by"),
    ],
)
def test_a_malformed_row_names_its_id_and_field(
    tmp_path: Path, old: str, new: str, field: str
) -> None:
    error = load_error(copy_with(tmp_path, old, new))
    assert (error.row_id, error.field) == ("mr-multi-interval", field)
    assert error.path.name == FIRST_ROW_FILE
    assert f"row mr-multi-interval: field {field}:" in str(error)


def test_a_row_without_an_id_is_named_by_position(tmp_path: Path) -> None:
    error = load_error(copy_with(tmp_path, 'id = "mr-multi-interval"\n', ""))
    assert (error.row_id, error.field) == ("#1", "id")


def test_ids_are_unique_across_files(tmp_path: Path) -> None:
    folder = copy_with(tmp_path, "\n", "\n")
    shutil.copy(folder / FIRST_ROW_FILE, folder / "99_copy.toml")
    error = load_error(folder)
    assert (error.row_id, error.field, error.path.name) == (
        "mr-multi-interval",
        "id",
        "99_copy.toml",
    )


def test_an_agent_flow_maps_to_one_row(tmp_path: Path) -> None:
    folder = copy_with(
        tmp_path, 'agent_flows = ["mr-ondemand"]', 'agent_flows = ["mr-multi-interval"]'
    )
    error = load_error(folder)
    assert (error.row_id, error.field) == ("mr-ondemand", "agent_flows")


def test_via_must_name_a_row(tmp_path: Path) -> None:
    folder = tmp_path / "flows"
    shutil.copytree(DEFAULT_DIRECTORY, folder)
    path = folder / "03_meter_reading_not_dap.toml"
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace('via = ["mr-ondemand-ipd"]', 'via = ["mr-nowhere"]'), "utf-8")
    error = load_error(folder)
    assert (error.row_id, error.field) == ("mr-ondemand-to-ipd", "via")


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ("table = \n", None),  # not TOML
        ('[[row]]\nid = "a"\n', "table"),
        ('table = "T"\n', "row"),
        ('table = "T"\nrows = []\n', "rows"),
        ('table = "T"\nrow = [1]\n', None),
    ],
)
def test_a_malformed_file_is_named(tmp_path: Path, content: str, field: str | None) -> None:
    (tmp_path / "bad.toml").write_text(content, encoding="utf-8")
    error = load_error(tmp_path)
    assert (error.path.name, error.field) == ("bad.toml", field)


def test_a_file_that_is_not_text_is_named(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_bytes(b'table = "\xff"\n')
    error = load_error(tmp_path)
    assert (error.path.name, error.row_id, error.field) == ("bad.toml", None, None)


def test_an_empty_directory_is_refused(tmp_path: Path) -> None:
    error = load_error(tmp_path)
    assert error.path == tmp_path


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    assert "70  rows in 9 tables" in capsys.readouterr().out
    folder = copy_with(tmp_path, 'latency = "< 5 sec"', 'latency = "quickly"')
    assert main([str(folder)]) == 1
    assert "row mr-multi-interval: field latency:" in capsys.readouterr().err
