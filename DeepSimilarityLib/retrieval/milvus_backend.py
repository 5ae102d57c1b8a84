"""The case database over Milvus: binary vectors searched with the HAMMING metric (dense: L2).

Same interface as the SQLite backend (both are :class:`~.case_store.CaseStore`),
selected by the URI (``milvus://host:port/collection``, or
``milvus-lite:///path.db`` for the embedded milvus-lite used by the tests).

One collection per database: fields ``id`` (INT64 primary key: a 63-bit hash
of ``source``, so a repeated add is an idempotent upsert and no duplicate can
exist), ``source``, ``labels`` and ``metadata`` (JSON), ``code``
(BINARY_VECTOR of ``size`` bits or FLOAT_VECTOR of ``size`` floats). The
database info (model_id, kind, size, created) is the collection description.
Two different sources sharing a hash (probability about N^2 / 2^64) would
overwrite each other.

Needs ``pip install pymilvus==2.5.18 milvus-lite==2.5.1`` (the ``milvus``
extra); milvus-lite 3 no longer stores binary vectors.
"""

from __future__ import annotations

import hashlib
import json
import warnings

import numpy as np

from ..errors import InputError
from .case_store import SCHEMA_VERSION, CaseStore, check_kind, now

try:
    from pymilvus import DataType, MilvusClient
    from pymilvus.exceptions import MilvusException
except ImportError:  # optional backend: the error says how to install it
    MilvusClient = None

MAX_SOURCE = 4096
_CHUNK = 1000


def source_id(source: str) -> int:
    """The case id in Milvus: the first 63 bits of sha256(source), a non-negative int64."""
    return int.from_bytes(hashlib.sha256(source.encode("utf-8")).digest()[:8], "big") & (2**63 - 1)


def _client(address: str, local: bool):
    if MilvusClient is None:
        raise InputError(address, "the Milvus backend needs pymilvus and milvus-lite: "
                                  "pip install pymilvus==2.5.18 milvus-lite==2.5.1 'setuptools<81'")
    try:
        with warnings.catch_warnings():  # milvus-lite imports the deprecated pkg_resources
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
            return MilvusClient(address)
    except Exception as exc:  # connection failures come as several exception types
        raise InputError(address, f"cannot connect to Milvus ({str(exc)[:160]})") from None


