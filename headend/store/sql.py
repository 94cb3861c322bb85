"""The MDMS store's tables and the SQL both backends run.

Besides the raw messages the store keeps small summary tables, updated in the same
transaction as the messages they count (`summaries.py`), so that the dashboard's questions
(meters with their latest registers, counts per flow, latency statistics) never scan the whole
message history:

  meters     one row per meter: first/last seen, message and alarm counts, switch state
  registers  the latest value of each register of each meter (by meter time)
  flows      per (family, flow, payload type): count, count within the flow's latency
             budget, the worst latency and the tightest budget seen
  message_days  per (day, family): how many messages of that creation day are kept, what the
             latency percentiles rank over once retention has removed old days (the other
             summaries count every message ever received)

and the two sides of CIS/Billing's bulk meter reads (`bulk_reads.py`): `cis_requests`, what
CIS sent and received, and `bulk_reads`, how the MDMS handled each request.

The messages table differs between the backends only in its keys: on SQLite `key` alone is
unique; on PostgreSQL the table is partitioned by day of `created_at` (`partitions.py`), and a
unique constraint there must contain the partition column, so it is UNIQUE (key, created_at).
"""

from __future__ import annotations

from typing import Any

from headend.store.records import ERROR_TYPE

# {int}, {real} and {json} are each backend's column types, {id} its increasing key of a
# table; {message_id}, {message_key}, {message_keys} and {message_partitioning} its keys and
# partitioning of the messages table.
SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id          {message_id},  -- increasing, never reused: feeds page by id
    key         {message_key},
    dap         TEXT NOT NULL,
    meter       TEXT NOT NULL,
    family      TEXT NOT NULL,
    flow        TEXT NOT NULL,
    ptype       TEXT NOT NULL,
    seq         {int},
    meter_ts    {real},
    created_at  {real} NOT NULL,
    received_at {real} NOT NULL,
    latency     {real} NOT NULL,
    size        {int} NOT NULL,
    budget_s    {real},
    priority    {int} NOT NULL,
    ref         TEXT,
    content     {json} NOT NULL{message_keys}
){message_partitioning};
CREATE INDEX IF NOT EXISTS messages_by_meter ON messages (meter, id);
CREATE INDEX IF NOT EXISTS messages_by_family ON messages (family, id);
CREATE INDEX IF NOT EXISTS messages_by_latency ON messages (family, latency);
CREATE INDEX IF NOT EXISTS messages_by_ref ON messages (ref) WHERE ref IS NOT NULL;
CREATE TABLE IF NOT EXISTS meters (
    meter        TEXT PRIMARY KEY,
    dap          TEXT NOT NULL,
    first_seen   {real} NOT NULL,
    last_seen    {real} NOT NULL,
    messages     {int} NOT NULL,
    alarms       {int} NOT NULL,
    switch_state {int},
    switch_at    {real}
);
CREATE INDEX IF NOT EXISTS meters_by_last_seen ON meters (last_seen);
CREATE TABLE IF NOT EXISTS registers (
    meter   TEXT NOT NULL,
    code    TEXT NOT NULL,
    value   {real} NOT NULL,
    read_at {real} NOT NULL,
    PRIMARY KEY (meter, code)
);
CREATE TABLE IF NOT EXISTS flows (
    family        TEXT NOT NULL,
    flow          TEXT NOT NULL,
    ptype         TEXT NOT NULL,
    messages      {int} NOT NULL,
    within_budget {int} NOT NULL,
    max_latency   {real} NOT NULL,
    budget_s      {real},
    PRIMARY KEY (family, flow, ptype)
);
CREATE TABLE IF NOT EXISTS message_days (
    day      {int} NOT NULL,  -- records.day_of(created_at)
    family   TEXT NOT NULL,
    messages {int} NOT NULL,
    PRIMARY KEY (day, family)
);
CREATE TABLE IF NOT EXISTS commands (
    id          TEXT PRIMARY KEY,
    dap         TEXT NOT NULL,
    meter       TEXT NOT NULL,
    name        TEXT NOT NULL,
    body        {json} NOT NULL,
    issued_at   {real} NOT NULL,
    issued_by   TEXT NOT NULL,
    status      TEXT NOT NULL,
    result      {json},
    answered_at {real},
    reached_dap_at {real}  -- the command's creation time at the DAP (its CREATE's answer)
);
CREATE INDEX IF NOT EXISTS commands_by_time ON commands (issued_at, id);
CREATE INDEX IF NOT EXISTS commands_by_meter ON commands (meter, issued_at);
CREATE INDEX IF NOT EXISTS commands_by_status ON commands (status);
CREATE TABLE IF NOT EXISTS gateways (
    dap         TEXT PRIMARY KEY,
    reported_at {real} NOT NULL,
    status      {json} NOT NULL
);
CREATE TABLE IF NOT EXISTS cis_requests (
    seq              {id},  -- increasing: the API pages by it
    id               TEXT NOT NULL UNIQUE,
    cycle            TEXT NOT NULL,
    meters           {int} NOT NULL,
    sent_at          {real} NOT NULL,
    utility_ts       {real} NOT NULL,
    size             {int} NOT NULL,
    status           TEXT NOT NULL,
    detail           TEXT,
    data_received_at {real},
    data_size        {int},
    segments         {int},
    missing          {json},
    data             {json}
);
CREATE TABLE IF NOT EXISTS bulk_reads (
    id          TEXT PRIMARY KEY,
    cycle       TEXT NOT NULL,
    received_at {real} NOT NULL,
    deadline_at {real} NOT NULL,
    commands    {json} NOT NULL,
    status      TEXT NOT NULL,
    detail      TEXT,
    ready_at    {real},
    answered_at {real},
    data_size   {int},
    segments    {int},
    missing     {json}
);
CREATE INDEX IF NOT EXISTS bulk_reads_by_status ON bulk_reads (status);
"""

# Queries are written once with `?` placeholders (SQLite's); PostgresMdmsStore turns them into
# psycopg's `%s`. Both databases take ON CONFLICT ... DO UPDATE with `excluded` and RETURNING,
# and CASE instead of the min/max (SQLite) or LEAST/GREATEST (PostgreSQL) that differ.
INSERT_MESSAGE = """
INSERT INTO messages (key, dap, meter, family, flow, ptype, seq, meter_ts, created_at,
                      received_at, latency, size, budget_s, priority, ref, content)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (key) DO NOTHING
