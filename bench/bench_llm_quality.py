"""Two embedded LLMs side by side on the knowledge they generate for a data set (issue #16, item 3).

For each model and each kind (dist, lga, star) on the classes of ``--dataset``: valid on the first attempt, valid
within the generator's attempts, the knowledge report's median relevance, share of generic items,
discriminativeness (1 - cosine to the nearest other class's knowledge centroid, mean over valid classes) and the
class pairs too close to tell apart (``fsar.knowledge.report.build_report`` with its default ``Thresholds``), plus
completion tokens/s and the wall time of generation.

    python bench/bench_llm_quality.py                                   # hmdb51, both models, all three kinds
    python bench/bench_llm_quality.py --models gemma-3-270m --kinds dist --limit 3 --threads 1
    python bench/bench_llm_quality.py --cache-for qwen2.5-coder-1.5b=/work/qwencache --show 4
    python bench/bench_llm_quality.py --skip-generate                   # only re-score what the caches hold

Each model generates into its own cache folder (``<cache-root>/<model>``, or ``--cache-for MODEL=DIR``) through
``fsar-knowledge generate`` in a subprocess with ``FSAR_CACHE`` set to that folder, so the models never share a
knowledge store and a second invocation reuses everything: a kind is generated only while some selected class has
no row made with today's template and schema. Scoring copies the selected rows into ``<cache-root>/_scoring/<model>``
(so both models are scored on the same classes, and the generation caches are never written by the report) and
embeds them there with the packaged MiniLM, offline.

Speed: ``wall_s`` is the generation subprocess's wall time (Python start and model load included), summed over the
runs that generated this kind (a resumed run adds its own); ``tokens_per_s`` is the completion tokens of those runs
over their in-process generation time (``last_run.json``: requests decoded together, so this is throughput).
Both are logged in ``<model cache>/bench_llm_quality_runs.json``, so a re-scoring invocation still reports them.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the report embeds with the packaged MiniLM; never the Hub

DEFAULT_MODELS = ["gemma-3-270m", "qwen2.5-coder-1.5b"]
MAX_ATTEMPTS = 3  # fsar-knowledge generate's default --max-attempts: "valid after retries" means within these
RUN_LOG = "bench_llm_quality_runs.json"


def model_file_name(spec: str) -> str:
    """The GGUF file name a model spec loads (a packaged short name or a path), without resolving (no assembly)."""
    from fsar.knowledge.models import MODELS

    m = MODELS.get(spec.strip().lower())
    return m.filename if m else Path(spec).expanduser().name


def model_label(spec: str) -> str:
    """A short folder-safe name for a model: its short name, or the slug of a path's file name."""
    from fsar.knowledge.backends.base import model_slug
    from fsar.knowledge.models import MODELS

    return spec.strip().lower() if spec.strip().lower() in MODELS else model_slug(spec)


def parse_cache_for(items: list[str]) -> dict[str, Path]:
    """``MODEL=DIR`` pairs: a generation cache folder for a model (e.g. one that already holds its assembled GGUF)."""
    from fsar.core.errors import FsarError

    out = {}
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise FsarError(f"--cache-for takes MODEL=DIR, got '{item}'; e.g. --cache-for qwen2.5-coder-1.5b=/work/qwencache")
        out[name.strip().lower()] = Path(folder).expanduser().resolve()
    return out


def model_env(cache: Path, args) -> dict[str, str]:
    """The environment of one model's subprocess: its own FSAR_CACHE, the thread count, offline Hub."""
    env = dict(os.environ, FSAR_CACHE=str(cache), HF_HUB_OFFLINE="1")
    if args.threads:
        env["FSAR_LLM_THREADS"] = str(args.threads)
    if args.model_cache:
        env["FSAR_MODEL_CACHE"] = str(Path(args.model_cache).expanduser().resolve())
    return env


def read_rows(cache: Path, dataset: str, kind: str, slug: str) -> dict[str, dict]:
    """The stored rows of one model's knowledge set in its cache folder, by class key ({} when there is none)."""
    from fsar.knowledge.store import load_knowledge

    old = os.environ.get("FSAR_CACHE")
    os.environ["FSAR_CACHE"] = str(cache)
    try:
        return {r["class_key"]: r for r in load_knowledge(dataset, kind, slug).rows}
    except FileNotFoundError:
        return {}
    finally:
        if old is None:
            os.environ.pop("FSAR_CACHE", None)
        else:
            os.environ["FSAR_CACHE"] = old


