"""Offline tests of the benchmark harness: wrk report parsing, ACME config, report table."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

from bench.acme import render_acme_ini
from bench.bench_http import InstanceCheck, ScenarioResult, default_scenarios, format_table
from bench.http_load import WrkResult, parse_wrk_output, parse_wrk_text

WRK_REPORT = """\
Running 5s test @ http://127.0.0.1:18080/cse-in/benchAE/cnt
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   238.99ms   61.44ms    1.46s    77.44%
    Req/Sec    32.76     11.09    50.00     66.00%
  Latency Distribution
     50%  237.43ms
     75%  275.98ms
     90%  320.80ms
     99%    1.01s
  164 requests in 5.01s, 99.35KB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 7
Requests/sec:     32.71
Transfer/sec:     19.81KB
"""


def test_parse_wrk_text_units_and_errors() -> None:
    r = parse_wrk_text(WRK_REPORT)
    assert r.requests == 164
    assert r.duration_s == pytest.approx(5.01)
    assert r.rps == pytest.approx(32.71)
    assert r.p50_ms == pytest.approx(237.43)
    assert r.p90_ms == pytest.approx(320.80)
    assert r.p99_ms == pytest.approx(1010.0)
    assert r.max_ms == pytest.approx(1460.0)
    assert r.non2xx == 7
    assert r.socket_errors == {"connect": 0, "read": 2, "write": 0, "timeout": 3}
    assert r.errors == 12


def test_parse_wrk_text_microseconds_without_errors() -> None:
    text = WRK_REPORT.replace("237.43ms", "812.00us").replace("    1.01s", "  1.86ms")
    text = "\n".join(line for line in text.splitlines() if "errors" not in line)
    text = text.replace("Non-2xx or 3xx responses: 7", "")
    r = parse_wrk_text(text)
    assert r.p50_ms == pytest.approx(0.812)
    assert r.p99_ms == pytest.approx(1.86)
    assert r.errors == 0


def test_parse_wrk_text_needs_latency_distribution() -> None:
    text = "\n".join(line for line in WRK_REPORT.splitlines() if "%  " not in line)
    with pytest.raises(ValueError, match="--latency"):
        parse_wrk_text(text)


def test_parse_wrk_output_prefers_lua_summary() -> None:
    line = (
        'GRIDM2M_RESULT {"requests":635,"duration_us":5000000,"bytes":394121,"p50_us":7053,'
        '"p90_us":11905,"p99_us":18062,"max_us":56028,"mean_us":7894.2,"non2xx":1,'
        '"connect_errors":0,"read_errors":0,"write_errors":0,"timeouts":2}'
    )
    r = parse_wrk_output(WRK_REPORT + line + "\n")
    assert r.source == "lua"
    assert r.requests == 635
    assert r.rps == pytest.approx(127.0)
    assert r.p50_ms == pytest.approx(7.053)
    assert r.p99_ms == pytest.approx(18.062)
    assert r.errors == 3


def test_acme_ini_is_valid_ini(tmp_path: Path) -> None:
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read_string(render_acme_ini(tmp_path, 12345))
    assert cfg["basic.config"]["httpPort"] == "12345"
    assert cfg["basic.config"]["networkInterface"] == "127.0.0.1"
    assert cfg["basic.config"]["cseName"] == "cse-in"
    assert cfg["database.tinydb"]["path"] == str(tmp_path / "data")
    assert cfg["http.wsgi"]["enable"] == "true"
    for section in ("mqtt", "coap", "websocket", "textui", "webui"):
        assert cfg[section]["enable"] == "false"
    with pytest.raises(ValueError):
        render_acme_ini(tmp_path, 1, db="postgresql")


def _result(key_index: int, rps: float, errors: int = 0) -> ScenarioResult:
    sc = default_scenarios()[key_index]
    wrk = WrkResult(requests=100, duration_s=1.0, rps=rps, p50_ms=1.0, p99_ms=150.0)
    wrk.non2xx = errors
    return ScenarioResult(sc, wrk, 1, 101)


def test_format_table_side_by_side_with_ratio() -> None:
    table = format_table(
        {"ours": [_result(0, 1000.0), _result(1, 500.0)], "acme": [_result(0, 100.0, 2)]},
        {"acme": InstanceCheck(1, 90, 98, 90, 1)},
    )
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["scenario", "ours", "req/s"]
    assert "ratio ours/acme" in lines[0]
    assert lines[2].split()[-1] == "10.00"
    assert "100.0*" in lines[2]
    assert lines[3].split()[-4:] == ["-", "-", "-", "-"]
    assert any("LOST WRITES" in line for line in lines)


def test_instance_check() -> None:
    assert InstanceCheck(1, 101, 100, 101, 8).problems == []
    assert InstanceCheck(1, 105, 100, 105, 8).problems == []
    assert "miscounted cni" in InstanceCheck(1, 101, 100, 40, 8).problems[0]
    assert "unsupported" in InstanceCheck(None, None, 100, None, 8).problems[0]
