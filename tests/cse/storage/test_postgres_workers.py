"""Several CSE workers on one PostgreSQL database, in one process: two (or three) CSEs, each
with its own PostgresStorage on the same tables, as worker processes would have.

The races are real: both CSEs serve requests at once on one event loop, each through its
own connections, and PostgreSQL decides who was first. Where a test needs another worker
to hold rows for a while, it holds them itself on a connection of its own.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import psycopg
import pytest
from psycopg import sql

from cse.core.config import CSELimits, CSESettings
from cse.core.handler import CommonServicesEntity
from cse.core.types import ResponseStatusCode as RSC
from cse.storage.base import (
    ChangedElsewhere,
    Enqueue,
    Put,
    QueuedNotification,
    Resource,
    StorageError,
    WriteConflict,
)
from cse.storage.postgres import PostgresStorage
from tests.helpers import LAB, NotificationReceiver, ae_body, create, retrieve, update
from tests.postgres import PostgresSchema, admin

AE = "Cmeter"
# No rate limit or quota: the tests send many requests from one meter at once.
UNLIMITED = CSELimits(
    max_resources_per_ae=None,
    max_subscriptions_per_resource=None,
    registrations_per_minute=None,
    registrations_per_minute_per_source=None,
    requests_per_second=None,
)
SETTINGS = CSESettings(limits=UNLIMITED, expiry_check_interval=3600, egress=LAB)

StartWorker = Callable[..., Awaitable[CommonServicesEntity]]


@pytest.fixture
async def start_worker(postgres_schema: PostgresSchema) -> AsyncIterator[StartWorker]:
    """Starts CSE workers that share the test's schema; all are stopped after the test."""
    started: list[CommonServicesEntity] = []
    from cse.bindings.http import HttpClient, HttpSender

    client = HttpClient(timeout=5)

    async def start(**storage: Any) -> CommonServicesEntity:
        backend = PostgresStorage(postgres_schema.url, schema=postgres_schema.schema, **storage)
        cse = CommonServicesEntity(backend, SETTINGS, senders={"http": HttpSender(client)})
        await cse.start()
        started.append(cse)
        return cse

    yield start
    for cse in started:
        await cse.stop()
    await client.close()


def _storage(cse: CommonServicesEntity) -> PostgresStorage:
    assert isinstance(cse.storage, PostgresStorage)
    return cse.storage


async def _meter_with_container(cse: CommonServicesEntity, **container: Any) -> None:
    assert (await cse.handle(create("cse-in", 2, ae_body("meter"), AE))).status == RSC.CREATED
    body = {"m2m:cnt": {"rn": "reads", **container}}
    assert (await cse.handle(create("cse-in/meter", 3, body, AE))).status == RSC.CREATED


def _instance(number: int) -> dict[str, Any]:
    return {"m2m:cin": {"rn": f"i{number}", "con": "x" * (number % 7 + 1)}}


async def test_two_workers_racing_for_one_name_get_one_created_and_one_conflict(
    start_worker: StartWorker,
) -> None:
    a, b = await start_worker(), await start_worker()
    await _meter_with_container(a)
    names = [f"n{number}" for number in range(20)]

    async def claim(cse: CommonServicesEntity, name: str) -> RSC:
        body = {"m2m:cnt": {"rn": name, "lbl": [str(id(cse))]}}
        return (await cse.handle(create("cse-in/meter", 3, body, AE))).status

    answers = await asyncio.gather(
        *(claim(worker, name) for name in names for worker in (a, b)),
    )
    for index, name in enumerate(names):
        pair = sorted(answers[2 * index : 2 * index + 2])
        assert pair == [RSC.CREATED, RSC.CONFLICT], (name, pair)
    meter = await b.storage.get_by_path("cse-in/meter")
    assert meter is not None
    stored = await b.storage.children(meter.ri, [3])
    assert sorted(r.rn for r in stored) == sorted([*names, "reads"])  # each name once


