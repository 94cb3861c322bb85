"""The gateway's limits: its SD-card defaults for meters' containers, and their metrics."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from cse.core.types import ResponseStatusCode as RSC
from gateway.config import GATEWAY_LIMITS, load_gateway_config
from tests.gateway.test_uplink import register_meter, system
from tests.helpers import create, retrieve


async def test_meter_containers_get_the_gateway_defaults_and_refusals_are_exported(
    tmp_path: Path,
) -> None:
    async with system(tmp_path) as (_, gateway, _):
        dap = gateway.cse.cse
        meter = await register_meter(dap, "mtr-9")
        reading = await dap.handle(retrieve("dap1/mtr-9/reading", meter))
        attributes = reading.content["m2m:cnt"]
        assert (attributes["mni"], attributes["mbs"]) == (32, 16 * 1024)
        greedy = {"m2m:cnt": {"rn": "hoard", "mni": 100_000}}
        refused = await dap.handle(create("dap1/mtr-9", 3, greedy, meter))
        assert refused.status == RSC.NOT_ACCEPTABLE
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{gateway.ops_url}/metrics") as reply,
        ):
            text = await reply.text()
    assert 'gridm2m_cse_limit_refusals_total{limit="container_cap"} 1.0' in text
    assert 'gridm2m_cse_limit_refusals_total{limit="request_rate"} 0.0' in text
    assert "gridm2m_cse_discovery_truncated_total 0.0" in text


def test_a_gateway_config_narrows_or_widens_its_limits(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text("[gateway.cse.limits]\nmax_aes = 0\ndefault_max_instances = 8\n")
    limits = load_gateway_config(config).cse.settings().limits
    assert limits.max_aes is None  # 0 switches a limit off
    assert limits.default_max_instances == 8
    assert limits.max_byte_size_cap == GATEWAY_LIMITS.max_byte_size_cap  # the rest as before
