"""Embed knowledge sets: every text of every valid class plus each class-name prompt, cached twice over.

Two caches, both Parquet written atomically under ``<cache>/embeddings/``:

- the **text store** ``_texts/<encoder>/part-*.parquet``: one row per distinct text (SHA-256 of the text, the text,
  its vector), keyed by the encoder's identity. Every encoding goes through it, so changed knowledge re-encodes only
  the texts that changed, and a filtered or regenerated set whose texts were seen before costs no encoding at all.
- the **set file** ``<dataset>/<kind>/<model>/<encoder>/embeddings.parquet`` (a Hugging Face dataset: class_key,
  class_index, split, field, slot, text, key, embedding) with ``manifest.json`` recording the knowledge fingerprint
  and encoder identity. When both match, ``embed_knowledge`` returns at once without loading the encoder.

Fields per kind: ``name`` (the class-name prompt, slot 0) and dist ``spatial``/``temporal``; lga ``triplets``/
``sentences`` (slot = stage: 0 onset, 1 progression, 2 completion); star ``descriptors``/``summary``.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Features, List, Value

from fsar.data.paths import atomic_write_text, cache_root, ensure_writable
from fsar.knowledge.cache import canonical_json, sha256_text
from fsar.knowledge.encoders import EncoderSpec, load_encoder, normalize, resolve_encoder
from fsar.knowledge.errors import KnowledgeError, KnowledgeNotFoundError
from fsar.knowledge.kinds import get_kind
from fsar.knowledge.store import KnowledgeSet, load_knowledge

NAME_TEMPLATE = "a video of a person {name}"  # the class-name prompt (ActionCLIP-style)
SET_FILE = "embeddings.parquet"
MANIFEST = "manifest.json"
COMPACT_AT = 16  # text-store shards merged into one beyond this many


def embeddings_root() -> Path:
    return cache_root() / "embeddings"


def text_key(text: str) -> str:
    return sha256_text(text)[:32]


def name_prompt(name: str, template: str = NAME_TEMPLATE) -> str:
    return template.format(name=name)


def embed_command(dataset: str, kind: str, encoder: str | None = None, model: str | None = None) -> str:
    """The command line that makes a set's embeddings (for error messages)."""
    cmd = f"fsar-knowledge embed --dataset {dataset} --kind {kind}"
    if model:
        cmd += f" --model {model}"
    if encoder:
        cmd += f" --encoder {encoder}"
    return cmd


# ---------------------------------------------------------------- text store