async def test_two_workers_adding_instances_to_one_container_keep_its_counters(
    start_worker: StartWorker,
) -> None:
    a, b = await start_worker(), await start_worker()
    await _meter_with_container(a, mni=5)
    total = 40
    answers = await asyncio.gather(
        *(
            (a if number % 2 else b).handle(create("cse-in/meter/reads", 4, _instance(number), AE))
            for number in range(total)
        )
    )
    refused = [answer.content for answer in answers if answer.status != RSC.CREATED]
    assert not refused
    container = await _storage(b).get_by_path("cse-in/meter/reads")
    assert container is not None
    kept = await b.storage.instances(container.ri, newest=False, limit=100)
    assert len(kept) == 5
    attributes = container.attributes
    assert attributes["cni"] == 5
    assert attributes["cbs"] == sum(int(r.attributes["cs"]) for r in kept)
    assert attributes["st"] == total  # every instance counted once, none lost
    # The instances kept are the newest five, in the order they were numbered (st).
    assert [r.attributes["st"] for r in kept] == list(range(total - 4, total + 1))


async def test_a_request_redelivered_to_another_worker_is_answered_from_the_first(
    start_worker: StartWorker,
) -> None:
    a, b = await start_worker(), await start_worker()
    await _meter_with_container(a)
    first = create("cse-in/meter/reads", 4, {"m2m:cin": {"con": "1"}}, AE, deduplicate=True)
    again = replace(first)  # the broker delivers the same request again, to the other worker
    answers = await asyncio.gather(a.handle(first), b.handle(again))
    assert [answer.status for answer in answers] == [RSC.CREATED, RSC.CREATED]
    made = {answer.content["m2m:cin"]["ri"] for answer in answers}  # type: ignore[index]
    assert len(made) == 1
    container = await b.storage.get_by_path("cse-in/meter/reads")
    assert container is not None
    assert len(await b.storage.instances(container.ri, newest=False, limit=10)) == 1


async def test_a_change_on_one_worker_reaches_the_cache_of_the_other(
    start_worker: StartWorker,
) -> None:
    a, b = await start_worker(), await start_worker()
    await _meter_with_container(a)
    assert (await b.handle(retrieve("cse-in/meter/reads", AE))).status == RSC.OK  # cached on b
    container = await a.storage.get_by_path("cse-in/meter/reads")
    assert container is not None
    heard = asyncio.Event()

    def on_change(changed: ChangedElsewhere) -> None:
        if (container.ri, 3) in changed.put:
            heard.set()

    b.storage.watch_others(on_change)
    changed = await a.handle(update("cse-in/meter/reads", {"m2m:cnt": {"lbl": ["new"]}}, AE))
    assert changed.status == RSC.UPDATED
    async with asyncio.timeout(10):
        await heard.wait()
    seen = await b.handle(retrieve("cse-in/meter/reads", AE))
    assert seen.content["m2m:cnt"]["lbl"] == ["new"]  # type: ignore[index]


async def test_resource_ids_and_outbox_ids_of_two_workers_never_meet(
    start_worker: StartWorker,
) -> None:
    a, b = await start_worker(), await start_worker()
    assert a.id_stem != b.id_stem
    floors = [await w.storage.notification_id_floor() for w in (a, b)]
    assert floors[0] != floors[1] and min(floors) > 0
    assert abs(floors[0] - floors[1]) >= 1 << 40


async def test_each_notification_is_delivered_once_by_the_worker_that_queued_it(
    start_worker: StartWorker,
) -> None:
    a, b = await start_worker(), await start_worker()
    await _meter_with_container(a)
    released = asyncio.Event()
    released.set()
    async with NotificationReceiver(hold=released) as receiver:
        subscription = {
            "m2m:sub": {"rn": "s", "nu": [receiver.url], "nct": 1, "pn": 2, "enc": {"net": [3]}}
        }
        made = await a.handle(create("cse-in/meter/reads", 23, subscription, AE))
        assert made.status == RSC.CREATED, made.content
        await receiver.wait_for(1)  # the verification request
        released.clear()  # the target now keeps every notification waiting
        total = 20
        answers = await asyncio.gather(
            *(
                (a if n % 2 else b).handle(create("cse-in/meter/reads", 4, _instance(n), AE))
                for n in range(total)
            )
        )
        assert all(answer.status == RSC.CREATED for answer in answers)
        # A third worker starting now takes nothing of what the other two still deliver.
        c = await start_worker()
        assert c.notifier.pending_count() == 0
        released.set()
        bodies = await receiver.wait_for(1 + total)
        await a.notifier.wait_until(lambda: a.notifier.pending_count() == 0)
        await b.notifier.wait_until(lambda: b.notifier.pending_count() == 0)
    names = [
        body["m2m:sgn"]["nev"]["rep"]["m2m:cin"]["rn"]
        for body in (item["body"] for item in bodies[1:])
    ]
    assert sorted(names) == sorted(f"i{n}" for n in range(total))  # each once, none twice
    assert a.notifier.delivered + b.notifier.delivered == total
    assert c.notifier.delivered == 0


