"""Stage-1 benchmark: speed and validity of knowledge generation on the embedded model, cached reruns,
and the openai backend's concurrency speed-up against a local llama.cpp server.

    python bench/bench_knowledge.py                      # all 51 hmdb51 classes x dist, lga, star
    python bench/bench_knowledge.py --limit 10 --kinds dist --skip-server
    python bench/bench_knowledge.py --replay --cache DIR   # only the cached rerun of a finished run
    python bench/bench_knowledge.py --model qwen2.5-coder-1.5b --limit 8 --kinds dist --skip-server --show
    python bench/bench_knowledge.py --model qwen2.5-coder-1.5b --prompt-style completion --limit 8 --kinds dist --skip-server

It uses a fresh cache folder (``--cache``, default a temporary one) so the first run really calls the LLM.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="hmdb51")
    ap.add_argument("--kinds", default="dist,lga,star")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--cache", default=None, help="cache folder (default: a new temporary one)")
    ap.add_argument("--parallel", type=int, default=None, help="sequences decoded together (default: the backend's 8)")
    ap.add_argument("--model", default=None, help="a packaged model's short name (gemma-3-270m, qwen2.5-coder-1.5b) or a GGUF path")
    ap.add_argument("--prompt-style", default=None, choices=["completion", "chat"], help="default: the model's own")
    ap.add_argument("--skip-replay", action="store_true", help="skip the cached-rerun measurement")
    ap.add_argument("--show", action="store_true", help="print every class's knowledge (or last error) after each kind")
    ap.add_argument("--skip-server", action="store_true", help="skip the openai-backend concurrency measurement")
    ap.add_argument("--server-classes", type=int, default=8)
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    ap.add_argument("--replay", action="store_true", help="only time the fully cached rerun of what --cache holds "
                    "(its knowledge store is rebuilt from the cached answers)")
    ap.add_argument("--summarize", action="store_true", help="only print the figures of what --cache already holds "
                    "(e.g. after an interrupted run), from each row's provenance")
    args = ap.parse_args()
    if args.summarize:
        summarize(Path(args.cache), args.dataset, args.kinds.split(","))
        return
    if args.replay:
        os.environ["FSAR_CACHE"] = str(Path(args.cache))
        replay(Path(args.cache), args)
        return

    cache = Path(args.cache or tempfile.mkdtemp(prefix="fsar-bench-"))
    os.environ["FSAR_CACHE"] = str(cache)
    from fsar.knowledge.backends.llamacpp import LlamaCppBackend
    from fsar.knowledge.generate import generate_knowledge
    from fsar.knowledge.store import load_knowledge

    figures: dict = {"dataset": args.dataset, "cache": str(cache), "cpu_count": os.cpu_count()}
    backend = LlamaCppBackend(args.model, parallel=args.parallel, prompt_style=args.prompt_style)
    figures["n_threads"] = backend.n_threads
    figures["model"], figures["prompt_style"] = backend.model, backend.prompt_style
    print(f"embedded model {backend.model}, {backend.prompt_style} prompts ({backend.n_threads} threads), cache {cache}", flush=True)

    rows = []
    for kind in args.kinds.split(","):
        t0 = time.perf_counter()
        [s] = generate_knowledge(args.dataset, kind, limit=args.limit, backend=backend)
        wall = time.perf_counter() - t0
        ks = load_knowledge(args.dataset, kind, backend.slug)
        first = sum(1 for r in ks.rows if r["status"] == "ok" and r["provenance"]["attempts"] == 1)
        n = len(ks.rows)
        row = {
            "kind": kind,
            "classes": n,
            "classes_per_min": round(n / wall * 60, 2),
            # throughput: all tokens over the wall time (requests are decoded together, so per-request times overlap)
            "tokens_per_s": round(s.completion_tokens / wall, 1),
            "parallel": backend.concurrency,
            "llm_calls": s.llm_calls,
            "valid_first_attempt": round(first / n, 3),
            "valid_after_retries": round(len(ks.ok) / n, 3),
            "failed": s.failed_classes,
            "seconds": round(wall, 1),
            "seconds_per_class": round(wall / n, 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.show:
            for r in ks.rows:
                shown = json.dumps(r["knowledge"], ensure_ascii=False) if r["status"] == "ok" else f"FAILED: {r['errors'][-1]}"
                print(f"  {r['class_name']} ({r['provenance']['attempts']} attempts): {shown}", flush=True)
    figures["generation"] = rows
    backend.close()

    if not args.skip_replay:
        figures.update(replay(cache, args))

    if not args.skip_server:
        figures["server"] = bench_server(args.dataset, args.server_classes)

    print("\n| kind | classes | classes/min | tokens/s | valid 1st attempt | valid after retries |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['kind']} | {r['classes']} | {r['classes_per_min']} | {r['tokens_per_s']} | "
              f"{r['valid_first_attempt']:.0%} | {r['valid_after_retries']:.0%} |")
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2))



def replay(cache: Path, args) -> dict:
    """A fully cached rerun: the knowledge store deleted, every answer replayed from the response cache (failed
    classes too: all their attempts are cached), in-process (what the generator costs) and as a fresh CLI process."""
    import shutil

    from fsar.knowledge.backends.llamacpp import LlamaCppBackend
    from fsar.knowledge.generate import generate_knowledge

    shutil.rmtree(cache / "knowledge")
    t0 = time.perf_counter()
    backend = LlamaCppBackend(args.model, prompt_style=args.prompt_style)
    summaries = generate_knowledge(args.dataset, args.kinds, limit=args.limit, backend=backend)
    backend.close()
    out = {"cached_rerun_in_process_s": round(time.perf_counter() - t0, 3),
           "cached_rerun_llm_calls": sum(s.llm_calls for s in summaries),
           "cached_rerun_answers": sum(s.cache_hits for s in summaries)}
    shutil.rmtree(cache / "knowledge")
    cmd = [sys.executable, "-m", "fsar.cli.knowledge", "generate", "--dataset", args.dataset, "--kind", args.kinds]
    if args.model:
        cmd += ["--model", args.model]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    t0 = time.perf_counter()
    subprocess.run(cmd, capture_output=True, env=os.environ)
    out["cached_rerun_cli_s"] = round(time.perf_counter() - t0, 3)
    print(f"cached rerun (store deleted, {out['cached_rerun_answers']} answers from the cache): "
          f"{out['cached_rerun_in_process_s']} s in process, {out['cached_rerun_cli_s']} s as a new CLI process, "
          f"{out['cached_rerun_llm_calls']} LLM calls", flush=True)
    return out

def summarize(cache: Path, dataset: str, kinds: list[str]) -> None:
    """Figures of stored knowledge sets: validity, attempts, and generation speed from the rows' provenance."""
    os.environ["FSAR_CACHE"] = str(cache)
    from fsar.knowledge.store import load_knowledge

    print("| kind | classes | valid 1st attempt | valid after retries | tokens/s | generation s per class |")
    print("|---|---|---|---|---|---|")
    for kind in kinds:
        try:
            rows = list(load_knowledge(dataset, kind).rows)
        except FileNotFoundError:
            continue
        n = len(rows)
        first = sum(r["status"] == "ok" and r["provenance"]["attempts"] == 1 for r in rows)
        ok = sum(r["status"] == "ok" for r in rows)
        # generation time from the cached answers themselves (each records its own seconds and tokens)
        answers = [json.loads(p.read_text())["response"] for r in rows for k in r["provenance"]["cache_keys"]
                   for p in [cache / "llm" / "responses" / k[:2] / f"{k}.json"] if p.exists()]
        tokens = sum(a.get("completion_tokens") or 0 for a in answers)
        seconds = sum(a.get("seconds") or 0.0 for a in answers)
        failed = [r["class_name"] for r in rows if r["status"] != "ok"]
        print(f"| {kind} | {n} | {first / n:.0%} | {ok / n:.0%} | {tokens / seconds:.1f} | {seconds / n:.1f} |"
              + (f" failed: {', '.join(failed)}" if failed else ""))


