"""The size verdict: a row's range holds as given, a single nominal size within ±20 %."""

from __future__ import annotations

import pytest

from headend.apps import bulk_read_command, price_command
from interop.catalogue import load_catalogue
from interop.runner import Evidence, Observed, judge
from interop.sizes import judge_sizes, payload_bytes, size_rule

CATALOGUE = load_catalogue()


def test_a_range_holds_as_the_table_gives_it() -> None:
    # mr-multi-interval: "200 - 2400" bytes.
    rule = size_rule(CATALOGUE.get("mr-multi-interval"))
    assert rule is not None and (rule.low, rule.high, rule.rule) == (200, 2400, "range")


@pytest.mark.parametrize(
    ("row_id", "low", "high"),
    [("han-join-ack-utl", 20, 30), ("mr-ondemand", 80, 120), ("mr-ondemand-err", 40, 60)],
)
def test_a_single_number_is_a_nominal_size_held_within_twenty_percent(
    row_id: str, low: int, high: int
) -> None:
    rule = size_rule(CATALOGUE.get(row_id))
    assert rule is not None and (rule.low, rule.high) == (low, high)
    verdict = judge_sizes(CATALOGUE.get(row_id), [low, high, low - 1, high + 1])
    assert verdict.offending == (low - 1, high + 1)


def test_a_symbolic_size_bounds_nothing() -> None:
    row = CATALOGUE.get("bulk-read-data-headend-to-mdms")  # "xMB"
    assert size_rule(row) is None
    assert not judge_sizes(row, [1, 10**7]).failed


def test_sizes_outside_a_range_are_counted_and_shown_smallest_and_largest() -> None:
    row = CATALOGUE.get("gas-interval")  # 1600 - 2400
    verdict = judge_sizes(row, [1599, 1600, 2400, 2401, *range(2500, 2520)])
    assert verdict.failed and verdict.out_of_range == 22
    assert (verdict.seen_min, verdict.seen_max) == (1599, 2519)
    assert verdict.offending == (1599, 2401, 2500, 2501, 2502, 2515, 2516, 2517, 2518, 2519)


def test_a_row_whose_payloads_break_its_range_fails_with_the_sizes_in_the_reason() -> None:
    row = CATALOGUE.get("mr-multi-interval")
    evidence = Evidence()
    evidence.sent["mr-multi-interval"] = 3
    evidence.at_dap["mr-multi-interval"] = [Observed(0.1, size) for size in (174, 900, 1374)]
    entry = judge(row, evidence, CATALOGUE)
    assert entry.status == "fail"
    assert entry.size_bytes.out_of_range == 1 and entry.size_bytes.offending == [174]
    assert "174" in entry.reason and "200\N{EN DASH}2400" in entry.reason


def test_the_same_row_passes_when_every_payload_is_inside() -> None:
    row = CATALOGUE.get("mr-multi-interval")
    evidence = Evidence()
    evidence.sent["mr-multi-interval"] = 3
    evidence.at_dap["mr-multi-interval"] = [Observed(0.1, size) for size in (200, 900, 2400)]
    assert judge(row, evidence, CATALOGUE).status == "pass"


def test_the_payload_is_the_con_as_compact_json_without_the_envelope() -> None:
    con = {"flow": "han-join-ack-utl", "type": "ack", "seq": 7, "ts": 1767225600, "ok": 1}
    assert payload_bytes(con) == len('{"ok":1}')


@pytest.mark.parametrize("command_id", ["c001", "c00zzzz"])  # the head-end's shortest, longest
def test_the_head_ends_bulk_read_and_price_commands_fit_their_rows(command_id: str) -> None:
    """The commands as the head-end builds them (headend/apps.py), with an id as it issues
    them, inside the sizes of bulk-read-cmd-mdms-to-headend (25 B) and phev-price-to-dap
    (255 B) for the rates a meter holds (80-200 milli-currency per kWh)."""
    rows = load_catalogue()
    bulk = {**bulk_read_command(), "id": command_id}
    assert not judge_sizes(rows.get("bulk-read-cmd-mdms-to-headend"), [payload_bytes(bulk)]).failed
    for price in (80, 125, 200):
        signal = {**price_command(price, 1, 1767225600), "id": command_id}
        verdict = judge_sizes(rows.get("phev-price-to-dap"), [payload_bytes(signal)])
        assert not verdict.failed, (price, verdict)
