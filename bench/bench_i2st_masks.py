"""How well does a trained I2ST model's instance decoder find the acting object? Mask IoU on the synthetic test videos.

The synthetic benchmark writes, for every video, the mask of its acting parts (object, hand, box or cloth; the
target the I2ST mask loss trains on). For every test video this script takes the test clip with its masks
(``ClipLoader.test_clips(with_masks=True)``: segment-centre frames, centre crop, the masks on the same pixels), runs
the model rebuilt from its checkpoint as ``fsar-eval`` rebuilds it (backbone features, frame adapter) and the head's
``predict_masks`` (the decoder's mask probabilities [V, T, S, S], S = feature grid side x 2^upsample), and scores:

- IoU of the prediction thresholded at 0.5 against the ground truth, per frame (mean over a video's frames whose
  truth is not empty) and per video (intersection and union pooled over the video's frames; a video whose truth
  and prediction are both empty scores 1), each averaged over videos with a 95% interval over videos
  (1.96 std / sqrt(V));
- the same at the best threshold of a small grid, chosen on the VALIDATION videos (per predictor), reported apart;
- against two references: the mean training mask (the average ground-truth mask over every frame of every training
  video, one fixed [S, S] map for every frame, thresholded the same way) and an untrained model's decoder (the same
  config and seed, so the same initial weights, no training); paired differences per video.

Resolution (our choice): the ground truth is brought to the decoder's resolution, not the prediction up: the loader's
masks (fraction of each cell covered) are resized to S x S exactly as the trainer resizes its training targets
(``fsar.model.heads.i2st.resize_masks``, area averaging), then a cell counts as foreground when at least half of it
is covered.

    python bench/bench_i2st_masks.py --checkpoint <cache>/bench/i1_seed0/runs/i2st-1shot-seed0/best.pt
    python bench/bench_i2st_masks.py --checkpoint <run folder> --limit 20     # a quick look at a few videos

Writes bench_i2st_masks.json (command, checkpoint, config, fingerprints, figures, per-video IoUs) and
bench_i2st_masks.png (a few test frames: image, truth, predictions) under --out (default
``<FSAR_CACHE>/bench/i2st_masks/<run folder name>``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from einops import rearrange
from torch import Tensor

from fsar.core.errors import FsarError

THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # our choice: a coarse grid (and 0.05: L2-trained masks run low)
GT_COVER = 0.5  # our choice: a decoder cell is ground-truth foreground when at least half of it is covered
PREDICTORS = ("trained decoder", "untrained decoder", "mean training mask")


# ---------------------------------------------------------------- IoU


def frame_iou(pred: Tensor, truth: Tensor) -> Tensor:
    """Boolean masks [..., S, S] -> IoU per frame [...]; both empty counts as 1 (nothing to find, nothing found)."""
    inter = (pred & truth).flatten(-2).sum(-1).double()
    union = (pred | truth).flatten(-2).sum(-1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def video_iou(pred: Tensor, truth: Tensor) -> Tensor:
    """Boolean masks [V, T, S, S] -> IoU per video [V], intersection and union pooled over the T frames."""
    inter = (pred & truth).flatten(1).sum(-1).double()
    union = (pred | truth).flatten(1).sum(-1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def iou_per_video(probs: Tensor, truth: Tensor, threshold: float) -> dict[str, Tensor]:
    """Probabilities [V, T, S, S] thresholded (>= threshold) against boolean truth -> per-video figures [V]: the
    mean per-frame IoU over the frames whose truth is not empty (NaN for a video without such a frame), the pooled
    per-video IoU, and the predicted / true foreground shares."""
    pred = probs >= threshold
    # our choice: a frame with an empty truth (the acting parts under half a cell) has no object to find; counting
    # it as 1 would reward an all-background decoder, so the per-frame mean leaves it out (the pooled per-video
    # IoU still counts its false positives)
    present = truth.flatten(2).any(-1)  # [V, T]
    frames = (frame_iou(pred, truth) * present).sum(1) / present.sum(1)  # 0 / 0 = NaN: no frame to score
    return {"frame_iou": frames, "video_iou": video_iou(pred, truth),
            "pred_share": pred.flatten(1).double().mean(1), "true_share": truth.flatten(1).double().mean(1)}


def best_threshold(probs: Tensor, truth: Tensor, grid: tuple[float, ...] = THRESHOLDS) -> tuple[float, dict[float, float]]:
    """The grid threshold with the highest mean per-frame IoU on these (validation) videos, and every grid value's score."""
    scores = {t: float(iou_per_video(probs, truth, t)["frame_iou"].nanmean()) for t in grid}
    return max(scores, key=lambda t: (scores[t], -abs(t - 0.5))), scores  # a tie goes to the one nearer 0.5


