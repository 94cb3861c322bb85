"""The CSE's tables on PostgreSQL and the statements that read and write them.

Plain text, no psycopg: cse/storage/postgres.py runs them. Paths, IDs and expiration times
use the "C" collation: a subtree is the byte range between "path/" and "path0", and oneM2M
timestamps compare as text.
"""

from __future__ import annotations

# Bumped with every change below; a worker that finds its own version in `meta` runs no DDL
# (DDL takes table locks that would stall the workers already running).
SCHEMA_VERSION = "2"

SCHEMA = """
CREATE SEQUENCE IF NOT EXISTS resource_seq;
CREATE SEQUENCE IF NOT EXISTS worker_numbers;
CREATE TABLE IF NOT EXISTS resources (
    seq     BIGINT PRIMARY KEY,
    ri      TEXT COLLATE "C" NOT NULL UNIQUE,
    -- NULL for the CSEBase. No foreign key: its lock on the parent, taken in one savepoint
    -- after another on a container the same transaction keeps updating, cost 0.6 ms of
    -- server CPU per batch (multixacts); gridm2m_apply keeps the same promise by hand.
    pi      TEXT COLLATE "C",
    path    TEXT COLLATE "C" NOT NULL UNIQUE,
    ty      INTEGER NOT NULL,
    depth   INTEGER NOT NULL,
    et      TEXT COLLATE "C",
    owner   TEXT NOT NULL,
    -- Raised by every change: a worker writes a resource only over the version it read.
    version BIGINT NOT NULL,
    body    JSON NOT NULL
);
CREATE INDEX IF NOT EXISTS resources_by_parent ON resources (pi, ty, seq);
CREATE INDEX IF NOT EXISTS resources_by_expiry ON resources (et) WHERE et IS NOT NULL;
-- created_since of groups and timeSeries at start, without reading every instance.
CREATE INDEX IF NOT EXISTS resources_by_type ON resources (ty, seq) WHERE ty NOT IN (4, 30);
CREATE INDEX IF NOT EXISTS instances_by_dgt ON resources (pi, (body ->> 'dgt')) WHERE ty = 30;
CREATE TABLE IF NOT EXISTS request_log (
    key TEXT PRIMARY KEY,
    ri  TEXT NOT NULL,
    at  DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS request_log_by_age ON request_log (at);
-- A worker that stops renewing `alive_until` has died (or lost the database): the outbox
-- entries it holds go to the next worker that claims them.
CREATE TABLE IF NOT EXISTS workers (
    id          BIGINT PRIMARY KEY,
    host        TEXT NOT NULL,
    pid         INTEGER NOT NULL,
    started     TIMESTAMPTZ NOT NULL DEFAULT now(),
    alive_until TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    id           BIGINT PRIMARY KEY,
    worker       BIGINT NOT NULL,
    target       TEXT NOT NULL,
    subscription TEXT NOT NULL,
    created      DOUBLE PRECISION NOT NULL,
    body         JSON NOT NULL,
    scheme       TEXT  -- set on an entry handed off (worker 0): who may claim it
);
CREATE INDEX IF NOT EXISTS outbox_by_worker ON outbox (worker, id);
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

COLUMNS = "seq, path, owner, version, body"

# One batch of changes, applied whole or not at all: the EXCEPTION block is a subtransaction
# (a savepoint) that takes back every change of the batch if one fails, and the error comes
# back as the result instead of aborting the group's transaction. One call per batch: a
# statement through psycopg costs far more than one inside PL/pgSQL, whose plans are kept.
# Each change is a JSON object; a body (a resource's or a notification's JSON) rides in it as
# a string, made JSON once where it is stored. The result is
# {"ok": [seq, version or null per change]} or {"error": SQLSTATE, "message": ...}; a
# conflict with another worker is 40001.
APPLY_FUNCTION = """
CREATE OR REPLACE FUNCTION gridm2m_apply(batch jsonb, me bigint) RETURNS json
LANGUAGE plpgsql AS $fn$
DECLARE
    c jsonb;
    done json[] := ARRAY[]::json[];
    number bigint;
    deleted boolean;