def needs_generation(rows: dict[str, dict], classes, kind: str) -> list[str]:
    """Names of the selected classes without a row made with today's template and schema (failed rows count as
    made: re-running them would add attempts with new seeds and change what 'valid after retries' measures)."""
    from fsar.knowledge.generate import schema_hash, template_hash
    from fsar.knowledge.kinds import get_kind

    k = get_kind(kind)
    t_hash, s_hash = template_hash(k), schema_hash(k, {})
    todo = []
    for c in classes:
        p = (rows.get(c.key) or {}).get("provenance") or {}
        if p.get("template_hash") != t_hash or p.get("schema_hash") != s_hash:
            todo.append(c.name)
    return todo


def generate(spec: str, cache: Path, kind: str, args) -> dict:
    """Run ``fsar-knowledge generate`` for one model and kind in a subprocess; its wall time and last_run.json."""
    from fsar.core.errors import FsarError

    cmd = [sys.executable, "-m", "fsar.cli.knowledge", "generate", "--dataset", args.dataset, "--kind", kind, "--model", spec]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    print(f"[{model_label(spec)} · {kind}] FSAR_CACHE={cache} {shlex.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=model_env(cache, args))  # progress lines go straight to the terminal
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1):  # 1: some classes failed, which is what we measure
        raise FsarError(f"fsar-knowledge generate for {spec} / {kind} exited with status {proc.returncode}; see its output above")
    from fsar.knowledge.backends.base import model_slug

    last = cache / "knowledge" / args.dataset / kind / model_slug(model_file_name(spec)) / "last_run.json"
    summary = json.loads(last.read_text()) if last.is_file() else {}
    return {"kind": kind, "dataset": args.dataset, "limit": args.limit, "threads": args.threads, "wall_s": round(wall, 2),
            "exit_status": proc.returncode, "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - wall)),
            "last_run": summary}


def load_log(cache: Path) -> list[dict]:
    path = cache / RUN_LOG
    return json.loads(path.read_text()) if path.is_file() else []


def append_log(cache: Path, run: dict) -> None:
    from fsar.data.paths import atomic_write_text

    atomic_write_text(cache / RUN_LOG, json.dumps(load_log(cache) + [run], indent=2))


def speed(cache: Path, dataset: str, kind: str) -> dict:
    """Generation speed of one kind from the logged runs (None where this cache's knowledge was made elsewhere)."""
    runs = [r for r in load_log(cache) if r["dataset"] == dataset and r["kind"] == kind]
    tokens = sum(r["last_run"].get("completion_tokens", 0) for r in runs)
    gen_s = sum(r["last_run"].get("seconds", 0.0) for r in runs)
    calls = sum(r["last_run"].get("llm_calls", 0) for r in runs)
    made = sum(r["last_run"].get("classes", 0) - r["last_run"].get("kept", 0) for r in runs)
    return {
        "generation_runs": len(runs),
        "classes_generated": made,  # what the speed covers (may differ from the scored classes after a --limit change)
        "llm_calls": calls,
        "completion_tokens": tokens,
        "tokens_per_s": round(tokens / gen_s, 2) if gen_s and tokens else None,
        "wall_s": round(sum(r["wall_s"] for r in runs), 1) if runs else None,
    }


def score(label: str, gen_cache: Path, score_cache: Path, classes, kind: str, args) -> dict:
    """Validity from the stored rows and the knowledge report on the selected classes (scored in ``score_cache``)."""
    from fsar.knowledge.backends.base import model_slug
    from fsar.knowledge.errors import KnowledgeError
    from fsar.knowledge.report import Thresholds, build_report
    from fsar.knowledge.store import save_knowledge

    spec = args.spec_of[label]
    slug = model_slug(model_file_name(spec))
    rows = read_rows(gen_cache, args.dataset, kind, slug)
    chosen = [rows[c.key] for c in classes if c.key in rows]
    n = len(classes)
    ok = [r for r in chosen if r["status"] == "ok"]
    attempts = lambda r: int((r.get("provenance") or {}).get("attempts") or 0)  # noqa: E731
    ids = {(r.get("provenance") or {}).get("model_id") for r in chosen}
    out = {
        "model": label, "kind": kind, "classes": n, "stored": len(chosen),
        "missing": [c.name for c in classes if c.key not in rows],
        "valid_first_attempt": sum(attempts(r) == 1 for r in ok) / n,
        "valid_after_retries": sum(attempts(r) <= MAX_ATTEMPTS for r in ok) / n,
        # a class that failed all its attempts and was valid on a later run (new seeds): not counted above
        "valid_only_on_a_rerun": [r["class_name"] for r in ok if attempts(r) > MAX_ATTEMPTS],
        "failed": [r["class_name"] for r in chosen if r["status"] != "ok"],
        "model_ids": [json.loads(i) for i in sorted(i for i in ids if i)],
    }
    out.update(speed(gen_cache, args.dataset, kind))
    if not ok:
        out["report_error"] = "no valid class to score"
        return out
    os.environ["FSAR_CACHE"] = str(score_cache)
    try:
        save_knowledge(args.dataset, kind, slug, chosen)  # same rows, same fingerprint: the embeddings are reused
        th = Thresholds()  # our choice: the report's defaults, the same thresholds fsar-knowledge report uses
        rep = build_report(args.dataset, kind, slug, thresholds=th)
    except KnowledgeError as e:
        out["report_error"] = str(e)
        return out
    o = rep.data["overall"]
    names = {c["key"]: c["name"] for c in rep.data["classes"]}
    discr = [c["discriminativeness"] for c in rep.data["classes"] if c["discriminativeness"] is not None]
    out.update({
        "encoder": rep.data["encoder"],
        "thresholds": rep.data["thresholds"],
        "items": o["items"],
        "relevance_median": o["relevance_median"],
        "generic_share": o["generic"] / o["items"] if o["items"] else None,
        "discriminativeness_mean": sum(discr) / len(discr) if discr else None,
        "too_close_pairs": [{"a": names[p["a"]], "b": names[p["b"]], "sim": round(p["sim"], 3)} for p in o["too_close_pairs"]],
        "closest_pairs": [{"a": names[p["a"]], "b": names[p["b"]], "sim": round(p["sim"], 3)} for p in o["closest_pairs"]],
    })
    return out


