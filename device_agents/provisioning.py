"""A meter's secret for its link, from the DAP's credential store, as config.json entries.

One function for every place a meter is made (`gridm2m agent build`, the fleet emulator):

- a CoAP meter gets its OSCORE keys: `"oscore": {"kid", "secret", "salt"}` in hex (the caller
  adds `"oscore_state"`, where the meter keeps its sequence number);
- an MQTT meter gets its broker login: `"mqtt_username"` (its AE-ID) and `"mqtt_password"`
  (made now when its credential has none; the broker takes it once its password file is made
  again from the store).

A meter the store does not know gets its credential made, when the caller provisions; a
revoked or expired credential is always an error (a meter cut off stays cut off).

CPython only (the build machine, the fleet).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cse.security.credentials import Credential, CredentialError, CredentialStore


class ProvisioningError(Exception):
    """A meter without a usable credential; the message says which and why."""


def _few(names: list[str]) -> str:
    shown = ", ".join(names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def link_secret(store: CredentialStore, credential: Credential, transport: str) -> dict[str, Any]:
    """The config.json entries that carry `credential`'s secret for `transport`."""
    if transport == "mqtt":
        password = credential.mqtt_password or store.new_mqtt_password(credential.name)
        return {"mqtt_username": credential.originator, "mqtt_password": password}
    if credential.oscore_secret is None:  # made for another link: give it keys now
        credential = store.new_oscore_keys(credential.name)
    kid, secret, salt = credential.oscore_kid, credential.oscore_secret, credential.oscore_salt
    assert kid is not None and secret is not None and salt is not None
    return {"oscore": {"kid": kid.hex(), "secret": secret.hex(), "salt": salt.hex()}}


def meter_secrets(
    store_path: str | Path, transports: Mapping[str, str], *, provision: bool
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Each meter's link secret (`transports`: meter id -> "coap" or "mqtt"), and the ids
    whose credential was made now (all in one transaction); raises ProvisioningError."""
    try:
        with CredentialStore(store_path) as store:
            found = {name: store.by_name(name) for name in transports}
            absent = [name for name, credential in found.items() if credential is None]
            if absent:
                known = {credential.name for credential in store.all()}
                unusable = [name for name in absent if name in known]
                if unusable:
                    raise ProvisioningError(
                        f"the credential of {_few(unusable)} is revoked or expired in {store_path}"
                    )
                if not provision:
                    raise ProvisioningError(
                        f"{len(absent)} meters ({_few(absent)}) have no credential in "
                        f"{store_path}: provision them, or add them (gridm2m credentials "
                        "add-device)"
                    )
                for made in store.add_devices(absent):
                    found[made.name] = made
            secrets: dict[str, dict[str, Any]] = {}
            for name, transport in transports.items():
                credential = found[name]
                assert credential is not None  # made above
                secrets[name] = link_secret(store, credential, transport)
    except CredentialError as error:
        raise ProvisioningError(str(error)) from error
    except sqlite3.Error as error:
        raise ProvisioningError(f"cannot use the credential store {store_path}: {error}") from error
    return secrets, absent
