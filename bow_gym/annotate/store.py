"""The annotation project's database: SQLite in WAL mode, one file.

Tables:

* ``meta``: the project's configuration (a :class:`~bow_gym.rounds.RoundsConfig` as JSON) and
  the schema version.
* ``annotators``: name, SHA-256 of the token (tokens are 32 random bytes, so a fast unsalted hash
  is enough: nobody can guess one to test against it), creation time, active flag.
* ``images``: one row per image in labelling order (``pos``): its status (``open``, ``active``,
  ``done``, ``skipped``), who holds it and until when (the lease), clicks answered, the current
  mask (packed bits, working resolution).
* ``events``: the log every state is rebuilt from, in order (``seq``): ``start`` (an image's
  episode begins), ``propose`` (the agent's click: action, label, pixel, patch, confidence),
  ``answer`` (+1/-1 to a proposal: who and when), ``skip``. Undone answers and withdrawn
  proposals keep their row, with ``undone_at``/``undone_by`` set, and are not replayed.

Every write of a request is one transaction; ``synchronous=FULL`` makes a committed answer
survive a crash of the machine, not only of the process.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS annotators (
    id INTEGER PRIMARY KEY,
    name TEXT UNIQUE NOT NULL,
    token_hash TEXT UNIQUE NOT NULL,
    created_at TEXT NOT NULL,
    active INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS images (
    pos INTEGER PRIMARY KEY,
    image_id TEXT UNIQUE NOT NULL,
    idx INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'open'
        CHECK (status IN ('open', 'active', 'done', 'skipped')),
    holder INTEGER REFERENCES annotators(id),
    lease_until REAL,
    clicks INTEGER NOT NULL DEFAULT 0,
    mask BLOB,
    updated_at TEXT
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('start', 'propose', 'answer', 'skip')),
    pos INTEGER NOT NULL REFERENCES images(pos),
    annotator INTEGER NOT NULL REFERENCES annotators(id),
    click INTEGER,
    action INTEGER,
    label INTEGER,
    y INTEGER,
    x INTEGER,
    patch INTEGER,
    confidence REAL,
    proposal INTEGER REFERENCES events(seq),
    answer INTEGER CHECK (answer IN (-1, 1)),
    created_at TEXT NOT NULL,
    undone_at TEXT,
    undone_by INTEGER REFERENCES annotators(id)
);
CREATE UNIQUE INDEX IF NOT EXISTS one_live_answer_per_proposal
    ON events(proposal) WHERE kind = 'answer' AND undone_at IS NULL;
CREATE INDEX IF NOT EXISTS events_by_pos ON events(pos, seq);
CREATE INDEX IF NOT EXISTS events_by_annotator ON events(annotator, seq);
"""


def utc_now() -> str:
    """The time of an answer: ISO 8601 in UTC with milliseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def hash_token(token: str) -> str:
    """What the database keeps of a token."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Annotator:
    """An account: its id and name."""

    id: int
    name: str