class MilvusCaseStore(CaseStore):
    backend = "milvus"

    def __init__(self, client, address: str, collection: str, local: bool):
        self._c, self.collection, self.local = client, collection, local
        self.location = f"{'milvus-lite://' if local else ''}{address}{'' if local else '/' + collection}"
        if local:
            self.backend = "milvus-lite"
        try:
            info = json.loads(client.describe_collection(collection)["description"])
        except (ValueError, KeyError, TypeError):
            raise InputError(self.location, f"collection {collection!r} is not a case database") from None
        if not isinstance(info, dict) or info.get("schema_version") != SCHEMA_VERSION:
            raise InputError(self.location, f"collection {collection!r} is not a case database of schema "
                                            f"{SCHEMA_VERSION}")
        self.model_id, self.kind, self.size = info["model_id"], info["kind"], int(info["size"])
        self.created, self.model = info.get("created", ""), info.get("model", "")
        self._metric = "HAMMING" if self.kind == "binary" else "L2"

    @classmethod
    def create(cls, address, collection, model_id, kind, size, model="", local=False):
        check_kind(kind, size)
        client = _client(address, local)
        if client.has_collection(collection):
            client.close()
            raise InputError(f"{address}/{collection}", "already exists: open it, or drop the collection first")
        info = {"schema_version": SCHEMA_VERSION, "model_id": model_id, "kind": kind, "size": int(size),
                "created": now(), "model": model}
        schema = MilvusClient.create_schema(auto_id=False, description=json.dumps(info))
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("source", DataType.VARCHAR, max_length=MAX_SOURCE)
        schema.add_field("labels", DataType.JSON)
        schema.add_field("metadata", DataType.JSON)
        vector = DataType.BINARY_VECTOR if kind == "binary" else DataType.FLOAT_VECTOR
        schema.add_field("code", vector, dim=int(size))
        params = client.prepare_index_params()
        params.add_index(field_name="code", index_type="BIN_FLAT" if kind == "binary" else "FLAT",
                         metric_type="HAMMING" if kind == "binary" else "L2")
        client.create_collection(collection, schema=schema, index_params=params, consistency_level="Strong")
        return cls(client, address, collection, local)

    @classmethod
    def open(cls, address, collection, local=False):
        client = _client(address, local)
        if not client.has_collection(collection):
            client.close()
            raise InputError(f"{address}/{collection}", "case database not found (no such collection)")
        return cls(client, address, collection, local)

    def close(self):
        if self._c is not None:
            self._c.close()
            self._c = None

    def count(self) -> int:
        return int(self._c.query(self.collection, filter="", output_fields=["count(*)"])[0]["count(*)"])

    def _existing(self, sources):
        found = set()
        for i in range(0, len(sources), _CHUNK):
            ids = [source_id(s) for s in sources[i:i + _CHUNK]]
            found.update(r["source"] for r in self._c.get(self.collection, ids=ids, output_fields=["source"]))
        return found

    def _vector(self, code):
        return code.tobytes() if self.kind == "binary" else code.astype(np.float32).tolist()

    def _insert(self, cases, codes):
        for c in cases:
            if len(c.source.encode("utf-8")) > MAX_SOURCE:
                raise InputError(c.source[:80], f"source longer than {MAX_SOURCE} bytes")
        rows = [{"id": source_id(c.source), "source": c.source, "labels": list(c.labels), "metadata": dict(c.metadata),
                 "code": self._vector(code)} for c, code in zip(cases, codes)]
        try:
            self._c.upsert(self.collection, rows)
        except MilvusException as exc:
            raise InputError(self.location, f"Milvus refused the batch ({exc.message[:160]})") from None
        return [c.source for c in cases]

    def _delete(self, sources):
        present = self._existing(list(sources))
        if present:
            self._c.delete(self.collection, ids=[source_id(s) for s in present])
        return len(present)

    def _search(self, codes, k):
        k = min(k, 16384)  # Milvus's largest top-k
        data = [self._vector(c) for c in codes]
        hits = self._c.search(self.collection, data=data, limit=k, anns_field="code",
                              search_params={"metric_type": self._metric})
        ids = np.full((len(codes), k), -1, np.int64)
        dists = np.full((len(codes), k), -1, np.float32)
        for q, row in enumerate(hits):
            # sort by (distance, id) like the SQLite backend; Milvus's L2 is squared
            row = sorted(((float(h["distance"]), int(h["id"])) for h in row))
            for j, (d, i) in enumerate(row):
                ids[q, j], dists[q, j] = i, d if self.kind == "binary" else np.sqrt(max(d, 0.0))
        return ids, dists

    def _fetch(self, ids):
        out = {}
        for i in range(0, len(ids), _CHUNK):
            fields = ["source", "labels", "metadata"]
            for r in self._c.get(self.collection, ids=list(ids[i:i + _CHUNK]), output_fields=fields):
                out[int(r["id"])] = (r["source"], list(r["labels"]), dict(r["metadata"]))
        return out

    def _rows(self, batch: int = 10_000):
        it = self._c.query_iterator(self.collection, batch_size=min(batch, 16384), filter="id >= 0",
                                    output_fields=["source", "labels", "metadata", "code"])
        try:
            while True:
                rows = it.next()
                if not rows:
                    return
                if self.kind == "binary":
                    codes = np.frombuffer(b"".join(bytes(r["code"][0]) for r in rows), np.uint8).reshape(len(rows), -1)
                else:
                    codes = np.asarray([r["code"] for r in rows], np.float32)
                yield ([r["source"] for r in rows], [list(r["labels"]) for r in rows],
                       [dict(r["metadata"]) for r in rows], codes)
        finally:
            it.close()
