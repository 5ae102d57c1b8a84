"""The embedded case database: one SQLite file (WAL) plus an in-memory faiss index built from it.

Tables: ``info`` (key/value: schema_version, model_id, kind, size, created,
model) and ``cases`` (``id`` INTEGER PRIMARY KEY AUTOINCREMENT, ``source``
TEXT UNIQUE, ``labels`` JSON list, ``metadata`` JSON object, ``code`` BLOB of
packed bits or little-endian float32).

Durability: each batch of an add is one ``BEGIN IMMEDIATE`` transaction, so
a killed process leaves every committed batch and nothing of the batch in
flight; writers in other processes wait (busy timeout) instead of failing.
The index is built lazily at the first query and kept in sync: own inserts
extend it, another process's commits (``PRAGMA data_version``) are read as
the rows with ids above the last one seen (ids only grow: AUTOINCREMENT),
and a row count that still differs (a removal) rebuilds it.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import InputError
from .case_store import SCHEMA_VERSION, CaseStore, check_kind, dumps, now
from .hamming_index import make_index

SCHEMA = """
CREATE TABLE info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE cases (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL UNIQUE,
    labels TEXT NOT NULL DEFAULT '[]',
    metadata TEXT NOT NULL DEFAULT '{}',
    code BLOB NOT NULL
);
"""
BUSY_TIMEOUT_S = 60.0
_CHUNK = 500  # sources per "IN (...)" query: below SQLite's variable limit


class CaseDatabase(CaseStore):
    """A case database in one SQLite file. Use :meth:`create` or :meth:`open` (or ``databases.open_database``)."""

    backend = "sqlite"

    def __init__(self, path, connection: sqlite3.Connection, index_options: dict | None = None):
        self.path, self.location, self._db = Path(path), str(path), connection
        self.index_options = index_options or {}
        with self._errors():
            info = dict(self._db.execute("SELECT key, value FROM info").fetchall())
        if info.get("schema_version") != str(SCHEMA_VERSION) or not {"model_id", "kind", "size"} <= set(info):
            raise InputError(path, f"case database schema {info.get('schema_version')!r} is not version "
                                   f"{SCHEMA_VERSION}")
        try:
            self.model_id, self.kind, self.size = info["model_id"], info["kind"], int(info["size"])
            check_kind(self.kind, self.size)
        except (ValueError, TypeError) as exc:
            raise InputError(path, f"damaged case database info ({exc})") from None
        self.created, self.model = info.get("created", ""), info.get("model", "")
        self._index = None
        self._seen_max, self._data_version = 0, None

    # -- opening ---------------------------------------------------------------
    @staticmethod
    def _connect(path: Path, create: bool) -> sqlite3.Connection:
        # mode=rw never creates a missing file; isolation_level=None: transactions are explicit
        uri = f"file:{path}?mode={'rwc' if create else 'rw'}"
        db = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        return db

    @classmethod
    def create(cls, path, model_id: str, kind: str, size: int, model: str = "", **index_options) -> "CaseDatabase":
        """A new empty database for codes of one model; an existing file is an error."""
        path = Path(path)
        check_kind(kind, size)
        if path.exists():
            raise InputError(path, "already exists: open it, or remove it first")
        if not path.parent.is_dir():
            raise InputError(path, f"folder {path.parent} does not exist")
        db = cls._connect(path, create=True)
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("BEGIN IMMEDIATE")
            for statement in SCHEMA.strip().split(";"):
                if statement.strip():
                    db.execute(statement)
            values = {"schema_version": SCHEMA_VERSION, "model_id": model_id, "kind": kind, "size": int(size),
                      "created": now(), "model": model}
            db.executemany("INSERT INTO info VALUES (?, ?)", [(k, str(v)) for k, v in values.items()])
            db.execute("COMMIT")
        except BaseException:
            db.close()
            path.unlink(missing_ok=True)
            raise
        return cls(path, db, index_options)

    @classmethod
    def open(cls, path, **index_options) -> "CaseDatabase":
        """Open an existing database; InputError naming the file if it is missing, not a database or damaged."""
        path = Path(path)
        if not path.is_file():
            raise InputError(path, "case database not found" if not path.exists() else "is not a file")
        # Checked before SQLite touches the file: it would turn an empty file into a database, and
        # switching a foreign database to WAL rewrites its header.
        with open(path, "rb") as f:
            if f.read(16) != b"SQLite format 3\0":
                raise InputError(path, "not a case database (not an SQLite file)")
        try:
            db = cls._connect(path, create=False)
        except sqlite3.DatabaseError as exc:
            raise InputError(path, f"not a case database ({exc})") from None
        try:
            store = cls(path, db, index_options)
            with store._errors():
                db.execute("PRAGMA journal_mode = WAL")
            return store
        except BaseException:
            db.close()
            raise

    @contextmanager
    def _errors(self):
        try:
            yield
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise InputError(self.path, f"busy: another process held it for over {BUSY_TIMEOUT_S:g} s") from None
            raise InputError(self.path, f"not a case database or damaged ({exc})") from None
        except sqlite3.DatabaseError as exc:
            raise InputError(self.path, f"not a case database or damaged ({exc})") from None
        except InputError:
            raise
        except ValueError as exc:  # a row that does not decode: labels that are not JSON, a code of the wrong length
            raise InputError(self.path, f"damaged row ({str(exc)[:120]})") from None

    @contextmanager
    def _write(self):
        """One write transaction, taken at once so that concurrent writers queue up instead of deadlocking."""
        with self._errors():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- the in-memory index -------------------------------------------------------
    def _decode(self, blobs) -> np.ndarray:
        dtype = np.dtype(self.code_dtype).newbyteorder("<")
        if any(len(b) != self.code_width * dtype.itemsize for b in blobs):
            raise InputError(self.path, f"damaged: a code is not {self.code_width * dtype.itemsize} bytes long")
        flat = np.frombuffer(b"".join(blobs), dtype=dtype)
        return flat.reshape(len(blobs), self.code_width).astype(self.code_dtype)

    def _load_new(self, index) -> None:
        rows = self._db.execute("SELECT id, code FROM cases WHERE id > ? ORDER BY id", (self._seen_max,)).fetchall()
        if rows:
            index.add([r[0] for r in rows], self._decode([r[1] for r in rows]))
            self._seen_max = rows[-1][0]

    def index(self):
        """The in-memory index, built at first use and brought up to date with other processes' commits."""
        with self._errors():
            version = self._db.execute("PRAGMA data_version").fetchone()[0]
            if self._index is not None and version == self._data_version:
                return self._index
            if self._index is not None:
                self._load_new(self._index)
            if self._index is None or len(self._index) != self.count():
                self._index, self._seen_max = make_index(self.kind, self.size, **self.index_options), 0
                self._load_new(self._index)
            self._data_version = version
        return self._index

    # -- primitives ------------------------------------------------------------------
    def count(self) -> int:
        with self._errors():
            return int(self._db.execute("SELECT count(*) FROM cases").fetchone()[0])

    def _existing(self, sources):
        found = set()
        with self._errors():
            for i in range(0, len(sources), _CHUNK):
                part = sources[i:i + _CHUNK]
                q = f"SELECT source FROM cases WHERE source IN ({','.join('?' * len(part))})"
                found.update(r[0] for r in self._db.execute(q, part))
        return found

    def _insert(self, cases, codes):
        codes = np.ascontiguousarray(codes, dtype=np.dtype(self.code_dtype).newbyteorder("<"))
        rows = [(c.source, dumps(list(c.labels)), dumps(dict(c.metadata)), code.tobytes())
                for c, code in zip(cases, codes)]
        with self._write() as db:
            before = db.total_changes
            db.executemany("INSERT OR IGNORE INTO cases (source, labels, metadata, code) VALUES (?, ?, ?, ?)", rows)
            inserted = db.total_changes - before
            if self._index is not None:
                # under the write lock: the rows above the last id seen are ours plus any other process's
                self._load_new(self._index)
            new = [r[0] for r in db.execute("SELECT source FROM cases ORDER BY id DESC LIMIT ?", (inserted,))][::-1]
        return new

    def _delete(self, sources):
        ids = []
        with self._write() as db:
            for i in range(0, len(sources), _CHUNK):
                marks = ",".join("?" * len(sources[i:i + _CHUNK]))
                found = db.execute(f"SELECT id FROM cases WHERE source IN ({marks})", sources[i:i + _CHUNK])
                ids += [r[0] for r in found]
                db.execute(f"DELETE FROM cases WHERE source IN ({marks})", sources[i:i + _CHUNK])
        if self._index is not None:
            self._index.remove(ids)
        return len(ids)

    def _search(self, codes, k):
        return self.index().search(codes, k)

    def _fetch(self, ids):
        out = {}
        with self._errors():
            for i in range(0, len(ids), _CHUNK):
                part = ids[i:i + _CHUNK]
                q = f"SELECT id, source, labels, metadata FROM cases WHERE id IN ({','.join('?' * len(part))})"
                for id_, source, labels, meta in self._db.execute(q, part):
                    out[id_] = (source, json.loads(labels), json.loads(meta))
        return out

    def _rows(self, batch: int = 10_000):
        last = 0
        while True:
            with self._errors():
                rows = self._db.execute("SELECT id, source, labels, metadata, code FROM cases "
                                        "WHERE id > ? ORDER BY id LIMIT ?", (last, batch)).fetchall()
                if not rows:
                    return
                last = rows[-1][0]
                chunk = ([r[1] for r in rows], [json.loads(r[2]) for r in rows], [json.loads(r[3]) for r in rows],
                         self._decode([r[4] for r in rows]))
            yield chunk

    def info(self) -> dict:
        out = super().info()
        out["file_bytes"] = self.path.stat().st_size
        labels = {}
        with self._errors():
            for (text,) in self._db.execute("SELECT labels FROM cases WHERE labels != '[]'"):
                for name in json.loads(text):
                    labels[name] = labels.get(name, 0) + 1
        out["labels"] = dict(sorted(labels.items(), key=lambda kv: -kv[1]))
        return out