BEGIN
    FOR c IN SELECT value FROM jsonb_array_elements(batch) LOOP
        number := NULL;
        CASE c->>'op'
        WHEN 'insert' THEN
            IF c->>'under' IS NULL THEN
                INSERT INTO resources (seq, ri, pi, path, ty, depth, et, owner, version, body)
                VALUES (nextval('resource_seq'), c->>'ri', c->>'pi', c->>'path', (c->>'ty')::int,
                        (c->>'depth')::int, c->>'et', c->>'owner', 1, (c->>'body')::json)
                RETURNING seq INTO number;
            ELSE
                -- A parent this batch does not change: stored only if it is there, and it
                -- stays so until this transaction ends (a DELETE of it waits for the lock),
                -- with the same subscriptions (a change of them locks it: 'hold').
                INSERT INTO resources (seq, ri, pi, path, ty, depth, et, owner, version, body)
                SELECT nextval('resource_seq'), c->>'ri', c->>'pi', c->>'path', (c->>'ty')::int,
                       (c->>'depth')::int, c->>'et', c->>'owner', 1, (c->>'body')::json
                WHERE EXISTS (SELECT 1 FROM resources WHERE ri = c->>'under' FOR SHARE)
                RETURNING seq INTO number;
                IF number IS NULL THEN
                    RAISE EXCEPTION 'the parent of % is gone', c->>'path'
                        USING ERRCODE = 'serialization_failure';
                END IF;
            END IF;
        WHEN 'update' THEN
            -- Over the version read only (0: a copy not read from this database).
            UPDATE resources SET et = c->>'et', body = (c->>'body')::json, version = version + 1
            WHERE seq = (c->>'seq')::bigint
              AND ((c->>'version')::bigint = 0 OR version = (c->>'version')::bigint)
            RETURNING version INTO number;
            IF number IS NULL THEN
                RAISE EXCEPTION '% was changed or deleted by another worker', c->>'path'
                    USING ERRCODE = 'serialization_failure';
            END IF;
        WHEN 'delete' THEN
            -- The subtree of the resource the core read (the same ri still at that path).
            WITH gone AS (
                DELETE FROM resources
                WHERE (path = c->>'path' OR (path > c->>'low' AND path < c->>'high'))
                  AND EXISTS (SELECT 1 FROM resources WHERE ri = c->>'ri' AND path = c->>'path')
                RETURNING ri
            )
            SELECT coalesce(bool_or(ri = c->>'ri'), false) INTO deleted FROM gone;
            IF NOT deleted THEN
                RAISE EXCEPTION '% was deleted by another worker', c->>'path'
                    USING ERRCODE = 'serialization_failure';
            END IF;
            -- Anything left in it was added by another worker after that statement began
            -- (this one sees it: a new snapshot): decide the delete again.
            IF NOT (c->>'leaf')::boolean AND EXISTS (
                SELECT 1 FROM resources
                WHERE path = c->>'path' OR (path > c->>'low' AND path < c->>'high')
            ) THEN
                RAISE EXCEPTION 'another worker added below % meanwhile', c->>'path'
                    USING ERRCODE = 'serialization_failure';
            END IF;
        WHEN 'hold' THEN
            -- The subscriptions of this resource change: until this transaction ends, no
            -- other decides who hears of a change of it or of a new child ('subscribers').
            PERFORM 1 FROM resources WHERE ri = c->>'ri' FOR NO KEY UPDATE;
        WHEN 'subscribers' THEN
            -- Who the batch notified of a change of this resource (or of a new child) was
            -- decided on these subscriptions (ri, version): still so, under a lock that a
            -- change of them waits for ('hold'), or the request is decided again. Not
            -- compared: those the batch itself changes ('mine'), and those of a resource
            -- gone (its subscriptions went with it).
            IF (c->>'lock')::boolean THEN
                PERFORM 1 FROM resources WHERE ri = c->>'ri' FOR SHARE;
            ELSE
                PERFORM 1 FROM resources WHERE ri = c->>'ri';
            END IF;
            IF FOUND AND (
                SELECT coalesce(jsonb_agg(jsonb_build_array(ri, version) ORDER BY ri), '[]')
                FROM resources
                WHERE pi = c->>'ri' AND ty = 23 AND NOT (c->'mine' ? ri)
            ) <> c->'seen' THEN
                RAISE EXCEPTION 'the subscriptions of % changed meanwhile', c->>'ri'
                    USING ERRCODE = 'serialization_failure';
            END IF;
        WHEN 'enqueue' THEN
            INSERT INTO outbox (id, worker, target, subscription, created, body, scheme)
            VALUES ((c->>'id')::bigint, COALESCE((c->>'worker')::bigint, me), c->>'target',
                    c->>'subscription', (c->>'created')::float8, (c->>'body')::json,
                    c->>'scheme');
        WHEN 'dequeue' THEN
            DELETE FROM outbox
            WHERE id IN (SELECT value::bigint FROM jsonb_array_elements_text(c->'ids'));
        WHEN 'record' THEN
            -- A plain INSERT: a second record of one key (the same request served by two
            -- workers at once) is refused, and the core answers it from the first record.
            INSERT INTO request_log (key, ri, at)
            VALUES (c->>'key', c->>'ri', (c->>'at')::float8);
        WHEN 'forget' THEN
            DELETE FROM request_log WHERE at < (c->>'before')::float8;
        WHEN 'reserve' THEN
            PERFORM setval('resource_seq', (c->>'floor')::bigint)
            WHERE (c->>'floor')::bigint >
                  (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM resource_seq);
        END CASE;
        done := done || to_json(number);
    END LOOP;
    RETURN json_build_object('ok', done);
