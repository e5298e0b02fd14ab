"""What the knowledge is worth: DiST and its ablations against the prototype and OTAM baselines (synthetic benchmark).

Every row is trained with the trainer's public API (``TrainConfig`` + ``Trainer``) on the train classes, selected
on the val classes and tested once on the test classes: 5-way, 1-shot and 5-shot, the same seeds for every row
(init, training episodes, test episodes), tiny backbone trained from scratch on 64 px clips.

Rows: DiST with LLM attributes (``dist`` knowledge of the embedded LLM), with class names only, with no text
(learned queries alone), without SKC, without TKC, and the prototype and OTAM baselines. Prints a markdown table of
test accuracy ± 95% CI, writes bench_dist.json and bench_dist.png into --out. Results are merged into an existing
bench_dist.json in --out, so rows can be run (or re-run) separately, e.g. the ``llm`` rows once the knowledge exists.

    python bench/bench_dist.py                                   # full run: 7 rows x 2 shots, 10,000 test episodes
    python bench/bench_dist.py --rows name none --shots 1 --episodes 100 --test-episodes 1000   # a quick look
    python bench/bench_dist.py --rows llm --shots 5 --out A & python bench/bench_dist.py --rows name --shots 5 --out B
    python bench/bench_dist.py --merge A B                      # two cores: rows in parallel, then one table

Rows that need ``dist`` knowledge which is not there yet are skipped with the command that makes it
(``fsar-knowledge generate --dataset synthetic --kind dist``), unless ``--create-text`` is given.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fsar.model.results import read_jsonl
from fsar.model.trainer import Trainer, TrainConfig

# name -> (table label, method, head options)
ROWS: dict[str, tuple[str, str, dict]] = {
    "llm": ("DiST, LLM attributes", "dist", {"knowledge": "llm"}),
    "name": ("DiST, class names only", "dist", {"knowledge": "name"}),
    "none": ("DiST, no text", "dist", {"knowledge": "none"}),
    "no_skc": ("DiST (LLM) without SKC", "dist", {"skc": False}),
    "no_tkc": ("DiST (LLM) without TKC", "dist", {"tkc": False}),
    "prototype": ("prototype", "prototype", {}),
    "otam": ("OTAM", "otam", {}),
}


def row_spec(row: str, args) -> tuple[str, str, dict]:
    """(label, method, options) of a row; --ablation-knowledge sets the text of the SKC / TKC ablation rows."""
    label, method, opts = ROWS[row]
    if row in ("no_skc", "no_tkc") and args.ablation_knowledge != "llm":
        opts = {**opts, "knowledge": args.ablation_knowledge}
        label = label.replace("(LLM)", f"({args.ablation_knowledge})")
    return label, method, opts


def config(row: str, shot: int, args, out: Path) -> TrainConfig:
    _, method, opts = row_spec(row, args)
    return TrainConfig(method=method, opts=dict(opts), shot=shot, query=args.query, episodes=args.episodes,
                       batch=args.batch, size=args.size, lr=args.lr, val_every=args.val_every or args.episodes,
                       val_episodes=args.val_episodes, test_episodes=args.test_episodes, seed=args.seed,
                       out=str(out / f"{row}-{shot}shot"), progress=not args.no_progress, log_every=5,
                       create_text=args.create_text)


def run_row(row: str, shot: int, args, out: Path) -> dict:
    cfg = config(row, shot, args, out)
    run_dir = Path(cfg.out)
    if run_dir.exists():  # a re-run of this row replaces the old one
        import shutil

        shutil.rmtree(run_dir)
    start = time.perf_counter()
    trainer = Trainer(cfg)
    result = trainer.run()
    total = time.perf_counter() - start
    train_rows = [r for r in read_jsonl(trainer.log_path) if r["kind"] == "train"]
    return {"row": row, "label": row_spec(row, args)[0], "method": cfg.method, "opts": cfg.opts, "shot": shot,
            "accuracy": result["accuracy"], "ci95": result["ci95"], "test_episodes": result["episodes"],
            "best_val": result["best_val"], "train_episodes": cfg.episodes,
            "train_eps_per_s": train_rows[-1]["episodes_per_s"], "eval_seconds": result["eval_seconds"],
            "seconds": total, "knowledge": result["knowledge"], "run_dir": str(trainer.out)}


def needs_missing_knowledge(row: str, args) -> str | None:
    """The one-line reason a row cannot run yet (its text is missing), or None."""
    from fsar.model.registry import get_method

    _, method, opts = row_spec(row, args)
    need = get_method(method).text_need(opts)
    if need in (None, "names"):
        return None
    from fsar.knowledge.contract import load_text_embeddings

    try:
        load_text_embeddings("synthetic", need, split="all")
    except (FileNotFoundError, ValueError) as e:
        return str(e).splitlines()[0]
    return None


def plot(runs: list[dict], path: Path, shots: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in ROWS if any(x["row"] == r for x in runs)]
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / len(shots)
    for j, shot in enumerate(shots):
        vals = [next((x for x in runs if x["row"] == r and x["shot"] == shot), None) for r in rows]
        xs = [i + (j - (len(shots) - 1) / 2) * width for i in range(len(rows))]
        ax.bar(xs, [v["accuracy"] if v else 0 for v in vals], width, yerr=[v["ci95"] if v else 0 for v in vals],
               capsize=3, label=f"{shot}-shot")
    ax.axhline(20.0, color="gray", ls="--", lw=1, label="chance (5-way)")
    labels = [next(x["label"] for x in runs if x["row"] == r) for r in rows]
    ax.set_xticks(range(len(rows)), [lab.replace(", ", ",\n").replace(" without", "\nwithout") for lab in labels], fontsize=8)
    ax.set_ylabel("test accuracy (%) ± 95% CI")
    ax.set_title("DiST ablations on the synthetic benchmark (5-way, tiny backbone)")
    ax.legend(), ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def table(runs: list[dict], shots: list[int]) -> str:
    lines = ["| model | " + " | ".join(f"{k}-shot test acc. (%)" for k in shots) + " | knowledge |",
             "|---|" + "---|" * len(shots) + "---|"]
    for row in ROWS:
        label = next((x["label"] for x in runs if x["row"] == row), ROWS[row][0])
        cells = []
        for shot in shots:
            r = next((x for x in runs if x["row"] == row and x["shot"] == shot), None)
            cells.append(f"{r['accuracy']:.2f} ± {r['ci95']:.2f}" if r else "not run")
        k = next((x["knowledge"] for x in runs if x["row"] == row and x.get("knowledge")), None)
        know = f"{k['info'].get('knowledge_model', k['info'].get('kind'))} ({k['fingerprint'][:12]})" if k else "-"
        if all(c == "not run" for c in cells):
            continue
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {know} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--shots", nargs="+", type=int, default=[1, 5])
    p.add_argument("--episodes", type=int, default=300, help="training episodes per run")
    p.add_argument("--batch", type=int, default=2, help="episodes per optimizer step")
    p.add_argument("--query", type=int, default=2, help="training queries per class")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--size", type=int, default=64, help="input size (the synthetic videos are 64 px)")
    p.add_argument("--val-every", type=int, default=None, help="default: once, at the end")
    p.add_argument("--val-episodes", type=int, default=300)
    p.add_argument("--test-episodes", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on 2 shared cores)")
    p.add_argument("--ablation-knowledge", default="llm", choices=["llm", "name", "none"],
                   help="text of the without-SKC / without-TKC rows (default llm, as in the paper's ablation)")
    p.add_argument("--create-text", action="store_true", help="generate missing dist knowledge with the embedded LLM (slow)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--merge", type=Path, nargs="+", default=[], help="only merge the rows of these --out folders "
                   "(parallel invocations) into --out, then print the table and plot")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from fsar.data.paths import cache_root

    out = args.out or cache_root() / "bench" / "dist"
    out.mkdir(parents=True, exist_ok=True)
    path = out / "bench_dist.json"
    report = json.loads(path.read_text()) if path.exists() else {"runs": [], "skipped": []}
    report.setdefault("invocations", []).append(json.loads(json.dumps(vars(args), default=str)))
    for other in args.merge:  # rows run by parallel invocations into their own --out folders
        theirs = json.loads((other / "bench_dist.json").read_text())
        keys = {(x["row"], x["shot"]) for x in theirs["runs"]}
        report["runs"] = [x for x in report["runs"] if (x["row"], x["shot"]) not in keys] + theirs["runs"]
        report["invocations"] += theirs.get("invocations", [])
        print(f"[merge] {len(keys)} rows from {other}", flush=True)
    if args.merge:
        args.rows = []
    for shot in args.shots:
        for row in args.rows:
            reason = None if args.create_text else needs_missing_knowledge(row, args)
            if reason:
                print(f"[skip] {ROWS[row][0]} {shot}-shot: {reason}", flush=True)
                report["skipped"] = [s for s in report["skipped"] if (s["row"], s["shot"]) != (row, shot)]
                report["skipped"].append({"row": row, "shot": shot, "reason": reason})
                continue
            r = run_row(row, shot, args, out)
            r["settings"] = {k: getattr(args, k) for k in ("episodes", "batch", "query", "lr", "size", "val_episodes", "seed")}
            report["runs"] = [x for x in report["runs"] if (x["row"], x["shot"]) != (row, shot)] + [r]
            report["skipped"] = [s for s in report["skipped"] if (s["row"], s["shot"]) != (row, shot)]
            print(f"[run] {r['label']:26s} {shot}-shot: test {r['accuracy']:.2f} ± {r['ci95']:.2f} "
                  f"({r['test_episodes']} episodes), {r['train_eps_per_s']:.2f} train episodes/s, "
                  f"eval {r['eval_seconds']:.0f} s, total {r['seconds']:.0f} s", flush=True)
            from fsar.data.paths import atomic_write_text

            atomic_write_text(path, json.dumps(report, indent=2))
    if args.merge:
        from fsar.data.paths import atomic_write_text

        atomic_write_text(path, json.dumps(report, indent=2))
    shots = sorted({r["shot"] for r in report["runs"]}) or args.shots
    print(f"\n5-way test accuracy on the synthetic benchmark, 1 query per class, seed {args.seed}; tiny backbone "
          f"({args.size} px, trained from scratch), {args.episodes} training episodes of {args.batch} x 5-way with "
          f"{args.query} queries per class\n")
    print(table(report["runs"], shots))
    if report["runs"]:
        plot(report["runs"], out / "bench_dist.png", shots)
    print(f"\nwrote {path}" + (f" and {out / 'bench_dist.png'}" if report["runs"] else ""))


if __name__ == "__main__":
    main()