def fmt_knowledge(k) -> str:
    """One knowledge answer as short readable lines (lists joined with ';', nested records with ' / ')."""
    if not isinstance(k, dict):
        return json.dumps(k, ensure_ascii=False)
    lines = []
    for field, v in k.items():
        if isinstance(v, list):
            v = "; ".join(" / ".join(str(x) for x in item.values()) if isinstance(item, dict) else str(item) for item in v)
        elif isinstance(v, dict):
            v = " / ".join(f"{a}: {b}" for a, b in v.items())
        lines.append(f"{field}: {v}")
    return "\n".join(lines)


def show(classes, kinds: list[str], labels: list[str], caches: dict[str, Path], args) -> None:
    """Print N classes' knowledge of every model, the same classes for each (spread over the selection)."""
    from fsar.knowledge.backends.base import model_slug

    n = min(args.show, len(classes))
    picks = [classes[round(i * (len(classes) - 1) / max(n - 1, 1))] for i in range(n)] if n else []
    for kind in kinds:
        rows = {m: read_rows(caches[m], args.dataset, kind, model_slug(model_file_name(args.spec_of[m]))) for m in labels}
        for c in picks:
            print(f"\n=== {kind} · {c.name}")
            for m in labels:
                r = rows[m].get(c.key)
                if r is None:
                    text = "(not generated)"
                elif r["status"] == "ok":
                    text = fmt_knowledge(r["knowledge"])
                else:
                    text = f"FAILED after {r['provenance']['attempts']} attempts: {r['errors'][-1] if r['errors'] else ''}"
                print(f"  [{m}]")
                for line in text.splitlines():
                    print(f"      {line}")


def pct(x) -> str:
    return "-" if x is None else f"{x:.0%}"


