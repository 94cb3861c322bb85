"""A CSE started with listeners that believe requests without a credential says so, once per
listener, at start: such a setting must not reach a meter network unnoticed."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from cse.app import CSEConfig, running_cse


async def test_listeners_that_believe_claims_are_named_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = CSEConfig.model_validate(
        {
            "db": str(tmp_path / "cse.db"),
            "http": {"port": 0, "trust": "insecure"},
            "coap": {"port": 0, "trust": "claimed", "oscore": False},
        }
    )
    with caplog.at_level(logging.WARNING, logger="cse.app"):
        async with running_cse(config):
            pass
    warned = [r.getMessage() for r in caplog.records if "trust" in r.getMessage()]
    assert len(warned) == 2
    assert any(m.startswith("http listener: trust 'insecure'") for m in warned)
    assert any(m.startswith("coap listener: trust 'claimed'") for m in warned)


async def test_a_secure_cse_warns_of_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = CSEConfig.model_validate(
        {"db": str(tmp_path / "cse.db"), "http": {"port": 0}, "coap": {"port": None}}
    )
    with caplog.at_level(logging.WARNING, logger="cse.app"):
        async with running_cse(config):
            pass
    assert not [r for r in caplog.records if "trust" in r.getMessage()]
