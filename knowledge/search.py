"""Nearest classes and knowledge items for a text query: cosine similarity through a faiss index.

Vectors are L2-normalised, so inner product = cosine. Collections below ``APPROX_THRESHOLD`` vectors use the exact
``IndexFlatIP``; larger ones an ``IndexIVFFlat`` (inner product) whose coarse quantizer is trained with k-means on a
seeded sample (``nlist`` ~ sqrt(N) lists, ``nprobe`` lists searched), which bench/bench_search.py measures against
the flat index (recall@10 and latency on 1M x 384 vectors). Approximate indexes are cached on disk by collection
fingerprint, so only the first query after an embed pays for training.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from fsar.data.paths import atomic_write_bytes, check_name
from fsar.knowledge.cache import canonical_json, sha256_text
from fsar.knowledge.embed import embed_command, embeddings_root, encode_texts, list_embeddings, read_set
from fsar.knowledge.encoders import EncoderSpec, resolve_encoder
from fsar.knowledge.errors import KnowledgeError, KnowledgeNotFoundError

APPROX_THRESHOLD = 100_000  # vectors; below it exact search takes < ~20 ms a query on 2 busy CPU cores (bench_search)
DEFAULT_NPROBE = 32  # recall@10 0.96 at 1M x 384 with nlist 1000 (bench/bench_search.py)
TRAIN_PER_LIST = 40  # k-means training points per inverted list (faiss warns under 39)


@dataclass
class VectorIndex:
    """A faiss index over N normalised vectors of dimension D; ``kind`` is "flat" (exact) or "ivf" (approximate)."""

    index: faiss.Index
    kind: str
    n: int
    dim: int

    def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """queries [Q, D] -> (scores [Q, k], ids [Q, k]); ids -1 where fewer than k vectors exist."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        return self.index.search(q, min(k, self.n) if self.n else k)

    @property
    def nprobe(self) -> int | None:
        return faiss.extract_index_ivf(self.index).nprobe if self.kind == "ivf" else None

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if self.kind == "ivf":
            faiss.extract_index_ivf(self.index).nprobe = int(value)


def build_index(
    vectors: np.ndarray,
    approximate: bool | None = None,
    threshold: int = APPROX_THRESHOLD,
    nlist: int | None = None,
    nprobe: int = DEFAULT_NPROBE,
    seed: int = 0,
) -> VectorIndex:
    """Index normalised vectors [N, D]: exact below ``threshold`` (or approximate=False), IVF-Flat above it."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    if approximate is None:
        approximate = n >= threshold
    if not approximate:
        index = faiss.IndexFlatIP(d)
        index.add(x)
        return VectorIndex(index, "flat", n, d)
    nlist = nlist or max(1, min(int(round(math.sqrt(n))), n // TRAIN_PER_LIST))
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.cp.niter = 10
    sample = np.random.default_rng(seed).choice(n, size=min(n, nlist * TRAIN_PER_LIST), replace=False)
    index.train(x[np.sort(sample)])
    index.add(x)
    index.nprobe = min(nprobe, nlist)
    return VectorIndex(index, "ivf", n, d)


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray, k: int = 10) -> float:
    """Share of the exact top-k neighbours that the approximate top-k found, averaged over queries."""
    hits = [len(set(a[:k].tolist()) & set(e[:k].tolist())) for a, e in zip(approx_ids, exact_ids)]
    return float(np.mean(hits)) / k


# ---------------------------------------------------------------- knowledge collections


@dataclass
class Collection:
    """Every embedded text of some knowledge sets (one encoder), deduplicated, with one index."""

    rows: list[dict]  # dataset, kind, model, class_key, class_name, field, text
    vectors: np.ndarray  # [N, D]
    encoder: EncoderSpec
    fingerprint: str
    index: VectorIndex | None = None


def load_collection(dataset: str = "all", encoder: str | None = None, kind: str | None = None) -> Collection:
    """The embedded texts of ``dataset`` (or all data sets) for ``encoder``; FileNotFoundError names the embed command."""
    spec = resolve_encoder(encoder)
    scope = None if dataset in (None, "all") else check_name(dataset, "--dataset")
    sets = [m for m in list_embeddings(scope) if m.get("encoder") == spec.id and (kind in (None, "all") or m["kind"] == kind)]
    if not sets:
        ds, kd = scope or "hmdb51", kind if kind not in (None, "all") else "dist"
        where = f"data set '{scope}'" if scope else "any data set"
        others = sorted({m["encoder"] for m in list_embeddings(scope)})
        hint = f" (there are embeddings with {', '.join(others)}: pass --encoder)" if others else ""
        raise KnowledgeNotFoundError(f"no embeddings for {where} with encoder {spec.id}{hint}; run: {embed_command(ds, kd, encoder)}")
    rows, vecs, seen = [], [], set()
    for m in sets:
        es = read_set(Path(m["path"]))
        for r, v in zip(es.rows, es.vectors):
            ident = (m["dataset"], r["class_key"], r["text"])
            if ident in seen:  # class names repeat across kinds, filtered sets repeat their source's texts
                continue
            seen.add(ident)
            rows.append({"dataset": m["dataset"], "kind": "name" if r["field"] == "name" else m["kind"], "model": m["model"],
                         "class_key": r["class_key"], "class_name": r["class_name"], "field": r["field"], "text": r["text"]})
            vecs.append(v)
    fp = sha256_text(canonical_json(sorted(m["fingerprint"] + m["set_key"] + m["model"] for m in sets)))[:16]
    return Collection(rows, np.stack(vecs).astype(np.float32), spec, fp)


def collection_index(col: Collection, threshold: int = APPROX_THRESHOLD) -> VectorIndex:
    """The collection's index: exact and built on the fly when small; approximate and cached on disk when large."""
    if col.index is not None:
        return col.index
    if len(col.rows) < threshold:
        col.index = build_index(col.vectors, approximate=False)
        return col.index
    path = embeddings_root() / "_index" / f"{col.fingerprint}-{len(col.rows)}.faiss"
    if path.is_file():
        index = faiss.read_index(str(path))
        col.index = VectorIndex(index, "ivf", index.ntotal, index.d)
    else:
        col.index = build_index(col.vectors, approximate=True)
        atomic_write_bytes(path, faiss.serialize_index(col.index.index).tobytes())
    return col.index


@dataclass
class Hit:
    score: float
    dataset: str
    kind: str
    class_key: str
    class_name: str
    field: str
    text: str


def search(query: str, dataset: str = "all", k: int = 10, encoder: str | None = None, kind: str | None = None,
           collection: Collection | None = None) -> tuple[list[Hit], list[Hit]]:
    """Top-k knowledge items and top-k classes (each class scored by its best item or name) for a query."""
    if not query or not query.strip():
        raise KnowledgeError("the search query is empty; give some text, e.g. fsar-knowledge search \"swinging a club\"")
    if k < 1:
        raise KnowledgeError(f"--k must be at least 1, got {k}")
    col = collection or load_collection(dataset, encoder, kind)
    index = collection_index(col)
    q, _ = encode_texts([query.strip()], col.encoder)
    pool = min(len(col.rows), max(k * 20, 200))
    scores, ids = index.search(q, pool)
    hits = [Hit(float(s), **{f: col.rows[i][f] for f in ("dataset", "kind", "class_key", "class_name", "field", "text")})
            for s, i in zip(scores[0], ids[0]) if i >= 0]
    classes: dict[tuple[str, str], Hit] = {}
    for h in hits:  # hits come best first: the first hit of a class is its best
        classes.setdefault((h.dataset, h.class_key), h)
    return hits[:k], list(classes.values())[:k]
