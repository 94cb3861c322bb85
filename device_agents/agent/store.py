"""Store-and-forward: the meter's outbox while the DAP is away.

A bounded buffer of items `[priority, family, flow_id, body, request_id]`, sent in order of
priority (0 first) and, within a priority, age (oldest first). `request_id` is None until the
first attempt to send the item; from then on every attempt uses it (`set_request_id`), so the
DAP can tell a retry from a new message. `body` is the message as the agent will send
it, normally its JSON text: a string costs about its length in RAM, while the same message as
a dict of lists costs two to three times that. Bounded by a count and by bytes: the length of
the bodies plus what each item costs a board's heap besides (`ITEM_RAM`, `PIECE_RAM`), so
that the budget is the outbox's RAM whether it holds a few 2 KB reads or a hundred 25-byte
acknowledgements. When a new item does not fit, the store drops the oldest item of the least
important level that is not more important than the new one - bulk interval reads (3) go
first, then on-demand data (2), then acks and command errors (1); alarms and alerts (0) are
never dropped to make room. If nothing may go, the new item itself is dropped (counted in
`dropped_new`; an alarm that finds the whole store full of alarms is counted in
`dropped_alarms` as well: the first alarms of an outage are kept, they name the cause).

Optional persistence to a flash file, an append-only log of one JSON line per change:
`+[id, priority, family, flow_id, body, request_id]` (appended), `^[...]` (back at the front of
its priority, after a failed send), `*[id, request_id]` (first sent), `-id` (sent or dropped).
The log is rewritten (compacted) when it holds far more lines than items, and replayed at
start; a torn last line (power lost mid-write) is ignored. Plain `open`, `os.rename`,
`os.remove`: MicroPython's VFS has them all.
"""

import binascii
import json
import os

try:
    from . import compat
except ImportError:
    import compat

const = compat.const
_LEVELS = const(4)  # priorities 0 (alarms/alerts) .. 3 (bulk interval data)
# An item's heap besides its body on the 64-bit unix port (the item and entry lists, the
# body's object; about half on a 32-bit board), and each piece's of a body in pieces.
ITEM_RAM = 160
PIECE_RAM = 32


def _size(body):
    """What a stored body costs: its length and the objects that hold it."""
    if isinstance(body, (str, bytes)):
        return ITEM_RAM + len(body)
    if isinstance(body, list):  # a long message in pieces (jsonparts.to_json, ucbor)
        size = ITEM_RAM
        for piece in body:
            size += PIECE_RAM + len(piece)
        return size
    return ITEM_RAM + len(json.dumps(body))