def mean_ci(x: Tensor) -> tuple[float, float]:
    """Mean and 95% half-interval over videos (1.96 std / sqrt(n)) of the non-NaN values; 0 for a single value."""
    x = x.double()
    x = x[~x.isnan()]
    if len(x) < 2:
        return float(x.mean()), 0.0
    return float(x.mean()), float(1.96 * x.std(unbiased=True) / math.sqrt(len(x)))


# ---------------------------------------------------------------- model and data


def load_models(checkpoint: str):
    """(trained model, untrained model of the same config and seed, config, checkpoint), both in eval mode."""
    from fsar.model.build import build_model, load_bank
    from fsar.model.checkpoint import load_checkpoint, load_model_state
    from fsar.model.config import TrainConfig

    ckpt = load_checkpoint(checkpoint, "i2st")
    cfg = TrainConfig.from_dict(ckpt["config"])
    bank = load_bank(cfg)
    trained = build_model(cfg, bank)
    load_model_state(trained, ckpt["model"])
    untrained = build_model(cfg, bank)  # build_model seeds the head and adapter from cfg.seed: the initial weights
    if trained.head.encoder is None:
        raise FsarError(f"{ckpt['path']} was trained with ipm=false: it has no mask decoder to score")
    return trained.eval(), untrained.eval(), cfg, ckpt


def spread(n: int, limit: int | None) -> list[int]:
    """All of range(n), or ``limit`` indices spread evenly over it (to debug on a few videos)."""
    if not limit or limit >= n:
        return list(range(n))
    return torch.linspace(0, n - 1, limit).round().long().unique().tolist()


def truth_masks(loader, indices: list[int], size: int, batch: int = 32) -> tuple[Tensor, Tensor]:
    """Ground truth of the test clips at the decoder's resolution: boolean [V, T, size, size] and has-mask [V]."""
    from fsar.model.heads.i2st import resize_masks

    masks, has = [], []
    for s in range(0, len(indices), batch):
        _, m, h = loader.test_clips(indices[s : s + batch], with_masks=True)  # m [B, T, S0, S0]: covered fraction
        b = m.shape[0]
        m = resize_masks(rearrange(m, "b t h w -> (b t) h w"), (size, size))  # as the trainer resizes its targets
        masks.append(rearrange(m, "(b t) h w -> b t h w", b=b) >= GT_COVER)
        has.append(h)
    return torch.cat(masks), torch.cat(has)


@torch.no_grad()
def decoder_probs(model, loader, indices: list[int], batch: int = 16) -> tuple[Tensor, list[int]]:
    """The decoder's mask probabilities [V, T, S, S] of the test clips of ``indices`` (unreadable videos left out),
    from the trainer's feature cache when the backbone is frozen; and the kept indices."""
    from fsar.model.build import features_dir
    from fsar.model.features import cached_features

    tokens, kept = cached_features(model, loader, features_dir(), indices=indices, description="features")
    out = [model.head.predict_masks(model.adapt(tokens[s : s + batch].float())) for s in range(0, len(tokens), batch)]
    return torch.cat(out), kept