def num(x, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def markdown(results: list[dict]) -> str:
    """The side-by-side table, one row per model and kind."""
    head = ("| model | kind | classes | valid 1st attempt | valid after retries | median relevance | generic items | "
            "discriminativeness | too-close pairs | tokens/s | generation wall s |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in results:
        pairs = r.get("too_close_pairs") or []
        named = ", ".join(f"{p['a']} ~ {p['b']}" for p in pairs[:3]) + (", ..." if len(pairs) > 3 else "")
        lines.append(
            f"| {r['model']} | {r['kind']} | {r['classes']} | {pct(r['valid_first_attempt'])} | {pct(r['valid_after_retries'])} | "
            f"{num(r.get('relevance_median'))} | {pct(r.get('generic_share'))} | {num(r.get('discriminativeness_mean'), 3)} | "
            f"{len(pairs)}{f' ({named})' if named else ''} | {num(r.get('tokens_per_s'), 1)} | {num(r.get('wall_s'), 0)} |"
        )
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    """PNG: validity (first attempt, after retries) and median relevance, grouped by kind, one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    kinds = list(dict.fromkeys(r["kind"] for r in results))
    models = list(dict.fromkeys(r["model"] for r in results))
    by = {(r["model"], r["kind"]): r for r in results}
    x = np.arange(len(kinds))
    w = 0.8 / len(models)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    for i, m in enumerate(models):
        off = x - 0.4 + w * (i + 0.5)
        after = [by.get((m, k), {}).get("valid_after_retries") or 0 for k in kinds]
        first = [by.get((m, k), {}).get("valid_first_attempt") or 0 for k in kinds]
        bars = axes[0].bar(off, after, w, alpha=0.45, label=f"{m} after retries")
        axes[0].bar(off, first, w, color=bars.patches[0].get_facecolor()[:3], label=f"{m} 1st attempt")
        rel = [by.get((m, k), {}).get("relevance_median") or 0 for k in kinds]
        axes[1].bar(off, rel, w, label=m)
    for ax, title in ((axes[0], "valid classes (share)"), (axes[1], "median relevance: cos(item, class-name prompt)")):
        ax.set_xticks(x, kinds)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2)  # below: bars reach 1.0
    axes[0].set_ylim(0, 1.05)
    n = results[0]["classes"] if results else 0
    fig.suptitle(f"knowledge quality per model and kind · {n} classes", fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="packaged short names or GGUF paths")
    ap.add_argument("--kinds", nargs="+", default=["dist", "lga", "star"])
    ap.add_argument("--dataset", default="hmdb51")
    ap.add_argument("--limit", type=int, default=None, help="only the first N classes (default: all)")
    ap.add_argument("--threads", type=int, default=None, help="FSAR_LLM_THREADS of the generation subprocess (default: all cores)")
    ap.add_argument("--cache-root", default=None, help="folder of the per-model caches (default: <FSAR cache>/bench/llm_quality)")
    ap.add_argument("--cache-for", nargs="*", default=[], metavar="MODEL=DIR",
                    help="a model's own generation cache instead of <cache-root>/<model> (e.g. one that holds its assembled GGUF)")
    ap.add_argument("--model-cache", default=None, help="FSAR_MODEL_CACHE for the generation: where assembled packaged models are found")
    ap.add_argument("--skip-generate", action="store_true", help="only score what the caches hold")
    ap.add_argument("--show", type=int, default=0, metavar="N", help="print N classes' knowledge of each model, side by side")
    ap.add_argument("--out", default=None, help="folder for llm_quality.json/.md/.png (default: <cache-root>/results)")
    args = ap.parse_args()

    from fsar.data.paths import cache_root
    from fsar.knowledge.generate import resolve_classes

    root = Path(args.cache_root).expanduser().resolve() if args.cache_root else cache_root() / "bench" / "llm_quality"
    labels = [model_label(s) for s in args.models]
    args.spec_of = dict(zip(labels, args.models))
    cache_for = parse_cache_for(args.cache_for)
    caches = {m: cache_for.get(m) or cache_for.get(args.spec_of[m].lower()) or root / m for m in labels}
    _, classes = resolve_classes(args.dataset, None, "all", args.limit)
    print(f"{args.dataset}: {len(classes)} classes · kinds {', '.join(args.kinds)} · models "
          + ", ".join(f"{m} (cache {caches[m]})" for m in labels), flush=True)

    for m in labels:
        caches[m].mkdir(parents=True, exist_ok=True)
        for kind in args.kinds:
            from fsar.knowledge.backends.base import model_slug

            todo = needs_generation(read_rows(caches[m], args.dataset, kind, model_slug(model_file_name(args.spec_of[m]))), classes, kind)
            if not todo:
                print(f"[{m} · {kind}] all {len(classes)} classes stored: scoring only", flush=True)
                continue
            if args.skip_generate:
                print(f"[{m} · {kind}] {len(todo)} classes not generated (--skip-generate): scored as not valid", flush=True)
                continue
            append_log(caches[m], generate(args.spec_of[m], caches[m], kind, args))

    results = [score(m, caches[m], root / "_scoring" / m, classes, kind, args) for m in labels for kind in args.kinds]
    if args.show:
        show(classes, args.kinds, labels, caches, args)

    table = markdown(results)
    print("\n" + table)
    for r in results:
        if r.get("report_error"):
            print(f"{r['model']} · {r['kind']}: {r['report_error']}")
        if r["failed"]:
            print(f"{r['model']} · {r['kind']} failed: {', '.join(r['failed'])}")
    out = Path(args.out).expanduser() if args.out else root / "results"
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "cwd": os.getcwd(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "dataset": args.dataset, "classes": len(classes), "limit": args.limit, "threads": args.threads,
        "cpu_count": os.cpu_count(), "max_attempts": MAX_ATTEMPTS,
        # the file name and hash of every model, as the generator recorded them in each row's provenance
        "models": {m: {"spec": args.spec_of[m], "file": model_file_name(args.spec_of[m]), "cache": str(caches[m]),
                       "identities": [json.loads(i) for i in sorted({json.dumps(i, sort_keys=True) for r in results if r["model"] == m for i in r["model_ids"]})]}
                   for m in labels},
    }
    (out / "llm_quality.json").write_text(json.dumps({**meta, "results": results}, indent=2, ensure_ascii=False))
    (out / "llm_quality.md").write_text(f"`{meta['command']}`\n\n{table}\n")
    plot(results, out / "llm_quality.png")
    print(f"\nwritten: {out / 'llm_quality.json'}, llm_quality.md, llm_quality.png")


if __name__ == "__main__":
    main()
