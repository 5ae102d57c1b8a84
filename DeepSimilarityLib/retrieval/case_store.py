"""What every case-database backend shares: the add loop, queries, export/import, the model check.

A backend (:mod:`.case_database` for SQLite, :mod:`.milvus_backend` for
Milvus) stores rows ``(source, labels, metadata, code)`` with ``source``
unique, and implements five primitives: ``_existing``, ``_insert``,
``_delete``, ``_search``, ``_fetch`` (plus ``_rows`` for export and
``count``). Everything users call lives here, so both backends behave alike.

Codes are packed bits ``(N, size // 8)`` uint8 for ``kind == "binary"`` and
``(N, size)`` float32 for ``kind == "dense"`` (see :mod:`.encoder`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterable, Sequence

import numpy as np

from ..errors import InputError, TrainingCancelled
from ..progress import progress_bar
from .encoder import KINDS

SCHEMA_VERSION = 1


@dataclass
class NewCase:
    """One case to add: ``image`` is an ``(H, W)`` array, a file path, or None when the code is given."""

    source: str
    image: object = None
    labels: Sequence[str] = ()
    metadata: dict = field(default_factory=dict)
    code: np.ndarray | None = None


@dataclass
class Match:
    """One retrieved case; ``shared_labels`` is None when the query had no labels."""

    id: int
    source: str
    distance: float
    labels: list
    metadata: dict
    shared_labels: list | None = None


@dataclass
class AddReport:
    """What an add did: ``added`` sources (in order), ``skipped`` sources already present."""

    added: list = field(default_factory=list)
    skipped: int = 0

    def __str__(self):
        return f"{len(self.added)} cases added, {self.skipped} already present"


class AddCancelled(TrainingCancelled):
    """``should_stop()`` returned true during an add; ``report`` holds what was committed."""

    def __init__(self, report: AddReport):
        super().__init__(f"add cancelled: {report}")
        self.report = report


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_kind(kind: str, size: int) -> None:
    if kind not in KINDS:
        raise InputError("kind", f"must be one of {KINDS}, got {kind!r}")
    if int(size) <= 0 or (kind == "binary" and int(size) % 8):
        raise InputError("size", f"must be a positive {'multiple of 8' if kind == 'binary' else 'integer'}, got {size}")


class CaseStore:
    """Base of the backends. Subclasses set ``location``, ``model_id``, ``kind``, ``size``, ``created``."""

    location: str
    model_id: str
    kind: str
    size: int
    created: str
    backend = "?"

    # -- the model check -------------------------------------------------
    @property
    def code_width(self) -> int:
        return self.size // 8 if self.kind == "binary" else self.size

    @property
    def code_dtype(self):
        return np.uint8 if self.kind == "binary" else np.float32

    def check_model(self, model_id: str, kind: str | None = None, size: int | None = None, name="model") -> None:
        """Refuse codes of another model (``model_id``) or of another kind or length."""
        mine = (self.model_id, self.kind, self.size)
        theirs = (model_id, kind or self.kind, int(size or self.size))
        if mine != theirs:
            raise InputError(name, f"the database {self.location} holds codes of model {self.model_id!r} "
                                   f"({self.kind}, {self.size}); refusing codes of model {model_id!r} "
                                   f"({theirs[1]}, {theirs[2]}): use a database made with that model")

    def check_codes(self, codes, name="codes") -> np.ndarray:
        codes = np.asarray(codes)
        if codes.ndim == 1:
            codes = codes[None]
        if codes.ndim != 2 or codes.shape[1] != self.code_width:
            raise InputError(name, f"expected codes of shape (N, {self.code_width}) for a {self.kind} database "
                                   f"of size {self.size}, got {codes.shape}")
        if self.kind == "binary" and codes.dtype != np.uint8:
            raise InputError(name, f"binary codes must be packed uint8, got {codes.dtype}")
        if self.kind == "dense" and not np.all(np.isfinite(codes)):
            raise InputError(name, "embeddings hold NaN or infinite values")
        return np.ascontiguousarray(codes, dtype=self.code_dtype)

    # -- adding ------------------------------------------------------------
    def add(self, cases: Iterable[NewCase], encoder=None, batch_size: int = 64,
            should_stop: Callable[[], bool] | None = None, progress: bool = True, total: int | None = None,
            report: AddReport | None = None, model_id: str | None = None) -> AddReport:
        """Add cases in batches, one transaction each; sources already present are skipped before encoding.

        Re-running an interrupted add resumes it: nothing is duplicated and
        committed batches are kept. Cases without ``code`` are encoded by
        ``encoder`` (its model must be the database's); cases with a ``code``
        need ``model_id`` (or the encoder) naming the model that made it. Raises
        :class:`AddCancelled` (with the report) when ``should_stop()`` is true
        between batches. ``report``: an :class:`AddReport` to fill as batches
        commit, so a caller still has it after an exception (e.g. Ctrl-C).
        """
        from .images import prepare_images

        if encoder is not None:
            self.check_model(encoder.model_id, encoder.kind, encoder.size)
        if model_id is not None:
            self.check_model(model_id)
        report, batch = report if report is not None else AddReport(), []
        if total is None and hasattr(cases, "__len__"):
            total = len(cases)
        bar = progress_bar(total=total, unit="case", desc="adding", disable=not progress)

        def commit(batch):
            present = self._existing([c.source for c in batch])
            todo, seen = [], set(present)
            for c in batch:
                if c.source not in seen:  # also drops a source repeated within the input
                    seen.add(c.source)
                    todo.append(c)
            report.skipped += len(batch) - len(todo)
            if todo:
                to_encode = [c for c in todo if c.code is None]
                if len(to_encode) < len(todo) and encoder is None and model_id is None:
                    raise InputError("model_id", "cases with precomputed codes need the model_id of the model "
                                                 "that made them")
                if to_encode and encoder is None:
                    raise InputError(to_encode[0].source, "has no code and no encoder was given")
                if to_encode:
                    images = prepare_images([c.image for c in to_encode], encoder.image_shape,
                                            [c.source for c in to_encode])
                    for c, code in zip(to_encode, encoder.encode(images)):
                        c.code = code
                codes = self.check_codes(np.stack([np.asarray(c.code) for c in todo]))
                added = self._insert(todo, codes)
                report.added.extend(added)
                report.skipped += len(todo) - len(added)  # another process added them meanwhile
            bar.update(len(batch))
            bar.set_postfix(added=len(report.added), skipped=report.skipped)

        try:
            for case in cases:
                if not isinstance(case, NewCase):
                    raise InputError("cases", f"expected NewCase items, got {type(case).__name__}")
                batch.append(case)
                if len(batch) >= batch_size:
                    if should_stop is not None and should_stop():
                        raise AddCancelled(report)
                    commit(batch)
                    batch = []
            if batch:
                if should_stop is not None and should_stop():
                    raise AddCancelled(report)
                commit(batch)
        finally:
            bar.close()
        return report

    def add_folder(self, folder, encoder, labels_csv=None, csv_options: dict | None = None, **options) -> AddReport:
        """Add the images of ``folder`` (sources: absolute paths), labelled from ``labels_csv`` if given.

        ``csv_options``: ``image_column``, ``label_column``, ``sep``, ``none_label``
        (see :func:`.images.read_labels_csv`); other options go to :meth:`add`.
        """
        from .images import folder_cases

        return self.add(folder_cases(folder, labels_csv, **(csv_options or {})), encoder, **options)

    def add_codes(self, sources: Sequence[str], codes, model_id: str, labels=None, metadata=None,
                  batch_size: int = 10_000, **options) -> AddReport:
        """Add precomputed codes ``(N, width)`` of model ``model_id`` (checked against the database's)."""
        self.check_model(model_id)
        codes = self.check_codes(codes)
        if len(sources) != len(codes):
            raise InputError("sources", f"{len(sources)} sources for {len(codes)} codes")
        labels = labels if labels is not None else [()] * len(codes)
        metadata = metadata if metadata is not None else [{}] * len(codes)
        cases = [NewCase(str(s), labels=list(l), metadata=dict(m), code=c)
                 for s, c, l, m in zip(sources, codes, labels, metadata)]
        options.setdefault("progress", False)
        return self.add(cases, batch_size=batch_size, model_id=model_id, **options)

    def remove(self, sources: Sequence[str]) -> int:
        """Remove the cases with these sources; returns how many existed."""
        return self._delete([str(s) for s in sources])

    # -- querying --------------------------------------------------------------
    def query(self, codes, k: int = 10, labels=None) -> list[list[Match]]:
        """Top-k cases of each query code ``(Q, width)`` (or one ``(width,)``), nearest first.

        ``labels``: the query's labels (one list for all queries, or one list
        per query) to report the labels each match shares with it.
        """
        codes = self.check_codes(codes, "query")
        if k < 1:
            raise InputError("k", f"must be at least 1, got {k}")
        if labels is not None and (len(labels) == 0 or isinstance(labels[0], str)):
            labels = [labels] * len(codes)
        ids, dists = self._search(codes, int(k))
        cases = self._fetch(sorted({int(i) for i in np.ravel(ids) if i >= 0}))
        out = []
        for q in range(len(codes)):
            row = []
            for i, d in zip(ids[q], dists[q]):
                if i < 0 or int(i) not in cases:  # removed by another process since the index was read
                    continue
                source, case_labels, meta = cases[int(i)]
                shared = None if labels is None else [x for x in case_labels if x in set(labels[q])]
                row.append(Match(int(i), source, float(d), case_labels, meta, shared))
            out.append(row)
        return out

    def query_images(self, images, encoder, k: int = 10, labels=None, names=None) -> list[list[Match]]:
        """Encode images (arrays or files) with ``encoder`` (the database's model) and :meth:`query`."""
        from .images import prepare_images

        self.check_model(encoder.model_id, encoder.kind, encoder.size)
        return self.query(encoder.encode(prepare_images(images, encoder.image_shape, names)), k, labels)

    # -- description, export, import -----------------------------------------
    def info(self) -> dict:
        return {"location": self.location, "backend": self.backend, "model_id": self.model_id, "kind": self.kind,
                "size": self.size, "created": self.created, "model": getattr(self, "model", ""), "cases": self.count(),
                "schema_version": SCHEMA_VERSION}

    def export(self, path) -> dict:
        """Write every case to a portable ``.npz`` (codes + JSON records + info), atomically."""
        from .portable import write_export

        return write_export(self, path)

    def import_file(self, path, **options) -> AddReport:
        """Add the cases of an export (same model only); resumable like :meth:`add`."""
        from .portable import read_export

        info, sources, codes, labels, metadata = read_export(path)
        self.check_model(info["model_id"], info["kind"], info["size"], name=path)
        return self.add_codes(sources, codes, info["model_id"], labels, metadata, **options)

    # -- backend primitives ------------------------------------------------------
    def count(self) -> int:
        raise NotImplementedError

    def _existing(self, sources: list) -> set:
        """The subset of ``sources`` already stored."""
        raise NotImplementedError

    def _insert(self, cases: list, codes: np.ndarray) -> list:
        """Store new cases atomically (one transaction); returns the sources actually inserted."""
        raise NotImplementedError

    def _delete(self, sources: list) -> int:
        raise NotImplementedError

    def _search(self, codes: np.ndarray, k: int):
        """``(ids (Q, k'), distances (Q, k'))``, -1 where fewer were found."""
        raise NotImplementedError

    def _fetch(self, ids: list) -> dict:
        """``{id: (source, labels, metadata)}``."""
        raise NotImplementedError

    def _rows(self, batch: int = 10_000):
        """Yield ``(sources, labels, metadata, codes)`` chunks of every case, in id order."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def dumps(value) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
