"""What each method is worth: every baseline and DiST on the synthetic benchmark, several training seeds, paired.

For each (method, shot, seed) it trains with the trainer's defaults for the chosen backbone (frozen pretrained
features, the frame adapter, the classification loss), keeps the best checkpoint on the val classes, and tests on
10,000 seeded 5-way test episodes. Test episodes depend only on the seed, so every method of one seed is scored
on identical episodes, and the script reports, beside each row's mean over seeds, the spread across seeds and the
mean episode interval:
- the **paired difference** to the prototype baseline: per-episode accuracy differences on the same episodes,
  pooled over the seeds, with a 95% interval (1.96 std / sqrt(n));
- the accuracy on 2-way episodes of one test class and its exact time reversal (chance 50%);
- the wall time of each run and its training curve (``curves.png`` in each run folder, and one plot of all the
  validation curves).
Rows are written to ``bench_methods.json`` as they finish, so an interrupted run keeps what it did; ``--merge``
joins the JSON files of several invocations into one table and plot.

    python bench/bench_methods.py --out cache/bench/methods                      # everything (long)
    python bench/bench_methods.py --methods prototype otam --shots 1 --seeds 0 --episodes 300 --test-episodes 1000
    python bench/bench_methods.py --merge cache/bench/a cache/bench/b --out cache/bench/methods
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import pair_accuracy  # noqa: E402  (same folder)

from fsar.model.results import read_jsonl  # noqa: E402
from fsar.model.trainer import Trainer, TrainConfig  # noqa: E402

BASELINES = ["prototype", "otam", "bimhm", "trx", "clipfsar"]
DIST = ["dist:llm", "dist:name", "dist:none"]


def parse_variant(variant: str) -> tuple[str, dict]:
    """'dist:name' -> ('dist', {'knowledge': 'name'}); 'otam' -> ('otam', {}); 'method:key=value,...' too."""
    if ":" not in variant:
        return variant, {}
    method, rest = variant.split(":", 1)
    opts: dict = {}
    for part in rest.split(","):
        if "=" in part:
            k, v = part.split("=", 1)
            try:
                opts[k] = json.loads(v)
            except json.JSONDecodeError:
                opts[k] = v
        else:
            opts["knowledge"] = part
    return method, opts


def run_one(variant: str, shot: int, seed: int, args, out: Path) -> dict:
    method, opts = parse_variant(variant)
    run_dir = out / "runs" / f"{variant.replace(':', '-').replace(',', '-').replace('=', '')}-{shot}shot-seed{seed}"
    cfg = TrainConfig(method=method, shot=shot, seed=seed, episodes=args.episodes, backbone=args.backbone,
                      lr=args.lr, batch=args.batch, val_every=args.val_every, val_episodes=args.val_episodes,
                      test_episodes=args.test_episodes, opts=opts, out=str(run_dir), progress=not args.no_progress,
                      resume=(run_dir / "last.pt").exists())
    start = time.perf_counter()
    trainer = Trainer(cfg)
    result = trainer.run()
    pair_mean, pair_ci, _ = pair_accuracy(trainer, trainer.records["test"], shot, args.pair_episodes)
    rows = list(read_jsonl(trainer.log_path))
    train_rows = [r for r in rows if r["kind"] == "train"]
    return {
        "variant": variant, "method": method, "opts": opts, "shot": shot, "seed": seed,
        "accuracy": result["accuracy"], "ci95": result["ci95"], "test_episodes": result["episodes"],
        "best_val": result["best_val"], "reversed_pair_accuracy": pair_mean, "reversed_pair_ci95": pair_ci,
        "first_loss": train_rows[0]["loss"], "last_loss": train_rows[-1]["loss"],
        "val_curve": [(r["episode"], r["acc"]) for r in rows if r["kind"] == "val"],
        "train_eps_per_s": train_rows[-1]["episodes_per_s"], "seconds": time.perf_counter() - start,
        "run_dir": str(run_dir), "accuracies_path": result["episode_accuracies"],
        "knowledge": (result.get("knowledge") or {}).get("fingerprint"),
        "backbone": result["backbone"], "data_fingerprints": result["data_fingerprints"],
    }


def mean_ci(x: torch.Tensor) -> tuple[float, float]:
    x = x.double()
    return float(x.mean() * 100), float(1.96 * x.std(unbiased=False) / math.sqrt(len(x)) * 100)


def summarize(rows: list[dict], baseline: str = "prototype") -> list[dict]:
    """One line per (variant, shot): mean over seeds, spread across seeds, paired difference to the baseline."""
    out = []
    keys = sorted({(r["variant"], r["shot"]) for r in rows}, key=lambda k: (k[1], k[0]))
    for variant, shot in keys:
        mine = sorted((r for r in rows if r["variant"] == variant and r["shot"] == shot), key=lambda r: r["seed"])
        accs = torch.tensor([r["accuracy"] for r in mine], dtype=torch.float64)
        line = {"variant": variant, "shot": shot, "seeds": [r["seed"] for r in mine],
                "accuracy": float(accs.mean()), "seed_std": float(accs.std(unbiased=False)) if len(accs) > 1 else 0.0,
                "episode_ci95": sum(r["ci95"] for r in mine) / len(mine),
                "reversed_pairs": sum(r["reversed_pair_accuracy"] for r in mine) / len(mine),
                "seconds": sum(r["seconds"] for r in mine) / len(mine),
                "last_loss": sum(r["last_loss"] for r in mine) / len(mine),
                "knowledge": mine[0].get("knowledge")}
        diffs = []
        for r in mine:
            base = next((b for b in rows if b["variant"] == baseline and b["shot"] == shot and b["seed"] == r["seed"]), None)
            if base is None or variant == baseline:
                continue
            a = torch.load(r["accuracies_path"]).double()
            b = torch.load(base["accuracies_path"]).double()
            if len(a) == len(b):
                diffs.append(a - b)
        if diffs:
            line["paired_diff"], line["paired_ci95"] = mean_ci(torch.cat(diffs))
            line["paired_seeds"] = len(diffs)
        out.append(line)
    return out


def table(lines: list[dict], args) -> str:
    head = ("| method | shot | seeds | test acc. % (mean of seeds) | spread across seeds (std) | episode 95% CI | "
            f"paired diff. to {args.baseline} (95% CI) | reversed pairs % | final train loss | wall s per run |")
    rows = [head, "|" + "---|" * 10]
    for ln in lines:
        diff = f"{ln['paired_diff']:+.2f} ± {ln['paired_ci95']:.2f}" if "paired_diff" in ln else "-"
        rows.append(f"| {ln['variant']} | {ln['shot']} | {len(ln['seeds'])} | {ln['accuracy']:.2f} | {ln['seed_std']:.2f} | "
                    f"± {ln['episode_ci95']:.2f} | {diff} | {ln['reversed_pairs']:.2f} | {ln['last_loss']:.3f} | "
                    f"{ln['seconds']:.0f} |")
    return "\n".join(rows)


def plot(rows: list[dict], lines: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shots = sorted({ln["shot"] for ln in lines})
    variants = list(dict.fromkeys(ln["variant"] for ln in lines))
    fig, axes = plt.subplots(1, 2 + len(shots), figsize=(6 * (2 + len(shots)), 4.5))
    width = 0.8 / len(shots)
    for j, shot in enumerate(shots):
        xs = [i + (j - (len(shots) - 1) / 2) * width for i in range(len(variants))]
        vals = [next((ln for ln in lines if ln["variant"] == v and ln["shot"] == shot), None) for v in variants]
        axes[0].bar(xs, [v["accuracy"] if v else 0 for v in vals], width,
                    yerr=[v["seed_std"] if v else 0 for v in vals], capsize=3, label=f"{shot}-shot")
        axes[1].bar(xs, [v["reversed_pairs"] if v else 0 for v in vals], width, label=f"{shot}-shot")
    for ax, title, chance in ((axes[0], "5-way test accuracy (bars: mean of seeds, whiskers: seed std)", 20),
                              (axes[1], "2-way reversed-pair episodes", 50)):
        ax.axhline(chance, color="gray", ls="--", lw=1)
        ax.set_xticks(range(len(variants)), variants, rotation=30, ha="right")
        ax.set_ylabel("accuracy (%)"), ax.set_title(title, fontsize=9), ax.legend(), ax.grid(axis="y", alpha=0.3)
    for ax, shot in zip(axes[2:], shots):
        for v in variants:
            for r in rows:
                if r["variant"] == v and r["shot"] == shot and r["seed"] == min(x["seed"] for x in rows):
                    ep, acc = zip(*r["val_curve"]) if r["val_curve"] else ((), ())
                    ax.plot(ep, acc, marker="o", ms=3, label=v)
        ax.axhline(20, color="gray", ls="--", lw=1)
        ax.set_title(f"validation accuracy while training ({shot}-shot, first seed)", fontsize=9)
        ax.set_xlabel("training episode"), ax.set_ylabel("val accuracy (%)"), ax.legend(fontsize=7), ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=BASELINES + DIST, help="methods, or method:knowledge / method:k=v")
    p.add_argument("--shots", nargs="+", type=int, default=[1, 5])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--backbone", default=None, help="default: the trainer's default")
    p.add_argument("--episodes", type=int, default=None, help="training episodes (default: the trainer's)")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--val-every", type=int, default=None)
    p.add_argument("--val-episodes", type=int, default=None)
    p.add_argument("--test-episodes", type=int, default=10000)
    p.add_argument("--pair-episodes", type=int, default=200, help="2-way episodes per reversed pair")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--merge", nargs="+", type=Path, default=None, help="join the bench_methods.json of these folders")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--baseline", default="prototype", help="row the paired differences are taken to (e.g. star for its ablations)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args()
    defaults = TrainConfig()
    for key in ("backbone", "episodes", "lr", "batch", "val_every", "val_episodes"):
        if getattr(args, key) is None:
            setattr(args, key, getattr(defaults, key))
    if args.threads:
        torch.set_num_threads(args.threads)
    from fsar.data.paths import cache_root

    if args.merge:
        missing = [str(f) for f in args.merge if not (f / "bench_methods.json").exists()]
        if missing:
            sys.exit(f"error: no bench_methods.json in {', '.join(missing)}: run those benchmarks first or leave them out")
    out = args.out or cache_root() / "bench" / "methods"
    out.mkdir(parents=True, exist_ok=True)
    path = out / "bench_methods.json"
    if args.merge:
        rows = [r for folder in args.merge for r in json.loads((folder / "bench_methods.json").read_text())["runs"]]
        report = {"merged_from": [str(f) for f in args.merge]}
    else:
        report = json.loads(path.read_text()) if path.exists() else {}
        report["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        report["command"] = " ".join(sys.argv)
        rows = report.get("runs", [])
        for shot in args.shots:
            for seed in args.seeds:
                for variant in args.methods:
                    if any(r["variant"] == variant and r["shot"] == shot and r["seed"] == seed for r in rows):
                        continue  # done by an earlier, interrupted invocation
                    r = run_one(variant, shot, seed, args, out)
                    rows.append(r)
                    print(f"[run] {variant:10s} {shot}-shot seed {seed}: test {r['accuracy']:.2f} ± {r['ci95']:.2f}, "
                          f"reversed pairs {r['reversed_pair_accuracy']:.2f}, best val {r['best_val']['acc']:.1f}, "
                          f"loss {r['first_loss']:.2f} -> {r['last_loss']:.2f}, {r['seconds']:.0f} s", flush=True)
                    report["runs"] = rows
                    path.write_text(json.dumps(report, indent=2))
    lines = summarize(rows, args.baseline)
    report["runs"], report["summary"] = rows, lines
    path.write_text(json.dumps(report, indent=2))
    print()
    print(table(lines, args))
    plot(rows, lines, out / "bench_methods.png")
    print(f"\nwrote {path} and {out / 'bench_methods.png'}")


if __name__ == "__main__":
    main()
