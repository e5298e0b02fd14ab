"""Decoding speed of the embedded model: llama-cpp-python's create_completion against our batched decoder.

Same prompts (the first --classes hmdb51 classes, dist kind, first attempt), same sampling, grammar-constrained:
    create_completion         one request at a time, grammar checked on the whole vocabulary each token
    batched, parallel=P       P requests per decode step, grammar checked on the top candidates first

    python bench/bench_decoder.py                 # 8 classes; parallel 1, 2, 4, 8
    python bench/bench_decoder.py --classes 16 --skip-baseline
    python bench/bench_decoder.py --model qwen2.5-coder-1.5b --parallel 8 --skip-baseline

Prints tokens/s (throughput: all tokens over the wall time) and the speed-up over create_completion.
"""
from __future__ import annotations

import argparse
import json
import os
import time


def requests(n: int) -> list[tuple[str, dict]]:
    from fsar.data.registry import get_dataset
    from fsar.knowledge.prompting import render_prompt
    from fsar.knowledge.schemas import get_kind

    kind = get_kind("dist")
    out = []
    for cls in get_dataset("hmdb51").split("all")[:n]:
        schema = kind.schema(action=cls.name).model_json_schema()
        out.append((render_prompt("dist", cls.name, kind.default_counts), schema))
    return out


def baseline(path: str, reqs, threads: int, **sampling) -> tuple[int, float]:
    """llama-cpp-python's high-level path, as the backend used it before the batched decoder."""
    from llama_cpp import Llama, LlamaGrammar

    llm = Llama(model_path=path, n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False)
    tokens, start = 0, time.perf_counter()
    for prompt, schema in reqs:
        out = llm.create_completion(prompt, grammar=LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False),
                                    **sampling)
        tokens += out["usage"]["completion_tokens"]
    seconds = time.perf_counter() - start
    llm.close()
    return tokens, seconds


def batched(path: str, reqs, threads: int, parallel: int, **sampling) -> tuple[int, float]:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    from fsar.knowledge.backends.llamacpp_engine import BatchedDecoder, Sampler

    dec = BatchedDecoder(path, n_threads=threads, n_parallel=parallel)
    try:
        start = time.perf_counter()
        futures = [dec.submit(p, json_schema_to_gbnf(json.dumps(s)), Sampler(**sampling)) for p, s in reqs]
        tokens = sum(f.result().completion_tokens for f in futures)
        return tokens, time.perf_counter() - start
    finally:
        dec.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--parallel", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--model", default=None, help="a packaged model's short name (default: the embedded default) or a GGUF path")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from fsar.knowledge.models import DEFAULT_MODEL, resolve_model

    path = str(resolve_model(args.model or DEFAULT_MODEL).path)
    threads = int(os.environ.get("FSAR_LLM_THREADS") or 0) or os.cpu_count() or 1
    reqs = requests(args.classes)
    common = dict(seed=0, temperature=0.7, top_p=0.95, max_tokens=384, frequency_penalty=0.3, presence_penalty=0.5)
    print(f"{args.classes} hmdb51 classes, dist prompts, {threads} threads, {os.path.basename(path)}")
    print("| decoder | tokens | seconds | tokens/s | speed-up |")
    print("|---|---|---|---|---|")
    base = None
    if not args.skip_baseline:
        tokens, seconds = baseline(path, reqs, threads, **common)
        base = tokens / seconds
        print(f"| create_completion | {tokens} | {seconds:.1f} | {base:.1f} | 1.00x |", flush=True)
    for p in args.parallel:
        tokens, seconds = batched(path, reqs, threads, p, **common)
        rate = tokens / seconds
        up = f"{rate / base:.2f}x" if base else "-"
        print(f"| batched, parallel={p} | {tokens} | {seconds:.1f} | {rate:.1f} | {up} |", flush=True)


if __name__ == "__main__":
    main()
