"""Embedding benchmark: encoder throughput on CPU by batch size, and the cost of cached and partial re-embeds.

1. texts/s of the packaged all-MiniLM-L6-v2 on knowledge-like phrases, for several batch sizes and torch threads.
2. On a throwaway cache: an hmdb51-sized dist knowledge set (51 classes x 8 attributes, hand-built from templates,
   no LLM): cold embed, cached re-embed (nothing changed), re-embed after one class changed, the stage-2 contract load.

    python bench/bench_embed.py                 # ~1-2 minutes on 2 cores
    python bench/bench_embed.py --texts 2000 --batch 1,16,64,256
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PARTS = {
    "subject": ["the person", "a man", "a woman", "the athlete", "a child", "the player"],
    "verb": ["lifts", "swings", "pushes", "pulls", "turns", "lowers", "grips", "throws", "holds", "kicks"],
    "object": ["a ball", "a wooden bat", "the handlebars", "a cup of water", "a heavy box", "the door handle", "a rope"],
    "where": ["on a grass field", "in a small kitchen", "near a wall", "on a wooden floor", "at the beach", "in a gym"],
    "how": ["slowly", "with both hands", "in a smooth arc", "again and again", "while stepping forward", "at shoulder height"],
}


def phrases(n: int, rng: np.random.Generator) -> list[str]:
    """n distinct knowledge-like phrases (5-14 words), seeded."""
    out: list[str] = []
    while len(out) < n:
        p = [PARTS[k][rng.integers(len(PARTS[k]))] for k in ("subject", "verb", "object")]
        if rng.random() < 0.7:
            p.append(PARTS["where"][rng.integers(len(PARTS["where"]))])
        if rng.random() < 0.5:
            p.append(PARTS["how"][rng.integers(len(PARTS["how"]))])
        out.append(" ".join(p) + f" ({len(out)})")
    return out


def throughput(texts: list[str], batches: list[int], threads: list[int]) -> None:
    import torch

    from fsar.knowledge.encoders import load_encoder

    t = time.perf_counter()
    enc = load_encoder()
    print(f"encoder {enc.id}: load {time.perf_counter() - t:.1f} s, dim {enc.dim}, max tokens {enc.max_tokens}")
    enc.encode(texts[:32])  # warm up
    default = torch.get_num_threads()
    print(f"\n{'torch threads':>13}{'batch':>7}{'texts':>7}{'seconds':>9}{'texts/s':>9}")
    for th in threads:
        torch.set_num_threads(th)
        for b in batches:
            sub = texts[: min(len(texts), 64 if b == 1 else len(texts))]
            t = time.perf_counter()
            enc.encode(sub, batch_size=b)
            s = time.perf_counter() - t
            print(f"{th:>13}{b:>7}{len(sub):>7}{s:>9.2f}{len(sub) / s:>9.0f}")
    torch.set_num_threads(default)


def cache_costs(rng: np.random.Generator) -> None:
    from fsar.data.registry import get_dataset
    from fsar.knowledge.contract import load_text_embeddings
    from fsar.knowledge.embed import embed_knowledge
    from fsar.knowledge.store import save_knowledge

    classes = get_dataset("hmdb51").classes
    texts = phrases(len(classes) * 8, rng)

    def rows(tx):
        return [{"class_key": c.key, "class_name": c.name, "split": c.split, "index": c.index, "status": "ok",
                 "knowledge": {"spatial": tx[8 * i : 8 * i + 4], "temporal": tx[8 * i + 4 : 8 * i + 8]},
                 "raw_outputs": [], "errors": [], "provenance": {"model": "bench", "attempts": 1}} for i, c in enumerate(classes)]

    save_knowledge("hmdb51", "dist", "bench", rows(texts))
    print(f"\nhmdb51 dist set: {len(classes)} classes, {len(texts)} attributes + {len(classes)} name prompts")
    print(f"{'run':<34}{'seconds':>9}{'encoded':>9}")
    r = embed_knowledge("hmdb51", "dist", "bench")
    print(f"{'cold embed (encoder loaded)':<34}{r.seconds:>9.3f}{r.encoded:>9}")
    r = embed_knowledge("hmdb51", "dist", "bench")
    print(f"{'cached re-embed (no change)':<34}{r.seconds:>9.3f}{r.encoded:>9}")
    texts[8 * 7 + 2] = "a changed attribute for one class"
    save_knowledge("hmdb51", "dist", "bench", rows(texts))
    r = embed_knowledge("hmdb51", "dist", "bench")
    print(f"{'re-embed after 1 text changed':<34}{r.seconds:>9.3f}{r.encoded:>9}")
    t = time.perf_counter()
    te = load_text_embeddings("hmdb51", "dist", model="bench")
    print(f"{'contract load (all 51 classes)':<34}{time.perf_counter() - t:>9.3f}{0:>9}")
    print(f"contract shapes: names {tuple(te.names.shape)}, spatial {tuple(te.items['spatial'].shape)}, temporal {tuple(te.items['temporal'].shape)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--texts", type=int, default=512)
    p.add_argument("--batch", type=str, default="1,8,32,128")
    p.add_argument("--threads", type=str, default="1,2")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    rng = np.random.default_rng(a.seed)
    throughput(phrases(a.texts, rng), [int(b) for b in a.batch.split(",")], [int(t) for t in a.threads.split(",")])
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["FSAR_CACHE"] = tmp
        cache_costs(rng)


if __name__ == "__main__":
    main()
