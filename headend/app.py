"""Composition of the head-end: the IN-CSE, the MDMS store, the MDMS and command applications,
CIS/Billing and the MDMS's bulk reads for it, and one web server (login required) for the
dashboard (`headend/dashboard/`) and the head-end's own routes for commands and applications
(`headend/api.py`).

The MDMS and CIS hear from the IN-CSE in process (`local://mdms`, `local://cis`,
`headend/local_ae.py`): there is no HTTP endpoint where anyone else could hand them data.

A scaled-out head-end (docs/scale-out.md) is one such process plus workers that run the IN-CSE
only (`serve_headend_worker_until_stopped`): the MDMS, CIS/Billing, the command and firmware
applications and the dashboard (whose logins live in its memory) run once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from cse.app import RunningCSE, running_cse
from cse.bindings.http.server import start_site
from cse.security.credentials import CredentialStore, Kind
from headend.api import HeadendApi
from headend.apps import HeadendApps
from headend.bulk_reads import BulkReads
from headend.cis import Cis
from headend.commands import CommandService
from headend.config import HeadendConfig
from headend.dashboard import WebLogin, dashboard_app
from headend.dashboard.login import TokenCheck, hash_password, new_password
from headend.local_ae import LOCAL_SCHEME, InProcessNotifications
from headend.mdms import Mdms
from headend.store import MdmsStore, open_store

logger = logging.getLogger(__name__)


@dataclass
class RunningHeadend:
    config: HeadendConfig
    cse: RunningCSE
    store: MdmsStore
    mdms: Mdms
    commands: CommandService
    apps: HeadendApps
    web_url: str
    cis: Cis
    bulk_reads: BulkReads


def operator_password(config: HeadendConfig) -> tuple[str, str | None]:
    """The operator's password hash, and the password itself when it was just made (to be
    shown once). A password in the config replaces the stored hash."""
    path = config.password_path()
    chosen = config.dashboard.password
    if chosen is None and path.is_file():
        return path.read_text().strip(), None
    made = new_password() if chosen is None else None
    hashed = hash_password(chosen or made or "")
    _write_private(path, hashed + "\n")
    return hashed, made


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def _admin_tokens(credentials: CredentialStore | None) -> TokenCheck:
    def admin_name(token: str) -> str | None:
        found = credentials.by_token(token) if credentials is not None and token else None
        return found.name if found is not None and found.kind is Kind.ADMIN else None

    return admin_name


@contextlib.asynccontextmanager
async def running_headend(config: HeadendConfig) -> AsyncIterator[RunningHeadend]:
    password_hash, new_operator_password = operator_password(config)
    notifications = InProcessNotifications()
    async with contextlib.AsyncExitStack() as stack:
        # The store opens first so that it closes last: the IN-CSE's notifier, stopped with
        # the CSE, may still be delivering to the MDMS until then.
        store = open_store(
            config.mdms.sqlite_path(),
            config.mdms.postgres_url,
            retention_days=config.mdms.retention_days,
        )
        await store.open()
        stack.push_async_callback(store.close)
        running = await stack.enter_async_context(
            running_cse(config.cse, local_senders={LOCAL_SCHEME: notifications})
        )
        mdms = Mdms(running.cse, store, notifications.point_of_access("mdms"), esi=config.mdms.esi)
        notifications.register("mdms", mdms.on_notify)
        commands = CommandService(running.cse, store)
        apps = HeadendApps(commands, store)
        mdms.message_listeners.append(apps.firmware_updates.on_messages)
        commands.timeout_listeners.append(apps.firmware_updates.on_timed_out)
        bulk_reads = BulkReads(
            mdms,
            apps,
            store,
            deadline_s=config.mdms.bulk_read_deadline,
            segment_bytes=config.mdms.bulk_read_segment_bytes,
        )
        cis = Cis(running.cse, store, notifications.point_of_access("cis"), config.cis)
        notifications.register("cis", cis.on_notify)
        dashboard = config.dashboard
        login = WebLogin(
            password_hash,
            _admin_tokens(running.credentials),
            session_s=dashboard.session_hours * 3600,
        )
        app = dashboard_app(store, login=login)
        HeadendApi(running.cse, store, commands, apps, cis).add_to(app)
        runner, port = await start_site(app, dashboard.host, dashboard.port)
        stack.push_async_callback(runner.cleanup)
        web_url = f"http://{dashboard.host}:{port}"
        if new_operator_password is not None:
            print(
                f"gridm2m headend: the dashboard's operator password is {new_operator_password} "
                f"(shown once; only its hash is kept, in {config.password_path()})",
                flush=True,
            )
        # The web server is this process's own: the IN-CSE never sends there (the MDMS hears
        # in process), whatever a subscription names (docs/security.md, "Egress policy").
        running.cse.egress.add_own_port(port)
        await mdms.start()
        await commands.start()
        timeout_s = config.commands.timeout
        running.cse.supervisor.start("command timeouts", lambda: commands.watch_timeouts(timeout_s))
        # The MDMS's request container before CIS, which may send at once.
        await bulk_reads.start()
        stack.push_async_callback(bulk_reads.close)
        await cis.start()
        stack.push_async_callback(cis.close)
        await bulk_reads.resume()
        yield RunningHeadend(config, running, store, mdms, commands, apps, web_url, cis, bulk_reads)


async def serve_headend_until_stopped(config: HeadendConfig, stop: asyncio.Event) -> None:
    async with running_headend(config) as headend:
        print(
            f"gridm2m headend {config.cse.cse_id} ({config.cse.cse_name}) listening on "
            f"{' '.join(headend.cse.urls)}; dashboard {headend.web_url}/",
            flush=True,
        )
        await stop.wait()
    logger.info("head-end stopped")


async def serve_headend_worker_until_stopped(config: HeadendConfig, stop: asyncio.Event) -> None:
    """One more IN-CSE process of a scaled-out head-end (`gridm2m headend --worker`)."""
    async with running_cse(config.cse) as running:
        print(
            f"gridm2m headend worker {config.cse.cse_id} ({config.cse.cse_name}) listening on "
            f"{' '.join(running.urls)}",
            flush=True,
        )
        await stop.wait()
    logger.info("head-end worker stopped")