def split_data(models: dict, cfg, split: str, limit: int | None) -> dict:
    """Records, truth [V, T, S, S] (bool), has-mask and each model's probabilities of one split's test clips."""
    from fsar.model.build import load_records
    from fsar.model.features import ClipLoader

    records = load_records(cfg, split)
    first = next(iter(models.values()))
    loader = ClipLoader(records, cfg.frames, cfg.size, first.backbone.norm, frame_cache=cfg.frame_cache)
    # the whole split's features (the cache key is the split's video list), then the chosen videos
    probs, kept = {}, None
    for name, model in models.items():
        p, k = decoder_probs(model, loader, list(range(len(records))))
        probs[name], kept = p, k
    pick = spread(len(kept), limit)
    kept = [kept[i] for i in pick]
    probs = {n: p[pick] for n, p in probs.items()}
    size = probs[next(iter(probs))].shape[-1]
    truth, has = truth_masks(loader, kept, size)
    return {"records": [records[i] for i in kept], "indices": kept, "loader": loader, "listed": len(records),
            "truth": truth[has], "has": has, "probs": {n: p[has] for n, p in probs.items()},
            "ids": [records[i].video_id for i, h in zip(kept, has.tolist()) if h]}


def training_mean_mask(cfg, norm: str, size: int, limit: int | None) -> tuple[Tensor, int]:
    """The mean ground-truth mask [size, size] over every frame of every training video's test clip, and the count."""
    from fsar.model.build import load_records
    from fsar.model.features import ClipLoader

    records = load_records(cfg, "train")
    # our choice: decoded clips (no frame cache is built for the training split just for its masks); the same
    # segment-centre frames and centre crop as the frame cache's test clips
    loader = ClipLoader(records, cfg.frames, cfg.size, norm, frame_cache=False)
    idx = spread(len(records), limit)
    truth, has = truth_masks(loader, idx, size)
    if not bool(has.any()):
        raise FsarError("no training video has a mask file; make them with `fsar-data masks` first")
    return truth[has].double().mean(dim=(0, 1)), int(has.sum())


# ---------------------------------------------------------------- figures


def score(probs: dict[str, Tensor], truth: Tensor, thresholds: dict[str, float]) -> dict[str, dict]:
    """Per-video figures of every predictor at 0.5 and at its val-chosen threshold."""
    return {n: {"at_0.5": iou_per_video(p, truth, 0.5), "at_best": iou_per_video(p, truth, thresholds[n])}
            for n, p in probs.items()}


def summarize(figs: dict[str, dict]) -> dict[str, dict]:
    """Means and 95% intervals over videos, and the trained decoder's paired differences to each reference."""
    rows: dict[str, dict] = {}
    ref = figs[PREDICTORS[0]]
    for name, f in figs.items():
        row: dict = {}
        for at, per in f.items():
            for metric in ("frame_iou", "video_iou", "pred_share", "true_share"):
                row[f"{metric}_{at}"], row[f"{metric}_{at}_ci95"] = mean_ci(per[metric])
            if name != PREDICTORS[0]:
                for metric in ("frame_iou", "video_iou"):
                    key = f"trained_minus_this_{metric}_{at}"
                    row[key], row[key + "_ci95"] = mean_ci(ref[at][metric] - per[metric])
        rows[name] = row
    return rows


def table(rows: dict[str, dict], thresholds: dict[str, float], videos: int) -> str:
    """The printed table: IoU at 0.5 and at the val-chosen threshold, per frame and per video, ± 95% CI."""
    lines = [f"mask IoU on {videos} test videos (mean over videos ± 95% CI)",
             f"{'predictor':<20} {'frame IoU @0.5':>15} {'video IoU @0.5':>15} {'fg share @0.5':>14} "
             f"{'thr (val)':>9} {'frame IoU @thr':>15} {'video IoU @thr':>15}"]
    for n, r in rows.items():
        lines.append(f"{n:<20} {r['frame_iou_at_0.5']:>7.3f} ± {r['frame_iou_at_0.5_ci95']:.3f} "
                     f"{r['video_iou_at_0.5']:>7.3f} ± {r['video_iou_at_0.5_ci95']:.3f} {r['pred_share_at_0.5']:>14.3f} "
                     f"{thresholds[n]:>9.1f} {r['frame_iou_at_best']:>7.3f} ± {r['frame_iou_at_best_ci95']:.3f} "
                     f"{r['video_iou_at_best']:>7.3f} ± {r['video_iou_at_best_ci95']:.3f}")
    share = next(iter(rows.values()))["true_share_at_0.5"]
    lines.append(f"{'(ground truth)':<20} {'':>15} {'':>15} {share:>14.3f}")
    lines.append("")
    lines.append("trained minus reference, paired per video:")
    for n, r in rows.items():
        if n == PREDICTORS[0]:
            continue
        lines.append(f"  - {n:<18} frame IoU @0.5 {r['trained_minus_this_frame_iou_at_0.5']:+.3f} ± "
                     f"{r['trained_minus_this_frame_iou_at_0.5_ci95']:.3f}, video IoU @0.5 "
                     f"{r['trained_minus_this_video_iou_at_0.5']:+.3f} ± {r['trained_minus_this_video_iou_at_0.5_ci95']:.3f}; "
                     f"@thr: frame {r['trained_minus_this_frame_iou_at_best']:+.3f} ± "
                     f"{r['trained_minus_this_frame_iou_at_best_ci95']:.3f}, video "
                     f"{r['trained_minus_this_video_iou_at_best']:+.3f} ± {r['trained_minus_this_video_iou_at_best_ci95']:.3f}")
    return "\n".join(lines)