RETURNING id
"""

UPSERT_METER = """
INSERT INTO meters (meter, dap, first_seen, last_seen, messages, alarms, switch_state, switch_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (meter) DO UPDATE SET
    dap = CASE WHEN excluded.last_seen >= meters.last_seen THEN excluded.dap ELSE meters.dap END,
    first_seen = CASE WHEN excluded.first_seen < meters.first_seen
                      THEN excluded.first_seen ELSE meters.first_seen END,
    last_seen = CASE WHEN excluded.last_seen > meters.last_seen
                     THEN excluded.last_seen ELSE meters.last_seen END,
    messages = meters.messages + excluded.messages,
    alarms = meters.alarms + excluded.alarms,
    switch_state = CASE WHEN excluded.switch_at IS NOT NULL
                          AND (meters.switch_at IS NULL OR excluded.switch_at >= meters.switch_at)
                        THEN excluded.switch_state ELSE meters.switch_state END,
    switch_at = CASE WHEN excluded.switch_at IS NOT NULL
                       AND (meters.switch_at IS NULL OR excluded.switch_at >= meters.switch_at)
                     THEN excluded.switch_at ELSE meters.switch_at END
"""

UPSERT_REGISTER = """
INSERT INTO registers (meter, code, value, read_at) VALUES (?, ?, ?, ?)
ON CONFLICT (meter, code) DO UPDATE SET value = excluded.value, read_at = excluded.read_at
WHERE excluded.read_at >= registers.read_at
"""

UPSERT_FLOW = """
INSERT INTO flows (family, flow, ptype, messages, within_budget, max_latency, budget_s)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (family, flow, ptype) DO UPDATE SET
    messages = flows.messages + excluded.messages,
    within_budget = flows.within_budget + excluded.within_budget,
    max_latency = CASE WHEN excluded.max_latency > flows.max_latency
                       THEN excluded.max_latency ELSE flows.max_latency END,
    budget_s = CASE WHEN flows.budget_s IS NULL
                      OR (excluded.budget_s IS NOT NULL AND excluded.budget_s < flows.budget_s)
                    THEN excluded.budget_s ELSE flows.budget_s END
"""

UPSERT_MESSAGE_DAY = """
INSERT INTO message_days (day, family, messages) VALUES (?, ?, ?)
ON CONFLICT (day, family) DO UPDATE SET messages = message_days.messages + excluded.messages
"""

# The column types of each summary upsert's VALUES, by type key: PostgreSQL runs each as one
# INSERT ... SELECT FROM unnest(one array per column) for a whole batch, instead of a
# statement per row (postgres.py).
UPSERT_COLUMN_TYPES = {
    UPSERT_METER: ("text", "text", "real", "real", "int", "int", "int", "real"),
    UPSERT_REGISTER: ("text", "text", "real", "real"),
    UPSERT_FLOW: ("text", "text", "text", "int", "int", "real", "real"),
    UPSERT_MESSAGE_DAY: ("int", "text", "int"),
}

# A message answers the command whose id is its `ref`. A command sent to a group of meters is
# recorded once per meter as "<id>@<meter>" (the meters all answer with ref = <id>), so a
# message also answers "<ref>@<its meter>". The first answer completes a command; later ones
# (a switch answers with an ack and then its metrology) stay in the history, linked by `ref`.
COMPLETE_COMMAND = """
UPDATE commands SET status = ?, result = ?, answered_at = ?
WHERE id = ? AND status IN ('pending', 'timed-out')
"""

# A command unanswered for `[headend.commands] timeout`; an answer that comes later still
# completes it (COMPLETE_COMMAND).
TIME_OUT_COMMAND = "UPDATE commands SET status = 'timed-out' WHERE id = ? AND status = 'pending'"
PENDING_ISSUED_BEFORE = (
    "SELECT id FROM commands WHERE status = 'pending' AND issued_at < ? ORDER BY issued_at LIMIT ?"
)

INSERT_COMMAND = """
INSERT INTO commands (id, dap, meter, name, body, issued_at, issued_by, status)
VALUES (?, ?, ?, ?, ?, ?, ?, 'pending')
ON CONFLICT (id) DO NOTHING
"""

# The answers of a command: parameters (id, group id, meter) from `answer_params`.
IS_ANSWER = "(ref = ? OR (ref = ? AND meter = ?))"

# An answer can be mirrored before the app got round to recording its command.
COMPLETE_FROM_EARLIER_ANSWER = f"""
WITH answer AS (
    SELECT ptype, content, received_at FROM messages WHERE {IS_ANSWER} ORDER BY id LIMIT 1
)
UPDATE commands SET
    status = CASE WHEN answer.ptype = '{ERROR_TYPE}' THEN 'failed' ELSE 'answered' END,
    result = answer.content,
    answered_at = answer.received_at
FROM answer
WHERE commands.id = ? AND commands.status IN ('pending', 'timed-out')
"""


def answer_params(command_id: str) -> tuple[str, str | None, str | None]:
    group_id, at, meter = command_id.partition("@")
    return (command_id, group_id, meter) if at else (command_id, None, None)


UPSERT_GATEWAY = """
INSERT INTO gateways (dap, reported_at, status) VALUES (?, ?, ?)
ON CONFLICT (dap) DO UPDATE SET reported_at = excluded.reported_at, status = excluded.status
WHERE excluded.reported_at >= gateways.reported_at
"""

# What a message row is written with (all but the id), in INSERT_MESSAGE's order.
INSERTED_MESSAGE_COLUMNS = (
    "key", "dap", "meter", "family", "flow", "ptype", "seq", "meter_ts", "created_at",
    "received_at", "latency", "size", "budget_s", "priority", "ref", "content",
)  # fmt: skip

MESSAGE_COLUMNS = (
    "id, key, dap, meter, family, flow, ptype, seq, meter_ts, created_at, received_at, latency, "
    "size, budget_s, priority, content"
)
METER_COLUMNS = "meter, dap, first_seen, last_seen, messages, alarms, switch_state, switch_at"
COMMAND_COLUMNS = (
    "id, dap, meter, name, body, issued_at, issued_by, status, result, answered_at, reached_dap_at"
)

# A database made before the key named the instance's container has keys "<dap>/<instance
# name>"; the upgrade makes them "<dap>/<family>/<instance name>", as the MDMS now makes them
# (an instance name never holds a "/"), so that a copy of an old message arriving after the
# upgrade is still recognised.
KEY_BEFORE_CONTAINER = (
    "substr(key, 1, length(dap) + 1) = dap || '/' AND substr(key, length(dap) + 2) NOT LIKE '%/%'"
)
KEY_WITH_CONTAINER = "dap || '/' || family || substr(key, length(dap) + 1)"

# Columns added after a table's first release: (table, column, type key), added to a database
# made before them when the store opens it.
ADDED_COLUMNS = (("commands", "reached_dap_at", "real"),)

# When the DAP created a command's instance; the first answer that says so is kept.
COMMAND_REACHED_DAP = """
UPDATE commands SET reached_dap_at = ? WHERE id = ? AND reached_dap_at IS NULL
"""

# A page of commands in the order they were issued, after a (issued_at, id) cursor.
COMMANDS_AFTER = f"""
SELECT {COMMAND_COLUMNS} FROM commands
WHERE issued_at > ? OR (issued_at = ? AND id > ?)
ORDER BY issued_at, id LIMIT ?
"""

Statement = tuple[str, list[tuple[Any, ...]]]  # one query, run once per parameter tuple
Query = tuple[str, tuple[Any, ...]]