def bench_server(dataset: str, n_classes: int) -> dict:
    """Time the openai backend with --concurrency 1 and 4 against python -m llama_cpp.server on 127.0.0.1."""
    import socket
    import urllib.request

    from fsar.knowledge.backends.llamacpp import default_model_path
    from fsar.knowledge.backends.openai_api import OpenAIBackend
    from fsar.knowledge.generate import GenerateOptions, generate_knowledge

    path, _ = default_model_path()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--host", "127.0.0.1", "--port", str(port),
         "--n_threads", str(os.cpu_count() or 1), "--n_ctx", "2048"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{url}/models", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        out = {}
        for conc, seed in ((1, 100), (4, 200)):  # different seeds: both runs really call the server
            be = OpenAIBackend(None, base_url=url, concurrency=conc)
            t0 = time.perf_counter()
            [s] = generate_knowledge(dataset, "dist", limit=n_classes, backend=be, options=GenerateOptions(seed=seed, max_attempts=1))
            out[f"concurrency_{conc}_s"] = round(time.perf_counter() - t0, 2)
            out[f"concurrency_{conc}_tokens"] = s.completion_tokens
            out["format"] = be._format
        out["speedup_4_over_1"] = round(
            (out["concurrency_4_tokens"] / out["concurrency_4_s"]) / (out["concurrency_1_tokens"] / out["concurrency_1_s"]), 2
        )
        print(f"openai backend vs local llama_cpp.server ({n_classes} classes, dist): {json.dumps(out)}", flush=True)
        return out
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