def plot(test: dict, norm: str, thresholds: dict[str, float], show: int, path: Path) -> None:
    """A few test frames (the middle frame of evenly spread videos): image, truth, each predictor's probability map
    and its masks at 0.5 and at its val-chosen threshold, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fsar.data.transforms import NORMALIZATION

    mean, std = (torch.tensor(v).view(3, 1, 1) for v in NORMALIZATION[norm])
    rows = spread(len(test["truth"]), show)
    with_mask = [i for i, h in zip(test["indices"], test["has"].tolist()) if h]
    names = list(test["probs"])
    cols = 2 + 3 * len(names)
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.1 * cols, 2.3 * len(rows)), squeeze=False)
    for r, v in enumerate(rows):
        t = test["truth"].shape[1] // 2
        clip = test["loader"].test_clips([with_mask[v]])[0, t]  # [3, H, W] normalised
        image = (clip * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
        panels = [(image, "frame"), (test["truth"][v, t].float().numpy(), "truth")]
        for n in names:
            p = test["probs"][n][v, t].float()
            panels += [(p.numpy(), f"{n}\nprobability"), ((p >= 0.5).float().numpy(), f"{n}\n>= 0.5"),
                       ((p >= thresholds[n]).float().numpy(), f"{n}\n>= {thresholds[n]:g} (val)")]
        for c, (img, title) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(img, cmap=None if img.ndim == 3 else "gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=7)
        axes[r, 0].set_ylabel(f"{test['ids'][v]}\nframe {t}", fontsize=6)
    fig.suptitle("test frames: image, truth at the decoder's resolution, each predictor's probability (black 0, "
                 "white 1) and masks at 0.5 and at its val-chosen threshold", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def json_floats(x: Tensor) -> list:
    """A tensor's values for JSON, NaN (a video without a frame to score) as null."""
    return [None if math.isnan(v) else v for v in x.double().tolist()]


