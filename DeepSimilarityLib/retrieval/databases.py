"""Choosing the case-database backend from a URI, so callers never name a backend class.

- ``cases.db`` or ``sqlite:///abs/path/cases.db`` (``sqlite://rel/path.db``): the embedded SQLite file;
- ``milvus-lite:///abs/path/cases.milvus.db``: an embedded milvus-lite file (for tests and demos);
- ``milvus://host:19530[/collection]`` (``milvus+https://...`` for TLS): a Milvus server or cluster.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from ..errors import InputError
from .case_store import CaseStore

DEFAULT_COLLECTION = "deepsim_cases"


def parse_uri(uri) -> tuple[str, str, str]:
    """``(backend, address, collection)``: backend "sqlite", "milvus-lite" or "milvus"."""
    text = str(uri)
    if "://" not in text:
        return "sqlite", text, ""
    scheme, rest = text.split("://", 1)
    if scheme == "sqlite":
        return "sqlite", rest, ""
    if scheme == "milvus-lite":
        return "milvus-lite", rest, DEFAULT_COLLECTION
    if scheme in ("milvus", "milvus+http", "milvus+https"):
        parsed = urlparse(text)
        if not parsed.hostname:
            raise InputError(uri, "expected milvus://host:port[/collection]")
        http = "https" if scheme == "milvus+https" else "http"
        collection = parsed.path.strip("/") or DEFAULT_COLLECTION
        return "milvus", f"{http}://{parsed.hostname}:{parsed.port or 19530}", collection
    raise InputError(uri, f"unknown database scheme {scheme!r}: use a file path, sqlite://, milvus-lite:// "
                          f"or milvus://")


def create_database(uri, model_id: str, kind: str, size: int, model: str = "", **options) -> CaseStore:
    """A new, empty database for the codes of one model at ``uri``."""
    backend, address, collection = parse_uri(uri)
    if backend == "sqlite":
        from .case_database import CaseDatabase

        return CaseDatabase.create(address, model_id, kind, size, model=model, **options)
    from .milvus_backend import MilvusCaseStore

    return MilvusCaseStore.create(address, collection, model_id, kind, size, model=model,
                                  local=backend == "milvus-lite")


def open_database(uri, **options) -> CaseStore:
    """Open the existing database at ``uri``; InputError naming it when it is missing or not a case database."""
    backend, address, collection = parse_uri(uri)
    if backend == "sqlite":
        from .case_database import CaseDatabase

        return CaseDatabase.open(address, **options)
    from .milvus_backend import MilvusCaseStore

    if backend == "milvus-lite" and not Path(address).exists():
        raise InputError(address, "case database not found")
    return MilvusCaseStore.open(address, collection, local=backend == "milvus-lite")


def database_exists(uri) -> bool:
    backend, address, _ = parse_uri(uri)
    if backend != "milvus":
        return Path(address).exists()
    try:
        open_database(uri).close()
        return True
    except InputError:
        return False