class InProcessReceiver:
    """A `local://` sender, as the head-end's in-process MDMS has: only its process has it."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.all_in = asyncio.Event()
        self.expected = 0

    async def send(self, url: str, primitive: dict[str, Any]) -> int:
        notice = primitive["pc"]["m2m:sgn"]
        if notice.get("vrq"):  # the subscription's verification request
            return int(RSC.OK)
        instance = notice["nev"]["rep"]["m2m:cin"]
        self.names.append(instance["rn"])
        if len(self.names) >= self.expected:
            self.all_in.set()
        return int(RSC.OK)


async def test_a_notification_a_worker_cannot_send_is_handed_to_the_process_that_can(
    start_worker: StartWorker,
) -> None:
    """A head-end worker has no in-process MDMS: what it writes for `local://mdms` is
    delivered, once, by the head-end process, whose notifier has the `local` sender."""
    receiver = InProcessReceiver()
    receiver.expected = 10
    headend = await start_worker()
    headend.notifier.senders["local"] = receiver
    headend.egress.serve_locally("local")
    worker = await start_worker()
    assert "local" not in worker.notifier.senders
    await _meter_with_container(headend)
    mdms = {"m2m:ae": {"rn": "mdms", "api": "Nmdms", "rr": True, "srv": ["3"],
                       "poa": ["local://mdms"]}}  # fmt: skip
    assert (await headend.handle(create("cse-in", 2, mdms, "Cmdms"))).status == RSC.CREATED
    subscription = {"m2m:sub": {"rn": "s", "nu": ["Cmdms"], "nct": 1, "enc": {"net": [3]}}}
    made = await headend.handle(create("cse-in/meter/reads", 23, subscription, AE))
    assert made.status == RSC.CREATED, made.content
    for n in range(10):  # all of them through the worker
        answer = await worker.handle(create("cse-in/meter/reads", 4, _instance(n), AE))
        assert answer.status == RSC.CREATED, answer.content
    await asyncio.wait_for(receiver.all_in.wait(), 30)
    await headend.notifier.wait_until(lambda: headend.notifier.pending_count() == 0)
    assert sorted(receiver.names) == sorted(f"i{n}" for n in range(10))  # each once
    assert worker.notifier.delivered == 0 and worker.notifier.pending_count() == 0


async def test_a_child_made_on_a_stale_subscription_list_is_decided_again_and_notified(
    start_worker: StartWorker,
) -> None:
    """Worker a decides a CREATE under the meter with the meter's subscriptions as it cached
    them, before b's notice of a new subscription there has reached it: the subscription,
    committed before the child, must hear of it (else a subscriber that lists the children
    once subscribed would never see it)."""
    a, b = await start_worker(), await start_worker()
    await _meter_with_container(a)
    meter = await a.storage.get_by_path("cse-in/meter")
    assert meter is not None
    first = await a.handle(create("cse-in/meter", 3, {"m2m:cnt": {"rn": "early"}}, AE))
    assert first.status == RSC.CREATED
    storage = _storage(a)
    assert storage._cache.subscriptions_of(meter.ri) == []  # a knows the meter has none
    held: list[str] = []
    hear = storage._on_notice
    storage._on_notice = held.append  # type: ignore[method-assign]  # a hears nothing more
    try:
        async with NotificationReceiver() as receiver:
            subscription = {"m2m:sub": {"rn": "s", "nu": [receiver.url], "enc": {"net": [3]}}}
            made = await b.handle(create("cse-in/meter", 23, subscription, AE))
            assert made.status == RSC.CREATED, made.content  # answered: committed
            late = await a.handle(create("cse-in/meter", 3, {"m2m:cnt": {"rn": "late"}}, AE))
            assert late.status == RSC.CREATED, late.content
            await a.notifier.wait_until(lambda: a.notifier.pending_count() == 0)
            assert a.notifier.delivered == 1  # the subscription heard of "late"
            bodies = await receiver.wait_for(2)
            created = bodies[1]["body"]["m2m:sgn"]["nev"]["rep"]["m2m:cnt"]
            assert created["rn"] == "late"
    finally:
        storage._on_notice = hear  # type: ignore[method-assign]
        for payload in held:
            hear(payload)


# ---- the storage itself: what PostgreSQL enforces between workers ---------------------------


def _res(path: str, ty: int, ri: str, pi: str, **attributes: Any) -> Resource:
    name = path.rsplit("/", 1)[-1]
    return Resource({"ty": ty, "ri": ri, "rn": name, "pi": pi, **attributes}, path, "Cowner")


@pytest.fixture
async def two_storages(
    postgres_schema: PostgresSchema,
) -> AsyncIterator[tuple[PostgresStorage, PostgresStorage]]:
    # Leases that no renewal refreshes during a test: a test ends one by hand.
    a = PostgresStorage(postgres_schema.url, schema=postgres_schema.schema, lease=60.0)
    b = PostgresStorage(postgres_schema.url, schema=postgres_schema.schema, lease=60.0)
    await a.open()
    await b.open()
    await a.apply([Put(_res("cse-in", 5, "id-in", ""))])
    await a.sync()
    yield a, b
    await a.close()
    await b.close()


def _own_connection(where: PostgresSchema) -> psycopg.Connection[tuple[Any, ...]]:
    conn = psycopg.connect(where.url)
    conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(where.schema)))
    conn.commit()
    return conn


async def test_a_name_held_by_another_open_transaction_is_a_conflict_then_taken_for_good(
    two_storages: tuple[PostgresStorage, PostgresStorage], postgres_schema: PostgresSchema
) -> None:
    _, b = two_storages
    with _own_connection(postgres_schema) as other:  # another worker's open group
        other.execute(
            "INSERT INTO resources (seq, ri, pi, path, ty, depth, owner, version, body) "
            "VALUES (nextval('resource_seq'), 'x1', 'id-in', 'cse-in/x', 3, 1, 'C', 1, "
            """'{"ty": 3, "ri": "x1", "rn": "x", "pi": "id-in"}')"""
        )
        with pytest.raises(WriteConflict) as waited:
            await b.apply([Put(_res("cse-in/x", 3, "x2", "id-in"))])
        assert waited.value.retry_after > 0  # worth waiting for that transaction's end
        other.commit()
    with pytest.raises(WriteConflict) as taken:
        await b.apply([Put(_res("cse-in/x", 3, "x2", "id-in"))])
    assert taken.value.retry_after == 0  # decide again at once: the name is taken
    assert await b.get("x2") is None
    assert (await b.get_by_path("cse-in/x")).ri == "x1"  # type: ignore[union-attr]


async def test_a_change_made_on_a_stale_copy_is_refused(
    two_storages: tuple[PostgresStorage, PostgresStorage],
) -> None:
    a, b = two_storages
    await a.apply([Put(_res("cse-in/c", 3, "c1", "id-in", cni=0))])
    await a.sync()
    read_by_b = await b.get("c1")
    read_by_a = await a.get("c1")
    assert read_by_a is not None and read_by_b is not None
    await a.apply([Put(read_by_a.with_attributes(cni=1))])
    await a.sync()
    with pytest.raises(WriteConflict):
        await b.apply([Put(read_by_b.with_attributes(cni=1))])  # a's change would be lost
    fresh = await b.get("c1")  # the conflict dropped b's copy: read again
    assert fresh is not None and fresh.attributes["cni"] == 1
    heard = asyncio.Event()
    a.watch_others(lambda changed: heard.set() if ("c1", 3) in changed.put else None)
    await b.apply([Put(fresh.with_attributes(cni=2))])
    await b.sync()
    async with asyncio.timeout(10):  # a's cache follows once b's notice arrives
        await heard.wait()
    assert (await a.get("c1")).attributes["cni"] == 2  # type: ignore[union-attr]


async def test_a_child_of_a_parent_deleted_by_another_worker_is_refused(
    two_storages: tuple[PostgresStorage, PostgresStorage],
) -> None:
    a, b = two_storages
    parent = _res("cse-in/p", 2, "p1", "id-in")
    await a.apply([Put(parent)])
    await a.sync()
    assert await b.get("p1") is not None
    from cse.storage.base import DeleteTree

    await a.apply([DeleteTree(parent)])
    await a.sync()
    with pytest.raises(WriteConflict):
        await b.apply([Put(_res("cse-in/p/c", 3, "c1", "p1"))])  # no orphan
    with pytest.raises(WriteConflict):
        await b.apply([DeleteTree(parent)])  # deleted once: the second is told so


async def test_a_child_decided_on_subscriptions_changed_since_is_refused_and_read_again(
    two_storages: tuple[PostgresStorage, PostgresStorage], postgres_schema: PostgresSchema
) -> None:
    a, b = two_storages
    parent = _res("cse-in/p", 2, "p1", "id-in")
    await a.apply([Put(parent)])
    await a.sync()
    assert await b.children("p1", [23]) == []  # what b decides its next batch on
    subscription = _res("cse-in/p/s", 23, "s1", "p1", nu=["Cx"])
    await a.apply([Put(subscription)])
    await a.sync()  # committed before b's child is stored
    with pytest.raises(WriteConflict) as refused:
        await b.apply([Put(_res("cse-in/p/c", 3, "c1", "p1"))])
    assert refused.value.retry_after == 0  # decide again at once, on fresh data
    assert [sub.ri for sub in await b.children("p1", [23])] == ["s1"]  # not a stale copy
    await b.apply([Put(_res("cse-in/p/c", 3, "c1", "p1"))])  # decided on what is there
    await b.sync()
    # A change of the subscriptions that is not committed yet holds the parent: a child
    # decided meanwhile waits for its end, then is decided again.
    assert [sub.ri for sub in await b.children("p1", [23])] == ["s1"]
    with _own_connection(postgres_schema) as other:
        other.execute("SELECT 1 FROM resources WHERE ri = 'p1' FOR NO KEY UPDATE")
        with pytest.raises(WriteConflict) as waited:
            await b.apply([Put(_res("cse-in/p/d", 3, "d1", "p1"))])
        assert waited.value.retry_after > 0
        other.rollback()
    # And the other way round: a child being stored holds off a new subscription.
    with _own_connection(postgres_schema) as other:
        other.execute("SELECT 1 FROM resources WHERE ri = 'p1' FOR SHARE")
        with pytest.raises(WriteConflict) as held_off:
            await a.apply([Put(_res("cse-in/p/t", 23, "s2", "p1", nu=["Cx"]))])
        assert held_off.value.retry_after > 0
        other.rollback()
    assert await a.get("s2") is None and await b.get("d1") is None


async def test_entries_of_a_worker_whose_lease_ran_out_are_claimed_by_one_worker_each(
    two_storages: tuple[PostgresStorage, PostgresStorage],
    postgres_schema: PostgresSchema,
) -> None:
    a, b = two_storages
    c = PostgresStorage(postgres_schema.url, schema=postgres_schema.schema, lease=60.0)
    await c.open()
    try:
        floor = await a.notification_id_floor()
        items = [
            QueuedNotification(floor + n, "http://x", "sub1", float(n), {"n": n})
            for n in range(1, 41)
        ]
        await a.apply([Enqueue(item) for item in items])
        await a.sync()
        assert await b.claim_notifications(100) == []  # a is alive: its entries stay its own
        with _own_connection(postgres_schema) as conn:  # a stops renewing its lease
            conn.execute(
                "UPDATE workers SET alive_until = now() - interval '1 second' "
                "WHERE id = (SELECT min(id) FROM workers)"
            )
            conn.commit()
        by_b, by_c = await asyncio.gather(b.claim_notifications(100), c.claim_notifications(100))
        claimed_b, claimed_c = {i.id for i in by_b}, {i.id for i in by_c}
        assert not claimed_b & claimed_c  # nobody delivers an entry another took
        assert claimed_b | claimed_c == {item.id for item in items}
        assert await b.claim_notifications(100) == []
    finally:
        await c.close()


async def test_one_worker_at_a_time_sweeps(
    two_storages: tuple[PostgresStorage, PostgresStorage],
) -> None:
    a, b = two_storages
    assert await a.lead("expiry sweep") is True
    assert await b.lead("expiry sweep") is False
    assert await a.lead("expiry sweep") is True  # still a's, asked again
    await a.close()
    assert await b.lead("expiry sweep") is True  # a's session, and its lock, are gone


async def test_postgresql_unavailable_fails_requests_with_5000_and_they_work_again_after(
    postgres_private: str,
) -> None:
    storage = PostgresStorage(postgres_private, reconnect_pause=0.0)
    cse = CommonServicesEntity(storage, SETTINGS)
    await cse.start()
    try:
        await _meter_with_container(cse)
        made = await cse.handle(create("cse-in/meter/reads", 4, _instance(0), AE))
        assert made.status == RSC.CREATED
        name = psycopg.conninfo.conninfo_to_dict(postgres_private)["dbname"]
        with admin() as conn:
            conn.execute(
                sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(
                    sql.Identifier(str(name))
                )
            )
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
        for number in range(1, 4):
            async with asyncio.timeout(30):  # an answer, not a hang
                answer = await cse.handle(create("cse-in/meter/reads", 4, _instance(number), AE))
            assert answer.status == RSC.INTERNAL_SERVER_ERROR
            async with asyncio.timeout(30):  # an instance is never cached: read from the server
                read = await cse.handle(retrieve("cse-in/meter/reads/i0", AE))
            assert read.status == RSC.INTERNAL_SERVER_ERROR
        assert storage.health.failing
        with admin() as conn:
            conn.execute(
                sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(
                    sql.Identifier(str(name))
                )
            )
        answer = await cse.handle(create("cse-in/meter/reads", 4, _instance(9), AE))
        assert answer.status == RSC.CREATED
        assert (await cse.handle(retrieve("cse-in/meter/reads/i9", AE))).status == RSC.OK
        assert (await cse.handle(retrieve("cse-in/meter/reads/i0", AE))).status == RSC.OK
        assert not storage.health.failing
    finally:
        await cse.stop()


# ---- waiting for another worker's locks -------------------------------------------------


async def _until_waiting(where: PostgresSchema, statement: str, done: asyncio.Task[Any]) -> None:
    """Return once a worker's connection waits for a lock while running `statement` (or the
    request ended without waiting)."""
    with psycopg.connect(where.url, autocommit=True) as observer:
        async with asyncio.timeout(30):
            while not done.done():
                row = observer.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name LIKE 'gridm2m-cse-%%' AND wait_event_type = 'Lock' "
                    "AND query LIKE %s",
                    (statement,),
                ).fetchone()
                if row is not None and row[0]:
                    return
                await asyncio.sleep(0.005)  # a poll of the server's state, not a pause


async def test_an_instance_added_to_a_container_another_transaction_holds_waits_and_succeeds(
    start_worker: StartWorker, postgres_schema: PostgresSchema
) -> None:
    worker = await start_worker()
    await _meter_with_container(worker)
    with _own_connection(postgres_schema) as other:  # another worker's open group
        other.execute("SELECT 1 FROM resources WHERE path = 'cse-in/meter/reads' FOR UPDATE")
        adding = asyncio.create_task(
            worker.handle(create("cse-in/meter/reads", 4, _instance(1), AE))
        )
        await _until_waiting(postgres_schema, "SELECT 1 FROM resources WHERE ri = ANY%", adding)
        assert not adding.done(), adding.result()  # refused at lock_timeout, waiting for the rows
        other.commit()
        answer = await adding
    assert answer.status == RSC.CREATED, answer.content
    container = await worker.storage.get_by_path("cse-in/meter/reads")
    assert container is not None and container.attributes["cni"] == 1


def _gate_commits(other: psycopg.Connection[Any], body: str) -> None:
    """A deferred trigger on `resources` that runs `body` in the COMMIT of each transaction
    that inserted a resource: it stands for what a COMMIT itself can wait for or fail on."""
    other.execute(
        "CREATE FUNCTION gate() RETURNS trigger LANGUAGE plpgsql AS "
        f"$$ BEGIN {body}; RETURN NULL; END $$"
    )
    other.execute(
        "CREATE CONSTRAINT TRIGGER gate AFTER INSERT ON resources "
        "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION gate()"
    )
    other.commit()


async def test_a_commit_that_waits_for_a_lock_is_not_refused(
    start_worker: StartWorker, postgres_schema: PostgresSchema
) -> None:
    """A COMMIT that sends change notices takes PostgreSQL's lock on the notification queue,
    which another worker's COMMIT holds while it flushes: a short wait that often passed
    lock_timeout (2 ms) under load. No test can hold that lock, so a lock the COMMIT waits
    for (an advisory lock taken in a deferred trigger) stands for it."""
    worker = await start_worker()
    await _meter_with_container(worker)
    key = int.from_bytes(os.urandom(4), "big")
    with _own_connection(postgres_schema) as other:
        _gate_commits(other, f"PERFORM pg_advisory_xact_lock_shared({key})")
        other.execute("SELECT pg_advisory_xact_lock(%s)", (key,))  # held until other commits
        adding = asyncio.create_task(
            worker.handle(create("cse-in/meter/reads", 4, _instance(1), AE))
        )
        await _until_waiting(postgres_schema, "COMMIT", adding)
        assert not adding.done(), adding.result()
        other.commit()
        answer = await adding
    assert answer.status == RSC.CREATED, answer.content
    assert _storage(worker).health.failures == 0


async def test_a_group_refused_at_commit_by_a_conflict_is_decided_again(
    start_worker: StartWorker, postgres_schema: PostgresSchema
) -> None:
    worker = await start_worker()
    await _meter_with_container(worker)
    with _own_connection(postgres_schema) as other:
        other.execute("CREATE SEQUENCE gate_calls")  # not rolled back with the COMMIT
        _gate_commits(
            other,
            "IF nextval('gate_calls') = 1 THEN "
            "RAISE EXCEPTION 'refused once' USING ERRCODE = 'serialization_failure'; END IF",
        )
    answer = await worker.handle(create("cse-in/meter/reads", 4, _instance(1), AE))
    assert answer.status == RSC.CREATED, answer.content
    assert worker.write_conflicts >= 1  # the first COMMIT was refused
    container = await worker.storage.get_by_path("cse-in/meter/reads")
    assert container is not None
    stored = await worker.storage.instances(container.ri, newest=False, limit=10)
    assert [r.rn for r in stored] == ["i1"]  # once


async def test_a_task_hears_whether_its_own_batches_were_committed_not_later_ones(
    two_storages: tuple[PostgresStorage, PostgresStorage], postgres_schema: PostgresSchema
) -> None:
    """sync() speaks of the batches the calling task applied: a request is not answered 5000
    for a later group that was lost, nor 2001 for its own group lost before it asked."""
    storage, _ = two_storages
    key = int.from_bytes(os.urandom(4), "big")

    async def apply_then_sync(
        resource: Resource, applied: asyncio.Event, go: asyncio.Event
    ) -> None:
        await storage.apply([Put(resource)])
        applied.set()
        await go.wait()
        await storage.sync()

    applied, go = asyncio.Event(), asyncio.Event()
    first = asyncio.create_task(apply_then_sync(_res("cse-in/a", 3, "a1", "id-in"), applied, go))
    await applied.wait()
    await storage.sync()  # a task that applied nothing waits for every batch: "a" is stored
    with _own_connection(postgres_schema) as other:
        # Every later group's COMMIT waits for a lock, then fails.
        _gate_commits(other, f"PERFORM pg_advisory_xact_lock_shared({key}); RAISE EXCEPTION 'lost'")
        other.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
        later_go = asyncio.Event()
        later = asyncio.create_task(
            apply_then_sync(_res("cse-in/b", 3, "b1", "id-in"), asyncio.Event(), later_go)
        )
        later_go.set()
        await _until_waiting(postgres_schema, "COMMIT", later)  # "b"'s group, committing
        go.set()  # "a"'s task asks now, with a later group still open
        other.commit()
    await first  # its own batch was committed: no error
    with pytest.raises(StorageError):
        await later
    assert await storage.get("a1") is not None and await storage.get("b1") is None

    # A task whose group was lost before it asked hears it.
    applied, go = asyncio.Event(), asyncio.Event()
    lost = asyncio.create_task(apply_then_sync(_res("cse-in/c", 3, "c1", "id-in"), applied, go))
    await applied.wait()
    with pytest.raises(StorageError):
        await storage.sync()  # "c"'s group, lost
    go.set()
    with pytest.raises(StorageError):
        await lost
    assert await storage.get("c1") is None