def file_sha256(path: str) -> str:
    """First 16 hex digits of a file's sha256 (which checkpoint file exactly was scored)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="an i2st run's best.pt / last.pt (or the run folder)")
    p.add_argument("--limit", type=int, default=None, help="only this many videos per split, evenly spread (to debug)")
    p.add_argument("--show", type=int, default=4, help="test frames in the PNG")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: another benchmark uses the other core)")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for bench_i2st_masks.json/.png (default <cache>/bench/i2st_masks/<run folder name>)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    from fsar.data.paths import cache_root
    from fsar.model.checkpoint import data_fingerprint

    trained, untrained, cfg, ckpt = load_models(str(args.checkpoint))
    models = {PREDICTORS[0]: trained, PREDICTORS[1]: untrained}
    val = split_data(models, cfg, "val", args.limit)
    test = split_data(models, cfg, "test", args.limit)
    size = test["truth"].shape[-1]
    prior, prior_videos = training_mean_mask(cfg, trained.backbone.norm, size, args.limit)
    for d in (val, test):  # the prior as a third predictor: the same map on every frame
        d["probs"][PREDICTORS[2]] = prior.float().expand_as(d["truth"])
    thresholds, val_scores = {}, {}
    for n, pr in val["probs"].items():
        thresholds[n], val_scores[n] = best_threshold(pr, val["truth"])
    figs = score(test["probs"], test["truth"], thresholds)
    rows = summarize(figs)
    v = len(test["truth"])
    print(f"checkpoint {ckpt['path']} (episode {ckpt.get('episode')}, best val {ckpt.get('best')})")
    print(f"test: {v} videos with masks of {len(test['indices'])} scored ({test['listed']} listed, "
          f"{len(test['indices']) - v} without a mask file); val: {len(val['truth'])} videos for the thresholds; "
          f"training mean mask over {prior_videos} training videos; decoder output {size} x {size}, "
          f"{test['truth'].shape[1]} frames per clip")
    empty = int((~test["truth"].flatten(2).any(-1)).sum())
    print(f"test frames whose truth is empty at {size} x {size} (left out of the per-frame IoU): {empty} of "
          f"{test['truth'].shape[0] * test['truth'].shape[1]}")
    for n, pr in test["probs"].items():  # threshold-free: does the decoder put more probability on the object?
        t_ = test["truth"]
        print(f"{n}: mean probability on truth cells {float(pr[t_].mean()):.3f}, on background cells "
              f"{float(pr[~t_].mean()):.3f} (max {float(pr.max()):.3f})")
    print(f"val-chosen thresholds (grid {THRESHOLDS[0]}..{THRESHOLDS[-1]}): "
          + ", ".join(f"{n} {t:.1f}" for n, t in thresholds.items()))
    print()
    print(table(rows, thresholds, v))

    out = args.out or cache_root() / "bench" / "i2st_masks" / (
        Path(ckpt["path"]).resolve().parent.name + (f"-limit{args.limit}" if args.limit else ""))
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "command": " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "fsar_cache": os.environ.get("FSAR_CACHE"), "cache_root": str(cache_root()),
        "args": {k: (str(x) if isinstance(x, Path) else x) for k, x in vars(args).items()},
        "checkpoint": {"path": ckpt["path"], "sha256_16": file_sha256(ckpt["path"]), "method": ckpt["method"],
                       "episode": ckpt.get("episode"), "step": ckpt.get("step"), "best": ckpt.get("best"),
                       "config": ckpt["config"], "data_fingerprints": ckpt.get("data"), "text": ckpt.get("text")},
        "fingerprints": {"test": data_fingerprint(test["records"]), "val": data_fingerprint(val["records"])},
        "choices": {"resolution": "ground truth resized to the decoder's output (area), foreground where >= "
                                  f"{GT_COVER} covered", "threshold_grid": list(THRESHOLDS),
                    "threshold_criterion": "mean per-frame IoU on val videos",
                    "frame_iou": "mean over frames with a non-empty truth (empty-truth frames left out)",
                    "video_iou": "intersection / union pooled over the clip's frames (both empty: 1)",
                    "ci": "1.96 std / sqrt(videos)"},
        "counts": {"test_videos": v, "test_scored": len(test["indices"]), "test_listed": test["listed"],
                   "val_videos": len(val["truth"]), "train_videos_for_prior": prior_videos, "decoder_size": size,
                   "frames": int(test["truth"].shape[1]), "test_empty_truth_frames": empty,
                   "test_frames": int(test["truth"].shape[0] * test["truth"].shape[1])},
        "mean_probability": {n: {"truth_cells": float(pr[test["truth"]].mean()),
                                 "background_cells": float(pr[~test["truth"]].mean()), "max": float(pr.max())}
                             for n, pr in test["probs"].items()},
        "thresholds": thresholds, "val_scores": {n: {str(t): s for t, s in sc.items()} for n, sc in val_scores.items()},
        "results": rows,
        "per_video": {"video_ids": test["ids"],
                      **{f"{n}|{at}|{m}": json_floats(figs[n][at][m]) for n in figs for at in figs[n]
                         for m in ("frame_iou", "video_iou")}},
        "mean_training_mask": prior.tolist(),
        "seconds": time.perf_counter() - start,
    }
    (out / "bench_i2st_masks.json").write_text(json.dumps(report, indent=2))
    plot(test, trained.backbone.norm, thresholds, args.show, out / "bench_i2st_masks.png")
    print(f"\nwrote {out / 'bench_i2st_masks.json'} and {out / 'bench_i2st_masks.png'} ({report['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