class Store:
    """The project's SQLite database (one connection; callers serialise access).

    Args:
        path: The database file (created with its folder if missing).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT), so one
        # request's writes are committed together or not at all.
        self.conn = sqlite3.connect(str(self.path), isolation_level=None,
                                    check_same_thread=False, timeout=30.0)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self.conn.executescript(_SCHEMA)
        stored = self.get_meta("schema_version")
        if stored is None:
            with self.transaction():
                self.set_meta("schema_version", SCHEMA_VERSION)
        elif stored != SCHEMA_VERSION:
            raise ValueError(f"{self.path}: annotation database schema version {stored}, this "
                             f"bow_gym reads version {SCHEMA_VERSION}")

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; rolled back on any error."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # ------------------------------------------------------------------ meta
    def get_meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO "
                          "UPDATE SET value = excluded.value", (key, value))

    def config(self) -> dict[str, Any] | None:
        """The stored project configuration, or ``None`` before the first ``serve``."""
        text = self.get_meta("config")
        return None if text is None else json.loads(text)

    # ------------------------------------------------------------------ accounts
    def add_annotator(self, name: str) -> str:
        """A new account; returns its token (shown once: only its hash is kept).

        Raises:
            ValueError: A bad name (1-64 letters, digits, ``._-``) or one already taken.
        """
        if not (isinstance(name, str) and 1 <= len(name) <= 64
                and all(c.isalnum() or c in "._-" for c in name)):
            raise ValueError(f"annotator name must be 1-64 letters, digits, '.', '_' or '-', "
                             f"got {name!r}")
        token = secrets.token_urlsafe(32)
        try:
            with self.transaction() as c:
                c.execute("INSERT INTO annotators(name, token_hash, created_at) VALUES (?, ?, ?)",
                          (name, hash_token(token), utc_now()))
        except sqlite3.IntegrityError:
            raise ValueError(f"annotator {name!r} already exists") from None
        return token

    def set_active(self, name: str, active: bool) -> None:
        """Enable or disable an account (a disabled token is refused)."""
        with self.transaction() as c:
            cur = c.execute("UPDATE annotators SET active = ? WHERE name = ?", (int(active), name))
            if cur.rowcount == 0:
                raise ValueError(f"no annotator {name!r}")

    def annotators(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.conn.execute(
            "SELECT id, name, created_at, active FROM annotators ORDER BY id")]

    def annotator_by_token(self, token: str) -> tuple[Annotator, bool] | None:
        """The account of a token and whether it is active, or ``None``."""
        row = self.conn.execute("SELECT id, name, active FROM annotators WHERE token_hash = ?",
                                (hash_token(token),)).fetchone()
        return None if row is None else (Annotator(row["id"], row["name"]), bool(row["active"]))

    def annotator_name(self, annotator_id: int) -> str:
        row = self.conn.execute("SELECT name FROM annotators WHERE id = ?",
                                (annotator_id,)).fetchone()
        return "?" if row is None else row[0]

    # ------------------------------------------------------------------ images
    def init_images(self, ids: Sequence[str], indices: Sequence[int]) -> None:
        self.conn.executemany("INSERT INTO images(pos, image_id, idx) VALUES (?, ?, ?)",
                              [(p, i, int(x)) for p, (i, x) in enumerate(zip(ids, indices,
                                                                               strict=True))])

    def image(self, pos: int) -> sqlite3.Row:
        return self.conn.execute("SELECT * FROM images WHERE pos = ?", (pos,)).fetchone()

    def image_by_id(self, image_id: str) -> sqlite3.Row | None:
        return self.conn.execute("SELECT * FROM images WHERE image_id = ?",
                                 (image_id,)).fetchone()

    def held_by(self, annotator: int) -> sqlite3.Row | None:
        return self.conn.execute("SELECT * FROM images WHERE status = 'active' AND holder = ? "
                                 "ORDER BY pos LIMIT 1", (annotator,)).fetchone()

    def free_image(self, now: float) -> sqlite3.Row | None:
        """An image to lease: one whose holder's lease ran out first (its episode is under
        way), else the first open one."""
        row = self.conn.execute("SELECT * FROM images WHERE status = 'active' AND lease_until < ? "
                                "ORDER BY pos LIMIT 1", (now,)).fetchone()
        if row is None:
            row = self.conn.execute("SELECT * FROM images WHERE status = 'open' ORDER BY pos "
                                    "LIMIT 1").fetchone()
        return row

    def update_image(self, pos: int, **fields: Any) -> None:
        fields["updated_at"] = utc_now()
        cols = ", ".join(f"{k} = ?" for k in fields)
        self.conn.execute(f"UPDATE images SET {cols} WHERE pos = ?", (*fields.values(), pos))

    def counts(self) -> dict[str, int]:
        out = {"open": 0, "active": 0, "done": 0, "skipped": 0}
        for status, n in self.conn.execute("SELECT status, COUNT(*) FROM images GROUP BY status"):
            out[status] = n
        return out

    # ------------------------------------------------------------------ events
    def add_event(self, kind: str, pos: int, annotator: int, **fields: Any) -> int:
        """Insert an event (inside the caller's transaction); returns its ``seq``."""
        cols = ["kind", "pos", "annotator", "created_at", *fields]
        vals = [kind, pos, annotator, utc_now(), *fields.values()]
        cur = self.conn.execute(f"INSERT INTO events({', '.join(cols)}) VALUES "
                                f"({', '.join('?' * len(cols))})", vals)
        return int(cur.lastrowid)

    def event(self, seq: int) -> sqlite3.Row | None:
        return self.conn.execute("SELECT * FROM events WHERE seq = ?", (seq,)).fetchone()

    def live_events(self, after: int = 0, exclude: frozenset[int] = frozenset()
                    ) -> list[sqlite3.Row]:
        """The events to replay: not undone, ``seq > after``, in order."""
        rows = self.conn.execute("SELECT * FROM events WHERE undone_at IS NULL AND seq > ? "
                                 "ORDER BY seq", (after,)).fetchall()
        return [r for r in rows if r["seq"] not in exclude]

    def answer_of(self, proposal: int) -> sqlite3.Row | None:
        return self.conn.execute("SELECT * FROM events WHERE kind = 'answer' AND proposal = ? "
                                 "AND undone_at IS NULL", (proposal,)).fetchone()

    def mark_undone(self, seqs: Sequence[int], by: int) -> None:
        now = utc_now()
        self.conn.executemany("UPDATE events SET undone_at = ?, undone_by = ? WHERE seq = ?",
                              [(now, by, s) for s in seqs])

    def last_seq(self) -> int:
        row = self.conn.execute("SELECT MAX(seq) FROM events").fetchone()
        return int(row[0] or 0)


def lease_deadline(seconds: float) -> float:
    return time.time() + seconds