class Store:
    """The outbox. Items are [priority, family, flow_id, body, request_id] lists (4-tuples are
    taken too, without a request ID); identity is the object."""

    def __init__(self, max_items=200, max_bytes=16384, path=None):
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.path = path
        self._levels = [[] for _ in range(_LEVELS)]  # per priority: [id, size, item] oldest first
        self.count = 0
        self.bytes = 0
        self.dropped = 0
        self.dropped_new = 0
        self.dropped_alarms = 0
        self.dropped_by_flow = {}
        self._next_id = 1
        self._log_lines = 0
        if path is not None:
            self._restore()

    def __len__(self):
        return self.count

    # ---- the queue ------------------------------------------------------------------------

    def put(self, item):
        """Store an item at the back of its priority; False if it had to be dropped."""
        return self._insert(item, False)

    def requeue(self, item):
        """Give back an item taken with pop() whose send failed: front of its priority."""
        return self._insert(item, True)

    def peek(self):
        """The item to send next, or None."""
        for level in self._levels:
            if level:
                return level[0][2]
        return None

    def pop(self, item=None):
        """Remove and return the next item, or exactly `item` (None if it is gone)."""
        if item is None:
            for level in self._levels:
                if level:
                    return self._remove(level, 0)
            return None
        level = self._levels[_level(item[0])]
        for i in range(len(level)):
            if level[i][2] is item:
                return self._remove(level, i)
        return None

    def set_request_id(self, item, request_id):
        """Give a stored list item the request ID of its first send (logged to flash too)."""
        item[4] = request_id
        if self.path is not None:
            for entry in self._levels[_level(item[0])]:
                if entry[2] is item:
                    self._append("*" + json.dumps([entry[0], request_id]))

    def items(self):
        """All items in sending order."""
        out = []
        for level in self._levels:
            for entry in level:
                out.append(entry[2])
        return out

    def _insert(self, item, front):
        prio = _level(item[0])
        size = _size(item[3])
        if size > self.max_bytes:
            return self._reject(item)
        while self.count >= self.max_items or self.bytes + size > self.max_bytes:
            victim = None
            for lvl in range(_LEVELS - 1, max(prio, 1) - 1, -1):
                if self._levels[lvl]:
                    victim = self._levels[lvl]
                    break
            if victim is None:
                return self._reject(item)
            self.count_drop(self._remove(victim, 0))
        entry = [self._next_id, size, item]
        self._next_id += 1
        if front:
            self._levels[prio].insert(0, entry)
        else:
            self._levels[prio].append(entry)
        self.count += 1
        self.bytes += size
        if self.path is not None:
            self._append(("^" if front else "+") + _entry_json(entry))
        return True

    def _remove(self, level, index):
        entry = level.pop(index)
        self.count -= 1
        self.bytes -= entry[1]
        if self.path is not None:
            self._append("-" + str(entry[0]))
        return entry[2]

    def _reject(self, item):
        self.dropped_new += 1
        if _level(item[0]) == 0:
            self.dropped_alarms += 1
        self.count_drop(item)
        return False

    def count_drop(self, item):
        """Count an item as dropped (also one the agent could not even build)."""
        self.dropped += 1
        flow_id = item[2]
        self.dropped_by_flow[flow_id] = self.dropped_by_flow.get(flow_id, 0) + 1

    # ---- persistence ----------------------------------------------------------------------

    def _append(self, line):
        with open(self.path, "a") as f:
            f.write(line + "\n")
        self._log_lines += 1
        if self._log_lines > 4 * self.count + 64:
            self._compact()

    def _compact(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            for level in self._levels:
                for entry in level:
                    f.write("+" + _entry_json(entry) + "\n")
        try:
            os.rename(tmp, self.path)
        except OSError:  # FAT will not rename onto an existing file
            os.remove(self.path)
            os.rename(tmp, self.path)
        self._log_lines = self.count

    def _restore(self):
        path = self.path
        if not _exists(path):
            if not _exists(path + ".tmp"):
                return
            os.rename(path + ".tmp", path)  # lost power between remove and rename
        entries = {}
        levels = [[] for _ in range(_LEVELS)]
        with open(path) as f:
            for line in f:
                _replay(line.strip(), entries, levels)
        self.path = None  # put() must not log while replaying
        for level in levels:
            for entry_id in level:
                entry = entries.get(entry_id)
                if entry is not None:
                    self._insert(entry, False)
        self.path = path
        self._compact()


def _level(priority):
    if priority < 0:
        return 0
    return priority if priority < _LEVELS else _LEVELS - 1


def _entry_json(entry):
    item = entry[2]
    request_id = item[4] if len(item) > 4 else None
    body = item[3]
    if isinstance(body, list) and body and not isinstance(body[0], str):
        body = {"cbor": [binascii.hexlify(piece).decode() for piece in body]}  # as hex text
    return json.dumps([entry[0], item[0], item[1], item[2], body, request_id])


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _replay(line, entries, levels):
    if not line:
        return
    try:
        if line[0] == "-":
            entries.pop(int(line[1:]), None)
            return
        if line[0] not in "+^*":
            return
        rec = json.loads(line[1:])
        if line[0] == "*":
            found = entries.get(rec[0])
            if found is not None:
                found[4] = rec[1]
            return
        entry_id, prio = rec[0], _level(rec[1])
        body = rec[4]
        if isinstance(body, dict):  # a CBOR message, logged as hex text
            body = [binascii.unhexlify(piece) for piece in body["cbor"]]
        item = [prio, rec[2], rec[3], body, rec[5] if len(rec) > 5 else None]
    except (ValueError, IndexError, TypeError, KeyError):
        return  # a torn or foreign line
    entries[entry_id] = item
    if line[0] == "^":
        levels[prio].insert(0, entry_id)
    else:
        levels[prio].append(entry_id)
