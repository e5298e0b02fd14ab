"""Does I2ST's global token help at test time? Re-score one trained checkpoint with other matching weights.

I2ST's distance is (1 - w) * Bi-MHM / 2 of the frame prototypes + w * (1 - cos) of the global tokens (w = 0.5 by
default, the paper's average). The benchmark tables say that training with local-only matching (w = 0) scores
higher than the full model. This script separates training from testing: it rebuilds a model trained with the
default w, as ``fsar-eval`` does, encodes the test videos once, and scores the SAME seeded test episodes with w swept
from 0 (frame prototypes only) to 1 (global tokens only), so each row's paired difference to the trained w says
what the global term is worth to that trained model.

    python bench/bench_i2st_weight.py --checkpoint cache/bench/w1_seed0/runs/i2st-1shot-seed0/best.pt --threads 1

Writes bench_i2st_weight.json (command, checkpoint, config, fingerprints, rows) under --out (default
``<FSAR_CACHE>/bench/i2st_weight/<run folder name>``) and prints a table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from fsar.core.errors import FsarError

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="best.pt / last.pt of an i2st run, or its folder")
    parser.add_argument("--weights", type=float, nargs="+", default=list(WEIGHTS), help="global weights w to score")
    parser.add_argument("--episodes", type=int, default=10000, help="seeded test episodes (the run's seed)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from fsar.data.paths import cache_root
    from fsar.model.build import build_model, features_dir, load_bank, load_records
    from fsar.model.checkpoint import data_fingerprint, load_checkpoint, load_model_state
    from fsar.model.config import TrainConfig
    from fsar.model.evaluator import run_episodes, sample_episodes
    from fsar.model.features import ClipLoader, cached_features
    from fsar.model.results import summarize, write_json

    try:
        ckpt = load_checkpoint(args.checkpoint, "i2st")
        if any(not 0.0 <= w <= 1.0 for w in args.weights):
            raise FsarError(f"--weights must lie in [0, 1], got {args.weights}")
        cfg = TrainConfig.from_dict(ckpt["config"])
        if cfg.opts.get("matching", "global_local") != "global_local":
            raise FsarError(f"the checkpoint was trained with matching={cfg.opts['matching']}; give a global_local run")
        records = load_records(cfg, "test")
        bank = load_bank(cfg)
        model = build_model(cfg, bank)
        load_model_state(model, ckpt["model"])
    except FsarError as err:
        sys.exit(f"error: {err}")
    trained_w = model.head.global_weight

    # encode the test videos once (the evaluator's feature cache), then score the same episodes for every weight
    loader = ClipLoader(records, cfg.frames, cfg.size, model.backbone.norm, frame_cache=cfg.frame_cache)
    feats, kept = cached_features(model, loader, features_dir(), description="test features")
    kept_records = [records[i] for i in kept]
    episodes = sample_episodes([r.label for r in kept_records], cfg.way, cfg.shot, 1, cfg.seed, args.episodes)
    accs = {}
    for w in sorted(set(args.weights) | {trained_w}):
        model.head.global_weight = w
        accs[w] = run_episodes(model, feats, episodes, bank, kept_records)
    saved = Path(ckpt["path"]).parent / "test_accuracies.pt"  # what the run itself scored on these episodes
    if saved.exists() and len(accs[trained_w]) == len(stored := torch.load(saved)) and not torch.equal(accs[trained_w], stored):
        sys.exit(f"error: the trained weight does not reproduce {saved}; was the checkpoint retrained or the data changed?")

    rows = []
    for w, a in accs.items():
        mean, ci = summarize(a)
        diff = (a - accs[trained_w]) * 100
        rows.append({"global_weight": w, "test_acc": mean, "ci95": ci, "paired_diff": diff.mean().item(),
                     "paired_ci95": 1.96 * diff.std().item() / len(diff) ** 0.5, "trained": w == trained_w})
    print(f"\n{Path(ckpt['path']).parent.name}: {cfg.shot}-shot, seed {cfg.seed}, {len(episodes)} test episodes")
    print("| global weight w | test acc. % | episode 95% CI | paired diff. to the trained w |\n|---|---|---|---|")
    for r in rows:
        mark = " (trained)" if r["trained"] else ""
        diff = "-" if r["trained"] else f"{r['paired_diff']:+.2f} ± {r['paired_ci95']:.2f}"
        print(f"| {r['global_weight']:.2f}{mark} | {r['test_acc']:.2f} | ± {r['ci95']:.2f} | {diff} |")

    out = args.out or cache_root() / "bench" / "i2st_weight" / Path(ckpt["path"]).parent.name
    report = {"command": " ".join(sys.argv), "checkpoint": str(ckpt["path"]), "config": ckpt["config"],
              "test_fingerprint": data_fingerprint(kept_records), "rows": rows}
    write_json(out / "bench_i2st_weight.json", report)
    print(f"wrote {out / 'bench_i2st_weight.json'}")


if __name__ == "__main__":
    main()