class TextStore:
    """Vectors of distinct texts for one encoder: Parquet shards ``part-*.parquet`` of (key, text, embedding)."""

    def __init__(self, spec: EncoderSpec):
        self.spec = spec
        self.root = embeddings_root() / "_texts" / spec.slug

    def _shards(self) -> list[Path]:
        return sorted(self.root.glob("part-*.parquet"))  # names start with a timestamp: oldest first

    def lookup(self, keys: list[str]) -> dict[str, np.ndarray]:
        """The stored vectors of those keys that are present."""
        want = set(keys)
        found: dict[str, np.ndarray] = {}
        for shard in reversed(self._shards()):  # newest first: a forced re-encode wins
            try:
                table = pq.read_table(shard, columns=["key", "embedding"])
            except (OSError, pa.ArrowException):
                continue  # a shard vanished during compaction by another process
            shard_keys = table.column("key").to_pylist()
            rows = [i for i, k in enumerate(shard_keys) if k in want and k not in found]
            if not rows:
                continue
            vecs = _matrix(table.column("embedding").take(pa.array(rows)))
            for i, v in zip(rows, vecs):
                found[shard_keys[i]] = v
        return found

    def add(self, keys: list[str], texts: list[str], vectors: np.ndarray) -> None:
        """Write one new shard atomically; merge shards when there are many."""
        if not keys:
            return
        _write_parquet(self.root / f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet", _text_table(keys, texts, vectors))
        shards = self._shards()
        if len(shards) > COMPACT_AT:
            self._compact(shards)

    def _compact(self, shards: list[Path]) -> None:
        tables = [pq.read_table(s) for s in shards]
        table = pa.concat_tables(tables, promote_options="default")
        keys = table.column("key").to_pylist()
        last = sorted({k: i for i, k in enumerate(keys)}.values())  # the newest vector of each text
        _write_parquet(self.root / f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}-merged.parquet", table.take(pa.array(last)))
        for s in shards:
            s.unlink(missing_ok=True)

    def __len__(self) -> int:
        return sum(pq.ParquetFile(s).metadata.num_rows for s in self._shards())


def _text_table(keys: list[str], texts: list[str], vectors: np.ndarray) -> pa.Table:
    feats = Features({"key": Value("string"), "text": Value("string"), "embedding": List(Value("float32"), length=vectors.shape[1])})
    return datasets.Dataset.from_dict({"key": keys, "text": texts, "embedding": vectors}, features=feats).data.table


def _write_parquet(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:  # Python's open: an OSError that names the file (pyarrow's names none)
        pq.write_table(table, f)
    os.replace(tmp, path)


def _matrix(column) -> np.ndarray:
    """A (fixed-size) list<float32> Arrow column -> [N, D] float32."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    n = len(column)
    flat = np.array(column.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)  # a writable copy
    return flat.reshape(n, -1) if n else np.zeros((0, 0), np.float32)


def encode_texts(
    texts: list[str],
    encoder: str | EncoderSpec | None = None,
    batch_size: int = 64,
    on_progress: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, int]:
    """Vectors [N, D] of texts through the text store; only unseen texts are encoded. Returns (vectors, n_encoded).

    The encoder is loaded only when some text is missing from the store; ``on_start(n)`` is told how many.
    """
    spec = encoder if isinstance(encoder, EncoderSpec) else resolve_encoder(encoder)
    store = TextStore(spec)
    keys = [text_key(t) for t in texts]
    found = store.lookup(keys)
    missing = list(dict.fromkeys(k for k in keys if k not in found))
    if missing:
        enc = load_encoder(spec)
        if enc.id != spec.id:  # a Hub model downloaded just now: its identity now carries the revision
            spec, store = enc.spec, TextStore(enc.spec)
        text_of = dict(zip(keys, texts))
        new_texts = [text_of[k] for k in missing]
        if on_start:
            on_start(len(new_texts))
        vecs = enc.encode(new_texts, batch_size=batch_size, on_progress=on_progress)
        store.add(missing, new_texts, vecs)
        found.update(zip(missing, vecs))
    if not texts:
        return np.zeros((0, 0), np.float32), 0
    return normalize(np.stack([found[k] for k in keys])), len(missing)


# ---------------------------------------------------------------- knowledge sets


def knowledge_items(kind: str, knowledge: dict) -> list[tuple[str, int, str]]:
    """(field, slot, text) of one class's knowledge, as its kind lays them out (lga slots are stage positions)."""
    return get_kind(kind).items(knowledge)


def set_dir(dataset: str, kind: str, model: str, spec: EncoderSpec) -> Path:
    return embeddings_root() / dataset / kind / model / spec.slug


def _set_key(ks: KnowledgeSet, spec: EncoderSpec, template: str) -> str:
    """What the set file depends on: the knowledge, every class (failed ones have name rows), encoder, prompt."""
    classes = sorted((r["index"], r["class_key"], r["class_name"], r["split"]) for r in ks.rows)
    return sha256_text(canonical_json({"k": ks.fingerprint, "c": classes, "e": spec.id, "t": template}))[:16]


def embeddings_fingerprint(knowledge_fingerprint: str, encoder_id: str, template: str = NAME_TEMPLATE) -> str:
    """Fingerprint of a knowledge set's embeddings: its knowledge, the encoder identity and the name prompt."""
    return sha256_text(canonical_json({"k": knowledge_fingerprint, "e": encoder_id, "t": template}))[:16]


@dataclass
class EmbedResult:
    """What ``embed_knowledge`` did for one set."""

    dataset: str
    kind: str
    model: str
    encoder: str  # identity
    path: Path
    texts: int  # rows of the set file (item texts and name prompts)
    unique: int  # distinct texts among them
    encoded: int  # texts that went through the encoder in this call (0 on a cache hit)
    cached: bool  # the set file was current: nothing was read, encoded or written
    seconds: float
    manifest: dict = field(default_factory=dict)


def _check_nonempty(ks: KnowledgeSet) -> None:
    cmd = f"fsar-knowledge generate --dataset {ks.dataset} --kind {ks.kind}"
    if len(ks.rows) == 0:
        raise KnowledgeError(f"knowledge set {ks.dataset}/{ks.kind}/{ks.model} is empty (0 classes); run: {cmd}")
    if not ks.ok:
        names = ", ".join(r["class_name"] for r in ks.failed[:8])
        raise KnowledgeError(f"knowledge set {ks.dataset}/{ks.kind}/{ks.model} has no valid class ({len(ks.failed)} failed: {names}); run again to retry them: {cmd}")


def embed_knowledge(
    dataset: str,
    kind: str,
    model: str | None = None,
    encoder: str | None = None,
    batch_size: int = 64,
    force: bool = False,
    template: str = NAME_TEMPLATE,
    on_progress: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> EmbedResult:
    """Embed one knowledge set (valid classes' texts, every class's name prompt) into its set file; cached."""
    get_kind(kind)
    start = time.perf_counter()
    ks = load_knowledge(dataset, kind, model)
    _check_nonempty(ks)
    spec = resolve_encoder(encoder)
    folder = set_dir(dataset, kind, ks.model, spec)
    key = _set_key(ks, spec, template)
    manifest_path = folder / MANIFEST
    if not force and manifest_path.is_file() and (folder / SET_FILE).is_file():
        try:
            old = json.loads(manifest_path.read_text())
        except json.JSONDecodeError:
            old = {}
        if old.get("set_key") == key:
            return EmbedResult(dataset, kind, ks.model, spec.id, folder, old["texts"], old.get("unique", old["texts"]), 0, True,
                               time.perf_counter() - start, old)

    ensure_writable(embeddings_root())  # before any encoding: a read-only cache fails at once, naming the folder
    rows: list[dict] = []
    for r in ks.rows:
        base = {"class_key": r["class_key"], "class_name": r["class_name"], "class_index": r["index"], "split": r["split"]}
        rows.append({**base, "field": "name", "slot": 0, "text": name_prompt(r["class_name"], template)})
        if r["status"] == "ok" and r["knowledge"] is not None:
            rows += [{**base, "field": f, "slot": s, "text": t} for f, s, t in knowledge_items(kind, r["knowledge"])]
    texts = [r["text"] for r in rows]
    if force:  # encode every text again, bypassing the text store (the new vectors win later lookups)
        enc = load_encoder(spec)
        if on_start:
            on_start(len(set(texts)))
        uniq = list(dict.fromkeys(texts))
        vec_u = enc.encode(uniq, batch_size=batch_size, on_progress=on_progress)
        TextStore(enc.spec).add([text_key(t) for t in uniq], uniq, vec_u)
        pos = {t: i for i, t in enumerate(uniq)}
        vectors, encoded = vec_u[[pos[t] for t in texts]], len(uniq)
    else:
        vectors, encoded = encode_texts(texts, spec, batch_size, on_progress, on_start)
    spec = load_encoder(spec).spec if encoded and spec.id == spec.source else spec  # Hub ids gain their revision
    for r in rows:
        r["key"] = text_key(r["text"])
    feats = Features(
        {
            "class_key": Value("string"),
            "class_name": Value("string"),
            "class_index": Value("int64"),
            "split": Value("string"),
            "field": Value("string"),
            "slot": Value("int64"),
            "text": Value("string"),
            "key": Value("string"),
            "embedding": List(Value("float32"), length=int(vectors.shape[1])),
        }
    )
    cols = {k: [r[k] for r in rows] for k in feats if k != "embedding"}
    table = datasets.Dataset.from_dict({**cols, "embedding": vectors}, features=feats).data.table
    folder = set_dir(dataset, kind, ks.model, spec)
    _write_parquet(folder / SET_FILE, table)
    manifest = {
        "dataset": dataset,
        "kind": kind,
        "model": ks.model,
        "knowledge_fingerprint": ks.fingerprint,
        "encoder": spec.id,
        "encoder_name": spec.name,
        "dim": int(vectors.shape[1]),
        "name_template": template,
        "fingerprint": embeddings_fingerprint(ks.fingerprint, spec.id, template),
        "set_key": _set_key(ks, spec, template),
        "classes": len(ks.rows),
        "valid_classes": len(ks.ok),
        "texts": len(rows),
        "unique": len(set(texts)),
        "encoded": encoded,
        "normalized": True,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2))
    return EmbedResult(dataset, kind, ks.model, spec.id, folder, len(rows), len(set(texts)), encoded, False, time.perf_counter() - start, manifest)


@dataclass
class EmbeddingSet:
    """A set file loaded: one row per text with its vector."""

    manifest: dict
    rows: list[dict]  # class_key, class_name, class_index, split, field, slot, text, key
    vectors: np.ndarray  # [N, D] float32, L2-normalised
    path: Path


def read_set(folder: Path) -> EmbeddingSet:
    manifest = json.loads((folder / MANIFEST).read_text())
    table = pq.read_table(folder / SET_FILE)
    vectors = _matrix(table.column("embedding"))
    rows = table.drop(["embedding"]).to_pylist()
    return EmbeddingSet(manifest, rows, vectors, folder)


def load_embeddings(dataset: str, kind: str, model: str | None = None, encoder: str | None = None, ks: KnowledgeSet | None = None) -> EmbeddingSet:
    """The current embeddings of a knowledge set; FileNotFoundError naming the command when missing or out of date."""
    ks = ks or load_knowledge(dataset, kind, model)
    spec = resolve_encoder(encoder)
    folder = set_dir(dataset, kind, ks.model, spec)
    cmd = embed_command(dataset, kind, encoder, model)
    if not (folder / MANIFEST).is_file() or not (folder / SET_FILE).is_file():
        raise KnowledgeNotFoundError(f"no embeddings of {dataset}/{kind}/{ks.model} with encoder {spec.id}; run: {cmd}")
    es = read_set(folder)
    if es.manifest.get("knowledge_fingerprint") != ks.fingerprint or es.manifest.get("set_key") != _set_key(ks, spec, es.manifest.get("name_template", NAME_TEMPLATE)):
        raise KnowledgeNotFoundError(f"the embeddings of {dataset}/{kind}/{ks.model} are out of date (the knowledge changed since); run: {cmd}")
    return es


def list_embeddings(dataset: str | None = None) -> list[dict]:
    """Manifests of every embedded set (of one data set, or all)."""
    pattern = f"{dataset or '*'}/*/*/*/{MANIFEST}"
    out = []
    for m in sorted(embeddings_root().glob(pattern)):
        if m.parts[-5] == "_texts":
            continue
        try:
            out.append({**json.loads(m.read_text()), "path": str(m.parent)})
        except (OSError, json.JSONDecodeError):
            continue
    return out
