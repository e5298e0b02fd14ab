"""The knowledge store: one Hugging Face ``datasets.Dataset`` per (dataset, kind, model), saved as Parquet.

Layout: ``<cache>/knowledge/<dataset>/<kind>/<model>/knowledge.parquet`` plus ``manifest.json`` (counts and
fingerprint). One row per class, with typed nested features: the knowledge itself (null for a failed class), its
status, the raw LLM outputs and validation errors of every attempt, and its provenance.

Consistency: the manifest is also written *inside* the Parquet file (schema metadata ``fsar``), so the one atomic
rename that publishes the rows publishes their counts and fingerprint with them; ``list_knowledge`` reads that, and
``manifest.json`` is a readable copy that is repaired when a kill left it behind. Writers hold a file lock on the set
(``.knowledge.lock``), and ``merge_knowledge`` re-reads the stored rows under it, so two runs writing one set at once
lose nothing. Temp files of killed writers are removed by the next writer.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from typing import Callable, Iterable

import datasets
import pyarrow.parquet as pq
from datasets import Features, List, Value
from filelock import FileLock, Timeout

from fsar.data.paths import atomic_write_text, cache_root, check_name
from fsar.knowledge.cache import canonical_json, sha256_text
from fsar.knowledge.errors import KnowledgeNotFoundError
from fsar.knowledge.kinds import KnowledgeKind, get_kind

FILE = "knowledge.parquet"
MANIFEST = "manifest.json"
LOCK = ".knowledge.lock"
META_KEY = b"fsar"  # Parquet schema metadata: the manifest, published atomically with the rows

PROVENANCE_FEATURES = {
    "backend": Value("string"),
    "model": Value("string"),
    "model_id": Value("string"),  # canonical JSON of the backend's identity (file hash, URL)
    "template": Value("string"),
    "template_hash": Value("string"),
    "schema_hash": Value("string"),
    "seed": Value("int64"),
    "temperature": Value("float64"),
    "top_p": Value("float64"),
    "max_tokens": Value("int64"),
    "frequency_penalty": Value("float64"),
    "presence_penalty": Value("float64"),
    "no_repeat_ngram": Value("int64"),
    "concurrency": Value("int64"),  # requests decoded together (llamacpp) or in flight (openai)
    "attempts": Value("int64"),
    "prompt_tokens": Value("int64"),
    "completion_tokens": Value("int64"),
    "seconds": Value("float64"),
    "created_at": Value("string"),
    "cache_keys": List(Value("string")),
    "filter": Value("string"),  # JSON of the thresholds when a filtered set was derived from this one, else ""
    "fsar_version": Value("string"),
}


def features(kind: str) -> Features:
    """The typed columns of a stored set; the ``knowledge`` column's are the kind's own."""
    return Features(
        {
            "class_key": Value("string"),
            "class_name": Value("string"),
            "split": Value("string"),
            "index": Value("int64"),
            "status": Value("string"),  # "ok" or "failed"
            "knowledge": get_kind(kind).features(),
            "raw_outputs": List(Value("string")),
            "errors": List(Value("string")),
            "provenance": PROVENANCE_FEATURES,
        }
    )


def knowledge_dir(dataset: str, kind: str, model: str) -> Path:
    """Folder of one knowledge set; the names must be plain (ValueError), so no path leaves the cache."""
    return cache_root() / "knowledge" / check_name(dataset, "--dataset") / check_name(kind, "--kind") / check_name(model, "--model")


def store_lock(dataset: str, kind: str, model: str) -> FileLock:
    """The lock every writer of a knowledge set holds (creates the set's folder)."""
    folder = knowledge_dir(dataset, kind, model)
    folder.mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder / LOCK))


@dataclass
class KnowledgeSet:
    """A stored knowledge set: its rows as a Dataset, and where it came from."""

    dataset: str
    kind: str
    model: str
    rows: datasets.Dataset
    path: Path

    @property
    def ok(self) -> list[dict]:
        return [r for r in self.rows if r["status"] == "ok"]

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.rows if r["status"] != "ok"]

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.rows, self.kind)

    def texts(self, row: dict) -> dict[str, list[str]]:
        return get_kind(self.kind).texts(row["knowledge"])


def fingerprint(rows, kind: str) -> str:
    """Hash of what a model would consume: each valid class's key and knowledge, in class order."""
    items = sorted((r["index"], r["class_key"], r["knowledge"]) for r in rows if r["status"] == "ok")
    return sha256_text(canonical_json({"kind": kind, "rows": items}))[:16]


def _normalize_row(row: dict, kind: KnowledgeKind) -> dict:
    row = dict(row)
    if row.get("knowledge") is None:
        row["knowledge"] = None
    prov = {k: None for k in PROVENANCE_FEATURES}
    prov.update(row.get("provenance") or {})
    prov["cache_keys"] = list(prov.get("cache_keys") or [])
    prov["filter"] = prov.get("filter") or ""
    row["provenance"] = prov
    return row


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _remove_dead_temp_files(folder: Path) -> None:
    """Delete ``.<file>.<pid>.tmp`` left by writers that were killed (their pid is gone); called under the lock."""
    for tmp in folder.glob(".*.*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _manifest(dataset: str, kind: str, model: str, rows: list[dict]) -> dict:
    n_ok = sum(r["status"] == "ok" for r in rows)
    return {
        "dataset": dataset,
        "kind": kind,
        "model": model,
        "classes": len(rows),
        "ok": n_ok,
        "failed": len(rows) - n_ok,
        "fingerprint": fingerprint(rows, kind),
        "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _write(dataset: str, kind: str, model: str, rows: list[dict]) -> KnowledgeSet:
    """Write a whole set: Parquet (with the manifest in its metadata) by one atomic rename, then manifest.json.
    The caller holds the set's lock."""
    k = get_kind(kind)
    rows = sorted((_normalize_row(r, k) for r in rows), key=lambda r: r["index"])
    feats = features(kind)
    ds = datasets.Dataset.from_list(rows, features=feats) if rows else datasets.Dataset.from_dict({k: [] for k in feats}, features=feats)
    folder = knowledge_dir(dataset, kind, model)
    folder.mkdir(parents=True, exist_ok=True)
    _remove_dead_temp_files(folder)
    manifest = _manifest(dataset, kind, model, rows)
    table = ds.data.table
    # the table's schema metadata carries the typed features ("huggingface") and now the manifest too
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), META_KEY: json.dumps(manifest).encode()})
    tmp = folder / f".{FILE}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:  # Python's open: an OSError that names the file (pyarrow's names none)
        pq.write_table(table, f)
    os.replace(tmp, folder / FILE)
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2))
    return KnowledgeSet(dataset, kind, model, ds, folder)


