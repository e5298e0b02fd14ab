"""Search benchmark: exact IndexFlatIP against the automatic approximate index (IVF-Flat) on synthetic vectors.

Prints build time, memory, per-query latency (batched and one at a time) and recall@10 against the exact index for
a sweep of nprobe, on N synthetic L2-normalised vectors of dimension D (default 1,000,000 x 384, the MiniLM size).
The vectors have two levels of cluster structure like text embeddings (topics, sub-topics, points: a nearest
neighbour at cosine ~0.75, a random pair at ~0); queries are fresh draws, not database points. ``--hnsw N`` also builds HNSW on the first N vectors.

    python bench/bench_search.py                      # 1M x 384, ~1-3 minutes and ~5 GB RAM on 2 cores
    python bench/bench_search.py --n 200000 --hnsw 200000
"""
from __future__ import annotations

import argparse
import time

import faiss
import numpy as np

from fsar.knowledge.search import APPROX_THRESHOLD, DEFAULT_NPROBE, build_index, recall_at_k


def synthetic(n: int, d: int, topics: int, spread: tuple[float, float], rng: np.random.Generator, sub: np.ndarray | None = None,
              per_topic: int = 16, chunk: int = 100_000) -> tuple[np.ndarray, np.ndarray]:
    """n unit vectors [n, d] float32 with two levels of structure, like text embeddings: topics, sub-topics around
    each topic (relative spread[0]), points around a sub-topic (spread[1]). Built in chunks: one copy in memory."""
    if sub is None:
        centers = rng.standard_normal((topics, d), dtype=np.float32)
        sub = np.repeat(centers, per_topic, axis=0) + spread[0] * rng.standard_normal((topics * per_topic, d), dtype=np.float32)
    x = np.empty((n, d), np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        x[s : s + m] = sub[rng.integers(0, len(sub), m)] + spread[1] * rng.standard_normal((m, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, sub


def latency(index, q: np.ndarray, k: int, single: int) -> tuple[float, float]:
    """(ms per query in one batch, ms per query one at a time)."""
    t = time.perf_counter()
    index.search(q, k)
    batched = (time.perf_counter() - t) * 1000 / len(q)
    t = time.perf_counter()
    for i in range(single):
        index.search(q[i : i + 1], k)
    return batched, (time.perf_counter() - t) * 1000 / single


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--single", type=int, default=50, help="queries timed one at a time")
    p.add_argument("--topics", type=int, default=0, help="top-level clusters, 16 sub-topics each (default N/128: ~8 vectors per sub-topic)")
    p.add_argument("--spread", type=str, default="0.7,0.6", help="relative spread of sub-topics around topics, points around sub-topics")
    p.add_argument("--nprobe", type=str, default="1,4,8,16,32,64")
    p.add_argument("--hnsw", type=int, default=0, help="also build HNSW (M=32) on the first N vectors")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    k = 10
    rng = np.random.default_rng(a.seed)
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads; N={a.n:,} D={a.dim} queries={a.queries} seed={a.seed} "
          f"topics={a.topics or max(1, a.n // 128)}x16 spread={a.spread}")
    t = time.perf_counter()
    spread = tuple(float(v) for v in a.spread.split(","))
    a.topics = a.topics or max(1, a.n // 128)
    x, sub = synthetic(a.n, a.dim, a.topics, spread, rng)
    q, _ = synthetic(a.queries, a.dim, a.topics, spread, rng, sub)
    print(f"data: {time.perf_counter() - t:.1f} s, {x.nbytes / 2**30:.2f} GiB; auto index above {APPROX_THRESHOLD:,} vectors: IVF-Flat")

    t = time.perf_counter()
    flat = build_index(x, approximate=False)
    t_flat = time.perf_counter() - t
    t = time.perf_counter()
    _, exact = flat.search(q, k)
    t_exact = time.perf_counter() - t
    b, s = latency(flat, q, k, a.single)
    rows = [("flat (exact)", "-", t_flat, b, s, 1.0)]
    print(f"flat: add {t_flat:.1f} s, ground truth for {a.queries} queries {t_exact:.1f} s")

    t = time.perf_counter()
    ivf = build_index(x, approximate=True, seed=a.seed)
    t_ivf = time.perf_counter() - t
    nlist = faiss.extract_index_ivf(ivf.index).nlist
    print(f"ivf: nlist {nlist}, trained on {min(a.n, nlist * 40):,} vectors, build {t_ivf:.1f} s (default nprobe {DEFAULT_NPROBE})")
    for nprobe in [int(v) for v in a.nprobe.split(",")]:
        ivf.nprobe = nprobe
        _, ids = ivf.search(q, k)
        b, s = latency(ivf, q, k, a.single)
        rows.append((f"ivf-flat nlist={nlist}", str(nprobe), t_ivf, b, s, recall_at_k(ids, exact, k)))
    if a.hnsw:
        m = min(a.hnsw, a.n)
        sub_exact = build_index(x[:m], approximate=False).search(q, k)[1]
        t = time.perf_counter()
        h = faiss.IndexHNSWFlat(a.dim, 32, faiss.METRIC_INNER_PRODUCT)
        h.hnsw.efConstruction = 40
        h.add(x[:m])
        t_h = time.perf_counter() - t
        for ef in (16, 64):
            h.hnsw.efSearch = ef
            _, ids = h.search(q, k)
            b, s = latency(h, q, k, a.single)
            rows.append((f"hnsw M=32 on {m:,}", f"ef={ef}", t_h, b, s, recall_at_k(ids, sub_exact, k)))

    print()
    print(f"{'index':<26}{'nprobe':>8}{'build s':>10}{'ms/query (batch)':>18}{'ms/query (single)':>19}{'recall@10':>11}")
    for name, npb, tb, b, s, r in rows:
        print(f"{name:<26}{npb:>8}{tb:>10.1f}{b:>18.3f}{s:>19.3f}{r:>11.3f}")


if __name__ == "__main__":
    main()