EXCEPTION WHEN OTHERS THEN
    RETURN json_build_object('error', SQLSTATE, 'message', SQLERRM);
END
$fn$;
"""
APPLY = "SELECT gridm2m_apply(%s::jsonb, %s)"
LAST_SEQ = "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM resource_seq"
REGISTER_WORKER = (
    "INSERT INTO workers (id, host, pid, alive_until) "
    "VALUES (nextval('worker_numbers'), %s, %s, now() + make_interval(secs => %s)) RETURNING id"
)
# Renewed while alive; the answer says whether it had run out (another worker may then have
# claimed this one's entries).
RENEW_WORKER = """
WITH before AS (SELECT id, alive_until FROM workers WHERE id = %(me)s FOR UPDATE)
UPDATE workers SET alive_until = now() + make_interval(secs => %(lease)s)
FROM before WHERE workers.id = before.id
RETURNING before.alive_until < now()
"""
# A worker that stops cleanly is dead at once: the others take its entries at their next claim.
RETIRE_WORKER = "UPDATE workers SET alive_until = '-infinity' WHERE id = %s"
# Entries of workers whose lease ran out, now this worker's. SKIP LOCKED: two workers claiming
# at once take different entries, and neither waits for the other. The dead are decided once
# (an InitPlan) and each entry's own `worker` is what is checked: a row another claimer has
# just taken is read again under its lock and no longer qualifies (a condition through a join
# would be checked against the old worker's row, and both would take it).
# Entries a worker could not send itself (no binding for the target's scheme) wait under
# worker 0, which never renews a lease, for a process that can; each claimer takes only the
# schemes it sends. The target is kept as subscribed (an AE-ID or a URL), so the scheme is
# the one the writer resolved it to, kept in `scheme`.
CLAIM_HANDED_OFF = """
UPDATE outbox SET worker = %(me)s
WHERE worker = 0
  AND id IN (
    SELECT id FROM outbox
    WHERE worker = 0 AND scheme = ANY(%(schemes)s)
    ORDER BY created, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
RETURNING id, target, subscription, created, body
"""

CLAIM_ORPHANS = """
UPDATE outbox SET worker = %(me)s
WHERE worker = ANY(ARRAY(SELECT id FROM workers WHERE alive_until < now() AND id <> %(me)s))
  AND id IN (
    SELECT id FROM outbox
    WHERE worker = ANY(ARRAY(SELECT id FROM workers WHERE alive_until < now() AND id <> %(me)s))
    ORDER BY created, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
RETURNING id, target, subscription, created, body
"""
OWN_ENTRIES = (
    "SELECT id, target, subscription, created, body FROM outbox WHERE worker = %s "
    "ORDER BY created, id LIMIT %s"
)
# Workers long dead whose entries have all been claimed.
FORGET_DEAD_WORKERS = (
    "DELETE FROM workers w WHERE w.alive_until < now() - interval '1 hour' "
    "AND NOT EXISTS (SELECT 1 FROM outbox WHERE worker = w.id)"
)
