"""The knowledge store: one Hugging Face ``datasets.Dataset`` per (dataset, kind, model), saved as Parquet.

Layout: ``<cache>/knowledge/<dataset>/<kind>/<model>/knowledge.parquet`` plus ``manifest.json`` (counts and
fingerprint). One row per class, with typed nested features: the knowledge itself (null for a failed class), its
status, the raw LLM outputs and validation errors of every attempt, and its provenance.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import datasets
import pyarrow.parquet as pq
from datasets import Features, List, Value

from fsar.data.paths import atomic_write_text, cache_root
from fsar.knowledge.cache import canonical_json, sha256_text
from fsar.knowledge.schemas import KINDS, KnowledgeKind

FILE = "knowledge.parquet"
MANIFEST = "manifest.json"

_KNOWLEDGE_FEATURES = {
    "dist": {"spatial": List(Value("string")), "temporal": List(Value("string"))},
    "lga": {
        "stages": List(
            {
                "stage": Value("string"),
                "subject": Value("string"),
                "motion": Value("string"),
                "object": Value("string"),
                "sentence": Value("string"),
            }
        )
    },
    "star": {"descriptors": List(Value("string")), "summary": Value("string")},
}

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
    return Features(
        {
            "class_key": Value("string"),
            "class_name": Value("string"),
            "split": Value("string"),
            "index": Value("int64"),
            "status": Value("string"),  # "ok" or "failed"
            "knowledge": _KNOWLEDGE_FEATURES[kind],
            "raw_outputs": List(Value("string")),
            "errors": List(Value("string")),
            "provenance": PROVENANCE_FEATURES,
        }
    )


def knowledge_dir(dataset: str, kind: str, model: str) -> Path:
    return cache_root() / "knowledge" / dataset / kind / model


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
        return KINDS[self.kind].texts(row["knowledge"])


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


def save_knowledge(dataset: str, kind: str, model: str, rows: list[dict]) -> KnowledgeSet:
    """Write a whole knowledge set atomically (a reader never sees a half-written file); rows sorted by class index."""
    k = KINDS[kind]
    rows = sorted((_normalize_row(r, k) for r in rows), key=lambda r: r["index"])
    feats = features(kind)
    ds = datasets.Dataset.from_list(rows, features=feats) if rows else datasets.Dataset.from_dict({k: [] for k in feats}, features=feats)
    folder = knowledge_dir(dataset, kind, model)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{FILE}.{os.getpid()}.tmp"
    pq.write_table(ds.data.table, tmp)  # the table's schema metadata carries the typed features
    os.replace(tmp, folder / FILE)
    n_ok = sum(r["status"] == "ok" for r in rows)
    manifest = {
        "dataset": dataset,
        "kind": kind,
        "model": model,
        "classes": len(rows),
        "ok": n_ok,
        "failed": len(rows) - n_ok,
        "fingerprint": fingerprint(rows, kind),
        "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2))
    return KnowledgeSet(dataset, kind, model, ds, folder)


def load_knowledge(dataset: str, kind: str, model: str | None = None) -> KnowledgeSet:
    """Load a stored knowledge set; with no model, the most recently updated one that is not a filtered copy
    (a ``<model>.filtered`` set from ``fsar-knowledge report --filter`` is used only when named, or when it is all
    there is). Raises FileNotFoundError with the command that makes it.
    """
    base = cache_root() / "knowledge" / dataset / kind
    if model is None:
        found = sorted(base.glob(f"*/{FILE}"), key=lambda p: (not p.parent.name.endswith(".filtered"), p.stat().st_mtime))
        if not found:
            raise FileNotFoundError(
                f"no '{kind}' knowledge for dataset '{dataset}' in {cache_root()}; "
                f"run: fsar-knowledge generate --dataset {dataset} --kind {kind}"
            )
        model = found[-1].parent.name
    path = knowledge_dir(dataset, kind, model) / FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"no '{kind}' knowledge for dataset '{dataset}' from model '{model}'; "
            f"run: fsar-knowledge generate --dataset {dataset} --kind {kind}"
        )
    ds = datasets.Dataset(pq.read_table(path))
    return KnowledgeSet(dataset, kind, model, ds, path.parent)


def list_knowledge() -> list[dict]:
    """Every stored knowledge set's manifest."""
    out = []
    for manifest in sorted((cache_root() / "knowledge").glob(f"*/*/*/{MANIFEST}")):
        try:
            out.append(json.loads(manifest.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return out


def remove_knowledge(dataset: str, kind: str, model: str) -> None:
    shutil.rmtree(knowledge_dir(dataset, kind, model), ignore_errors=True)
