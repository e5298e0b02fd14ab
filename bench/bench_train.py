"""Benchmark of the trainer and evaluator on the synthetic benchmark (CPU, tiny backbone).

Prints:
1. the evaluation speed-up of cached features over per-episode recompute on 10,000 test episodes (the per-episode
   path is timed on a subset and extrapolated linearly; its accuracies are checked equal on that subset);
2. training episodes per second for each baseline;
3. a table of 5-way 1-shot and 5-shot test accuracy ± 95% CI (10,000 episodes) for every baseline, plus the accuracy
   on 2-way episodes made of one reversed pair of test classes (e.g. left-to-right vs right-to-left with the same
   object), where a method blind to frame order sits at 50%;
4. the same two accuracies with "oracle" frame features (pooled masks of the acting object, untrained heads), which
   show what each metric does with frame order when the features carry the action.
Writes bench_train.json and bench_train.png into --out.

    python bench/bench_train.py                       # full run (about 20 minutes on 2 cores)
    python bench/bench_train.py --episodes 60 --test-episodes 500 --shots 1   # a quick look
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fsar.data.loaders import list_videos
from fsar.model.backbones import build_backbone
from fsar.model.evaluator import evaluate_cached, evaluate_per_episode, run_episodes, sample_episodes
from fsar.model.features import ClipLoader, cached_features, extract_features
from fsar.model.fewshot import FewShotModel
from fsar.model.registry import build_method
from fsar.model.results import read_jsonl, summarize
from fsar.model.trainer import Trainer, TrainConfig, features_dir

METHODS = ["prototype", "otam", "bimhm", "trx", "clipfsar"]


def speedup(records, episodes: int, reference: int, size: int) -> dict:
    """Cached evaluation of all episodes vs per-episode recompute (decode + backbone) timed on ``reference`` ones."""
    torch.manual_seed(0)
    model = FewShotModel(build_backbone("tiny", tune="full"), build_method("otam", 128, 8)).eval()
    kw = dict(way=5, shot=1, seed=0, num_frames=8, size=size)
    fast = evaluate_cached(model, records, episodes=episodes, frame_cache=False, **kw)  # decodes each video once
    slow = evaluate_per_episode(model, records, episodes=reference, **kw)
    same = torch.equal(fast.accuracies[:reference], slow.accuracies)
    per_episode_total = slow.seconds / reference * episodes
    return {"episodes": episodes, "cached_s": fast.seconds, "per_episode_s_measured": slow.seconds,
            "per_episode_reference_episodes": reference, "per_episode_s_extrapolated": per_episode_total,
            "speedup": per_episode_total / fast.seconds, "identical_on_reference": same, "videos": len(records)}


def pair_accuracy(trainer: Trainer, records, shot: int, episodes_per_pair: int) -> tuple[float, float, int]:
    """2-way episodes of one reversed pair of test classes at a time: mean accuracy and 95% CI over all of them."""
    from fsar.data.synthetic import reversed_pairs

    model = trainer.model
    loader = ClipLoader(records, trainer.cfg.frames, trainer.cfg.size, model.backbone.norm, frame_cache=True)
    # a frozen backbone's test features come from the cache that the test itself filled
    feats, kept = cached_features(model, loader, features_dir() if model.backbone.frozen else None, device=trainer.device)
    kept_records = [records[i] for i in kept]
    keys = {r.class_key for r in kept_records}
    accs = []
    for a, b in reversed_pairs():
        if a not in keys or b not in keys:
            continue
        idx = [i for i, r in enumerate(kept_records) if r.class_key in (a, b)]
        sub = [kept_records[i] for i in idx]
        eps = sample_episodes([r.label for r in sub], 2, shot, 1, seed=0, num_episodes=episodes_per_pair)
        accs.append(run_episodes(model, feats[idx], eps, trainer.bank, sub, 256, trainer.device))
    acc = torch.cat(accs)
    mean, ci = summarize(acc)
    return mean, ci, len(accs)


def mask_diagnostic(records, shot: int, episodes_per_pair: int, test_episodes: int) -> dict:
    """Each method's matching on "oracle" frame features that see only the acting object: the 8 x 8 average-pooled
    mask of the object and hand in each test frame (no training; TRX and Bi-MHM with their random initial weights).

    Separates what the metric can do from what the backbone has learned: on these features order-aware metrics
    must tell reversed pairs apart and the order-blind prototype cannot.
    """
    import torch.nn.functional as F

    from fsar.data.synthetic import load_masks, reversed_pairs
    from fsar.data.video import segment_indices

    feats = []
    for r in records:
        m = torch.from_numpy(load_masks(r))  # [F, S, S]
        m = m[segment_indices(len(m), 8)]
        acting = ((m == 1) | (m == 2)).float()[:, None]  # object and hand
        feats.append(F.adaptive_avg_pool2d(acting, 8).flatten(1) + 0.01)  # [8, 64]; +0.01 keeps empty frames valid
    feats = torch.stack(feats)
    out = {}
    for method in METHODS[:4]:
        torch.manual_seed(0)
        model = FewShotModel(build_backbone("tiny"), build_method(method, 64, 8)).eval()
        eps = sample_episodes([r.label for r in records], 5, shot, 1, seed=0, num_episodes=test_episodes)
        five = run_episodes(model, feats, eps, batch=256)
        accs = []
        keys = {r.class_key for r in records}
        for a, b in reversed_pairs():
            if a in keys and b in keys:
                idx = [i for i, r in enumerate(records) if r.class_key in (a, b)]
                sub = [records[i] for i in idx]
                pe = sample_episodes([r.label for r in sub], 2, shot, 1, seed=0, num_episodes=episodes_per_pair)
                accs.append(run_episodes(model, feats[idx], pe, batch=256))
        out[method] = {"five_way": summarize(five), "reversed_pairs": summarize(torch.cat(accs))}
    return out


def train_one(method: str, shot: int, args, out: Path) -> dict:
    cfg = TrainConfig(method=method, shot=shot, query=args.query, episodes=args.episodes, batch=args.batch, tune=args.tune,
                      size=args.size,
                      lr=args.lr, val_every=args.episodes, val_episodes=args.val_episodes,
                      test_episodes=args.test_episodes, seed=args.seed, out=str(out / f"{method}-{shot}shot"),
                      progress=not args.no_progress, log_every=5)
    trainer = Trainer(cfg)
    start = time.perf_counter()
    result = trainer.run()
    total = time.perf_counter() - start
    rows = [r for r in read_jsonl(trainer.log_path) if r["kind"] == "train"]
    test_records = trainer.records["test"]
    pair_mean, pair_ci, pairs = pair_accuracy(trainer, test_records, shot, args.pair_episodes)
    return {"method": method, "shot": shot, "train_episodes": args.episodes, "train_eps_per_s": rows[-1]["episodes_per_s"],
            "accuracy": result["accuracy"], "ci95": result["ci95"], "test_episodes": result["episodes"],
            "best_val": result["best_val"], "reversed_pair_accuracy": pair_mean, "reversed_pair_ci95": pair_ci,
            "reversed_pairs": pairs, "seconds": total, "run_dir": str(trainer.out)}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shots = sorted({r["shot"] for r in rows})
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    width = 0.8 / len(shots)
    for ax, (key, ci_key, title, chance) in zip(axes, [
        ("accuracy", "ci95", "5-way test accuracy (10,000 episodes)", 20.0),
        ("reversed_pair_accuracy", "reversed_pair_ci95", "2-way reversed-pair test episodes", 50.0),
    ]):
        for j, shot in enumerate(shots):
            vals = [next((r for r in rows if r["method"] == m and r["shot"] == shot), None) for m in methods]
            xs = [i + (j - (len(shots) - 1) / 2) * width for i in range(len(methods))]
            ax.bar(xs, [v[key] if v else 0 for v in vals], width, yerr=[v[ci_key] if v else 0 for v in vals],
                   capsize=3, label=f"{shot}-shot")
        ax.axhline(chance, color="gray", ls="--", lw=1, label="chance")
        ax.set_xticks(range(len(methods)), methods)
        ax.set_ylabel("accuracy (%)"), ax.set_title(title), ax.legend(), ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=600, help="training episodes per run")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--query", type=int, default=2, help="training queries per class")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--tune", default="full", help="tiny backbone: full (trained from scratch) or frozen (random features)")
    p.add_argument("--size", type=int, default=64, help="input size (the synthetic videos are 64 px)")
    p.add_argument("--val-episodes", type=int, default=500)
    p.add_argument("--test-episodes", type=int, default=10000)
    p.add_argument("--pair-episodes", type=int, default=200, help="2-way episodes per reversed pair")
    p.add_argument("--reference", type=int, default=100, help="episodes timed on the per-episode path")
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--shots", nargs="+", type=int, default=[1, 5])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on 2 shared cores, 2 OpenMP threads ran 5x slower than 1)")
    p.add_argument("--skip-speedup", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from fsar.data.paths import cache_root

    out = args.out or cache_root() / "bench" / "train"
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "threads": torch.get_num_threads()}
    records = list_videos("synthetic", None, "test")
    if not args.skip_speedup:
        s = speedup(records, args.test_episodes, args.reference, 64)
        report["speedup"] = s
        print(f"\n[eval] {s['episodes']} test episodes over {s['videos']} videos: cached {s['cached_s']:.1f} s, "
              f"per-episode recompute {s['per_episode_s_extrapolated']:.0f} s (measured {s['per_episode_s_measured']:.1f} s "
              f"on {s['per_episode_reference_episodes']} episodes) -> speed-up {s['speedup']:.0f}x; "
              f"accuracies identical on those episodes: {s['identical_on_reference']}", flush=True)
    for shot in args.shots:
        d = mask_diagnostic(records, shot, args.pair_episodes, args.test_episodes)
        report.setdefault("mask_diagnostic", {})[shot] = d
        print(f"[oracle mask features, {shot}-shot, untrained heads] " + "; ".join(
            f"{m}: 5-way {v['five_way'][0]:.1f} ± {v['five_way'][1]:.1f}, reversed pairs {v['reversed_pairs'][0]:.1f} ± "
            f"{v['reversed_pairs'][1]:.1f}" for m, v in d.items()), flush=True)
    rows = []
    for shot in args.shots:
        for method in args.methods:
            r = train_one(method, shot, args, out)
            rows.append(r)
            print(f"[train] {method:9s} {shot}-shot: {r['train_eps_per_s']:.2f} episodes/s, test "
                  f"{r['accuracy']:.2f} ± {r['ci95']:.2f}, reversed pairs {r['reversed_pair_accuracy']:.2f} ± "
                  f"{r['reversed_pair_ci95']:.2f} ({r['seconds']:.0f} s)", flush=True)
            report["runs"] = rows
            (out / "bench_train.json").write_text(json.dumps(report, indent=2))
    print(f"\n5-way test accuracy (%) ± 95% CI, {args.test_episodes} episodes, tiny backbone, {args.episodes} training "
          f"episodes; reversed pairs: 2-way episodes of one reversed pair ({args.pair_episodes} per pair)\n")
    print("| method | train episodes/s (1-shot) | " + " | ".join(f"{k}-shot test | {k}-shot reversed pairs" for k in args.shots) + " |")
    print("|---|---|" + "---|---|" * len(args.shots))
    for method in args.methods:
        cells = []
        speed = next(r["train_eps_per_s"] for r in rows if r["method"] == method)
        for shot in args.shots:
            r = next(r for r in rows if r["method"] == method and r["shot"] == shot)
            cells += [f"{r['accuracy']:.2f} ± {r['ci95']:.2f}", f"{r['reversed_pair_accuracy']:.2f} ± {r['reversed_pair_ci95']:.2f}"]
        print(f"| {method} | {speed:.2f} | " + " | ".join(cells) + " |")
    plot(rows, out / "bench_train.png")
    print(f"\nwrote {out / 'bench_train.json'} and {out / 'bench_train.png'}")


if __name__ == "__main__":
    main()