def save_knowledge(dataset: str, kind: str, model: str, rows: list[dict]) -> KnowledgeSet:
    """Write a whole knowledge set atomically (a reader never sees a half-written file); rows sorted by class index."""
    with store_lock(dataset, kind, model):
        return _write(dataset, kind, model, rows)


def merge_knowledge(
    dataset: str,
    kind: str,
    model: str,
    rows: Iterable[dict],
    keep_stored: Callable[[dict, dict], bool] | None = None,
) -> KnowledgeSet:
    """Put ``rows`` into the stored set, replacing stored rows of the same class, and keep every other stored row.

    The stored rows are read under the set's lock, so rows that another process wrote since this one last read the
    set are kept. ``keep_stored(stored, new)`` may keep a stored row instead of the new one of its class.
    """
    with store_lock(dataset, kind, model):
        path = knowledge_dir(dataset, kind, model) / FILE
        merged = {r["class_key"]: r for r in (pq.read_table(path).to_pylist() if path.is_file() else [])}
        for row in rows:
            stored = merged.get(row["class_key"])
            if stored is None or keep_stored is None or not keep_stored(stored, row):
                merged[row["class_key"]] = row
        return _write(dataset, kind, model, list(merged.values()))


def load_knowledge(dataset: str, kind: str, model: str | None = None) -> KnowledgeSet:
    """Load a stored knowledge set; with no model, the most recently updated one that is not a derived copy
    (a ``<model>.filtered`` set from ``fsar-knowledge report --filter`` or a ``<model>.contrast`` set from
    ``generate --contrast`` is used only when named, or when it is all there is). A missing set raises
    ``KnowledgeNotFoundError`` (a FileNotFoundError) naming the command that makes it.
    """
    base = cache_root() / "knowledge" / check_name(dataset, "--dataset") / check_name(kind, "--kind")
    if model is None:
        found = sorted(base.glob(f"*/{FILE}"), key=lambda p: (not p.parent.name.endswith((".filtered", ".contrast")), p.stat().st_mtime))
        if not found:
            raise KnowledgeNotFoundError(
                f"no '{kind}' knowledge for dataset '{dataset}' in {cache_root()}; "
                f"run: fsar-knowledge generate --dataset {dataset} --kind {kind}"
            )
        model = found[-1].parent.name
    path = knowledge_dir(dataset, kind, model) / FILE
    if not path.is_file():
        raise KnowledgeNotFoundError(
            f"no '{kind}' knowledge for dataset '{dataset}' from model '{model}'; "
            f"run: fsar-knowledge generate --dataset {dataset} --kind {kind}"
        )
    ds = datasets.Dataset(pq.read_table(path))
    return KnowledgeSet(dataset, kind, model, ds, path.parent)


def read_manifest(path: Path) -> dict:
    """The manifest of a stored set, from its Parquet file (so it always describes the rows that file holds)."""
    meta = pq.read_schema(path).metadata or {}
    if META_KEY in meta:
        return json.loads(meta[META_KEY])
    # a set written before the manifest was kept in the Parquet file: count its rows
    folder = path.parent
    rows = pq.read_table(path, columns=["class_key", "index", "status", "knowledge"]).to_pylist()
    m = _manifest(folder.parent.parent.name, folder.parent.name, folder.name, rows)
    m["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(path.stat().st_mtime))
    return m


def _repair_manifest(folder: Path, manifest: dict) -> None:
    """Rewrite a manifest.json that disagrees with its Parquet file (a writer killed between the two); best effort."""
    try:
        if json.loads((folder / MANIFEST).read_text()) == manifest:
            return
    except (OSError, json.JSONDecodeError):
        pass
    try:
        with FileLock(str(folder / LOCK), timeout=0):  # a writer at work will write it itself
            if read_manifest(folder / FILE) == manifest:
                atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2))
    except (Timeout, OSError):
        pass  # a read-only cache: listing still works from the Parquet files


def list_knowledge() -> list[dict]:
    """Every stored knowledge set's manifest, read from its Parquet file (what ``load_knowledge`` loads)."""
    out = []
    for path in sorted((cache_root() / "knowledge").glob(f"*/*/*/{FILE}")):
        try:
            manifest = read_manifest(path)
        except (OSError, ValueError):
            continue  # vanished or unreadable: nothing to list
        _repair_manifest(path.parent, manifest)
        out.append(manifest)
    return out


def remove_knowledge(dataset: str, kind: str, model: str) -> None:
    shutil.rmtree(knowledge_dir(dataset, kind, model), ignore_errors=True)
