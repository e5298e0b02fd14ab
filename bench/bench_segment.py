"""Does LGA's CLUSTER-segment find the action's stages? Agreement with the synthetic generator's truth.

The synthetic generator knows when each video's action starts and ends (``fsar.data.synthetic.action_span``: onset
and offset as fractions of the video, video frame t of F sitting at t / (F - 1)). A test clip takes T of the F video
frames, one per equal segment (``fsar.data.video.segment_indices``), so clip frame j shows video frame idx_j and is
*in the action* iff onset <= idx_j / (F - 1) <= offset. Its true stage is "before" (earlier than the onset),
"during" or "after" (later than the offset), and the two true inner boundaries are the first in-action frame and the
first after-action frame (with an empty stage they coincide with the clip's ends or with each other).

For every test video the script splits the test clip's frame features into three contiguous segments with
CLUSTER-segment (``fsar.model.segment.cluster_segment`` on L2-normalised frames, as the LGA head calls it) and with
the uniform HARD split, and reports, with 95% intervals over videos (1.96 std / sqrt(V)):

- the mean absolute error of the two inner boundaries, in clip frames (and each boundary's own error);
- the share of clips whose two boundaries are both within one frame of the truth;
- the frame-level stage accuracy (each clip frame's segment against its true stage);
- CLUSTER minus uniform, paired per video.

The same figures are given on the clips whose three true stages are all non-empty (CLUSTER and the uniform split
always make three non-empty segments, so a clip whose action starts before its first frame or ends after its last
cannot be matched exactly by either); how many clips have an empty stage is printed.

Features: the frozen packaged backbone's per-frame global feature (token 0 of what the trainer caches, read through
the trainer's own feature cache ``fsar.model.features.cached_features`` under ``<FSAR_CACHE>/features``), and, with
``--checkpoint``, the frame features a trained model's adapter gives its head (what LGA segments).

    python bench/bench_segment.py --limit 12                         # a quick look at a few videos
    python bench/bench_segment.py                                    # frozen EfficientNet-Lite0 features
    python bench/bench_segment.py --checkpoint <cache>/bench/s1_seed0/runs/lga-1shot-seed0/best.pt
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from fsar.core.errors import FsarError
from fsar.data.loaders import list_videos
from fsar.data.synthetic import action_span, read_manifest
from fsar.data.video import segment_indices
from fsar.model.segment import cluster_segment, uniform_segment

STAGES = 3  # before / during / after, as LGA's onset / progression / completion
STAGE_NAMES = ("before", "during", "after")


# ---------------------------------------------------------------- the truth


@lru_cache(maxsize=None)
def _manifest_frames(root: str) -> int:
    """Frames per video of a synthetic benchmark, from its manifest (the generator renders exactly that many)."""
    manifest = read_manifest(Path(root))
    if manifest is None or "frames" not in manifest:
        raise FsarError(f"no readable manifest.json with 'frames' in {root}; regenerate with `fsar-data synth --root {root}`")
    return int(manifest["frames"])


def video_frames(record) -> int:
    """F, the number of frames of a synthetic video (the same for every video of one benchmark)."""
    return _manifest_frames(str(getattr(record, "root", None) or Path(record.path).parent.parent))


def clip_positions(num_video_frames: int, frames: int) -> Tensor:
    """[T] where each test-clip frame sits in its video, as t / (F - 1) of the video frame it shows."""
    idx = torch.tensor(segment_indices(num_video_frames, frames, train=False), dtype=torch.float64)
    return idx / max(num_video_frames - 1, 1)


def true_labels(positions: Tensor, onset: float, offset: float) -> Tensor:
    """Clip frame positions [T] and the action's span -> true stage per frame [T] (0 before, 1 during, 2 after)."""
    return (positions >= onset).long() + (positions > offset).long()


def labels_to_bounds(labels: Tensor) -> Tensor:
    """Monotone stage labels [..., T] -> boundaries [..., 4]: 0, first frame of stage 1, first frame of stage 2, T.

    An empty stage gives equal neighbouring boundaries (no "before": b_1 = 0; no "after": b_2 = T).
    """
    t = labels.shape[-1]
    b1 = (labels == 0).sum(-1)
    b2 = (labels <= 1).sum(-1)
    return torch.stack([torch.zeros_like(b1), b1, b2, torch.full_like(b1, t)], dim=-1)


def bounds_to_labels(bounds: Tensor, frames: int) -> Tensor:
    """Boundaries [..., 4] -> the segment index of every clip frame [..., T] (0, 1, 2)."""
    j = torch.arange(frames, device=bounds.device)
    return (j >= bounds[..., 1:2]).long() + (j >= bounds[..., 2:3]).long()


def truth_of(records, frames: int) -> tuple[Tensor, Tensor, Tensor]:
    """True stage labels [V, T], true boundaries [V, 4] and action spans [V, 2] (fractions) of the test clips."""
    labels, spans = [], []
    for r in records:
        onset, offset = action_span(r)
        labels.append(true_labels(clip_positions(video_frames(r), frames), onset, offset))
        spans.append((onset, offset))
    labels = torch.stack(labels)
    return labels, labels_to_bounds(labels), torch.tensor(spans, dtype=torch.float64)


# ---------------------------------------------------------------- the features


def frozen_model(backbone: str, frames: int, size: int | None):
    """A model built as the trainer builds one (frozen backbone + frame adapter), so its feature cache key matches."""
    from fsar.model.build import build_model
    from fsar.model.config import TrainConfig

    # our choice: the prototype head (no text needed); the cache key depends on the backbone, its weights, the
    # feature kind (the adapter's grid), frames, size and the videos, not on the head
    cfg = TrainConfig(method="prototype", backbone=backbone, frames=frames, size=size).resolved()
    return build_model(cfg, None), cfg


def cached_frame_tokens(model, cfg, records) -> tuple[Tensor, list[int]]:
    """The trainer's cached backbone features of the test-style clips: [V, T, 1 + grid², D] (or [V, T, D]), kept ids."""
    from fsar.model.build import features_dir
    from fsar.model.features import ClipLoader, cached_features

    loader = ClipLoader(records, cfg.frames, cfg.size, model.backbone.norm, frame_cache=cfg.frame_cache)
    return cached_features(model, loader, features_dir(), description="test features")


def global_token(feats: Tensor) -> Tensor:
    """[V, T, P, D] tokens -> [V, T, D] the backbone's global token 0; pooled [V, T, D] unchanged."""
    return feats[:, :, 0] if feats.dim() == 4 else feats


def trained_model(checkpoint: str):
    """The model of an fsar-train checkpoint (as fsar-eval rebuilds it), in eval mode, and its config."""
    from fsar.model.build import build_model, load_bank
    from fsar.model.checkpoint import load_checkpoint, load_model_state
    from fsar.model.config import TrainConfig

    ckpt = load_checkpoint(checkpoint)
    cfg = TrainConfig.from_dict(ckpt["config"])
    model = build_model(cfg, load_bank(cfg))
    load_model_state(model, ckpt["model"])
    return model.eval(), cfg, ckpt


@torch.no_grad()
def adapted_frames(model, tokens: Tensor, batch: int = 32) -> Tensor:
    """Cached backbone features [V, T, ...] -> the frame features the head reads [V, T, D] (token 0 if it keeps tokens)."""
    out = []
    for s in range(0, len(tokens), batch):
        out.append(global_token(model.adapt(tokens[s : s + batch].float())))
    return torch.cat(out)


# ---------------------------------------------------------------- the figures


def mean_ci(x: Tensor) -> tuple[float, float]:
    """Mean and 95% half-interval over videos (1.96 std / sqrt(n)); 0 for a single value."""
    x = x.double()
    if len(x) < 2:
        return float(x.mean()), 0.0
    return float(x.mean()), float(1.96 * x.std(unbiased=True) / math.sqrt(len(x)))


def per_video(bounds: Tensor, truth_bounds: Tensor, truth_labels: Tensor) -> dict[str, Tensor]:
    """Per-video figures of one split [V, 4] against the truth: boundary errors, within-1, stage accuracy."""
    err = (bounds[:, 1:3] - truth_bounds[:, 1:3]).abs().double()  # [V, 2] onset and offset boundary
    frames = truth_labels.shape[-1]
    return {"mean_abs_error": err.mean(1), "onset_error": err[:, 0], "offset_error": err[:, 1],
            "both_within_1": (err <= 1).all(1).double(),
            "stage_accuracy": (bounds_to_labels(bounds, frames) == truth_labels).double().mean(1),
            "signed_error": (bounds[:, 1:3] - truth_bounds[:, 1:3]).double()}


METRICS = ("mean_abs_error", "onset_error", "offset_error", "both_within_1", "stage_accuracy")


def summarize(figs: dict[str, Tensor], base: dict[str, Tensor] | None, keep: Tensor) -> dict:
    """Means and intervals over the kept videos, and the paired difference to ``base`` (the uniform split)."""
    out: dict = {"videos": int(keep.sum())}
    for m in METRICS:
        out[m], out[m + "_ci95"] = mean_ci(figs[m][keep])
        if base is not None:
            out[m + "_minus_uniform"], out[m + "_minus_uniform_ci95"] = mean_ci(figs[m][keep] - base[m][keep])
    return out


def table(rows: dict[str, dict], title: str) -> str:
    """The printed table of one subset of clips."""
    head = (f"{'split (' + title + ')':<44} {'|err| frames':>14} {'onset':>6} {'offset':>6} {'both <=1 frame %':>17} "
            f"{'stage acc. %':>14} {'|err| - uniform':>16} {'stage acc. - uniform':>21}")
    lines = [head]
    for name, r in rows.items():
        d_err = f"{r['mean_abs_error_minus_uniform']:+.2f} ± {r['mean_abs_error_minus_uniform_ci95']:.2f}" \
            if "mean_abs_error_minus_uniform" in r else "-"
        d_acc = f"{100 * r['stage_accuracy_minus_uniform']:+.1f} ± {100 * r['stage_accuracy_minus_uniform_ci95']:.1f}" \
            if "stage_accuracy_minus_uniform" in r else "-"
        lines.append(f"{name:<44} {r['mean_abs_error']:>7.2f} ± {r['mean_abs_error_ci95']:.2f} {r['onset_error']:>6.2f} "
                     f"{r['offset_error']:>6.2f} {100 * r['both_within_1']:>9.1f} ± {100 * r['both_within_1_ci95']:>4.1f} "
                     f"{100 * r['stage_accuracy']:>7.1f} ± {100 * r['stage_accuracy_ci95']:>4.1f} {d_err:>16} {d_acc:>21}")
    return "\n".join(lines)


def plot(results: dict, figs: dict[str, dict[str, Tensor]], frames: int, path: Path) -> None:
    """Bars of the three figures (all clips and three-stage clips) and the signed boundary errors' histograms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(figs)
    fig, axes = plt.subplots(1, 5, figsize=(26, 4.8))
    panels = (("mean_abs_error", "mean |boundary error| (clip frames)", 1),
              ("both_within_1", "both boundaries within 1 frame (%)", 100),
              ("stage_accuracy", "frame-level stage accuracy (%)", 100))
    width = 0.38
    for ax, (metric, title, scale) in zip(axes, panels):
        for k, subset in enumerate(("all", "three_stages")):
            rows = results[subset]["rows"]
            xs = [i + (k - 0.5) * width for i in range(len(names))]
            ax.bar(xs, [scale * rows[n][metric] for n in names], width,
                   yerr=[scale * rows[n][metric + "_ci95"] for n in names], capsize=3,
                   label=f"{'all clips' if subset == 'all' else 'clips with 3 non-empty stages'} "
                         f"(n={results[subset]['videos']})")
        ax.set_xticks(range(len(names)), [n.replace(" on ", "\non ") for n in names], fontsize=8)
        ax.set_title(title + ", 95% CI over videos", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    bins = torch.arange(-frames, frames + 2) - 0.5
    for ax, b, label in ((axes[3], 0, "first 'during' frame (onset)"), (axes[4], 1, "first 'after' frame (offset)")):
        for n in names:
            e = figs[n]["signed_error"][:, b]
            ax.hist(e.numpy(), bins=bins.numpy(), histtype="step", lw=1.8, label=n)
        ax.set_title(f"signed error of the boundary at the {label}\n(predicted - true, clip frames; all clips)", fontsize=9)
        ax.set_xlabel("clip frames")
        ax.set_xlim(-frames + 0.5, frames - 0.5)
        ax.set_ylabel("videos")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split", default="test")
    p.add_argument("--frames", type=int, default=8, help="clip frames T (the trainer's default)")
    p.add_argument("--size", type=int, default=None, help="input size (default: the backbone's, as the trainer)")
    p.add_argument("--backbone", default="effnet-lite0")
    p.add_argument("--checkpoint", default=None, help="a trained run's best.pt: also segment its adapted frame features")
    p.add_argument("--limit", type=int, default=None, help="only this many videos, evenly spread (to debug)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None,
                   help="folder for bench_segment.json/.png (default <cache>/bench/segment/<frozen|run name>)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    from fsar.data.paths import cache_root

    records = list_videos("synthetic", None, args.split)
    model, cfg = frozen_model(args.backbone, args.frames, args.size)
    tokens, kept = cached_frame_tokens(model, cfg, records)
    feats = {f"cluster on frozen {args.backbone}": global_token(tokens)}
    info: dict = {"frozen": {"backbone": args.backbone, "frames": cfg.frames, "size": cfg.size,
                             "feature": "backbone global token 0, as cached by the trainer"}}
    if args.checkpoint:
        tmodel, tcfg, ckpt = trained_model(args.checkpoint)
        if (tcfg.backbone, tcfg.frames, tcfg.size) != (cfg.backbone, cfg.frames, cfg.size):
            raise FsarError(f"the checkpoint was trained with {tcfg.backbone}, {tcfg.frames} frames, size {tcfg.size}; "
                            f"pass --backbone {tcfg.backbone} --frames {tcfg.frames} --size {tcfg.size}")
        head = tmodel.head
        name = f"cluster on trained {ckpt['method']} adapter"
        feats[name] = adapted_frames(tmodel, tokens)
        info["checkpoint"] = {"path": str(ckpt["path"]), "method": ckpt["method"], "shot": tcfg.shot, "seed": tcfg.seed,
                              "opts": tcfg.opts, "head_segment": getattr(head, "segment", None),
                              "head_overlap": getattr(head, "overlap", None), "episode": ckpt.get("episode"),
                              "best": ckpt.get("best")}
        if getattr(head, "segment", "cluster") != "cluster":
            print(f"note: this {ckpt['method']} head segments with '{head.segment}', not CLUSTER; its features are "
                  f"still split by CLUSTER here")
    del tokens
    kept_records = [records[i] for i in kept]
    pick = torch.arange(len(kept_records))
    if args.limit:
        pick = torch.linspace(0, len(kept_records) - 1, min(args.limit, len(kept_records))).round().long().unique()
    kept_records = [kept_records[i] for i in pick.tolist()]
    feats = {n: x[pick] for n, x in feats.items()}

    labels, tbounds, spans = truth_of(kept_records, cfg.frames)
    f_video = video_frames(kept_records[0])
    v, t = labels.shape
    counts = {"videos": v, "listed": len(records), "unreadable": len(records) - len(kept),
              "video_frames": f_video, "clip_frames": t,
              "clip_video_frames": segment_indices(f_video, t),
              "no_before": int((tbounds[:, 1] == 0).sum()), "no_after": int((tbounds[:, 2] == t).sum()),
              "no_during": int((tbounds[:, 1] == tbounds[:, 2]).sum()),
              "action_fills_clip": int(((tbounds[:, 1] == 0) & (tbounds[:, 2] == t)).sum())}
    three = (tbounds[:, 1] > 0) & (tbounds[:, 2] > tbounds[:, 1]) & (tbounds[:, 2] < t)  # all three stages non-empty
    counts["three_stages"] = int(three.sum())
    print(f"{v} {args.split} videos ({counts['unreadable']} unreadable left out); video frames F = {f_video}, clip frames "
          f"T = {t} showing video frames {counts['clip_video_frames']}")
    print(f"action span (fraction of the video): onset {spans[:, 0].mean():.2f} [{spans[:, 0].min():.2f}, "
          f"{spans[:, 0].max():.2f}], offset {spans[:, 1].mean():.2f} [{spans[:, 1].min():.2f}, {spans[:, 1].max():.2f}]")
    stage_len = torch.stack([(labels == s).sum(1) for s in range(STAGES)], 1).double()  # [V, 3]
    print("true stage lengths (clip frames, mean): " + ", ".join(f"{n} {stage_len[:, s].mean():.2f}"
                                                                  for s, n in enumerate(STAGE_NAMES)))
    print(f"clips with an empty true stage: no 'before' {counts['no_before']}, no 'after' {counts['no_after']}, "
          f"action fills the whole clip {counts['action_fills_clip']}, no 'during' frame {counts['no_during']}; "
          f"all three stages non-empty: {counts['three_stages']} of {v}")

    uniform = uniform_segment(t, STAGES).expand(v, -1)
    bounds = {"uniform (HARD)": uniform}
    for n, x in feats.items():
        bounds[n] = cluster_segment(F.normalize(x.float(), dim=-1), STAGES)  # as LGA's head: normalised, detached
    figs = {n: per_video(b, tbounds, labels) for n, b in bounds.items()}
    everyone = torch.ones(v, dtype=torch.bool)
    results: dict = {}
    for subset, keep in (("all", everyone), ("three_stages", three)):
        rows = {n: summarize(f, None if n == "uniform (HARD)" else figs["uniform (HARD)"], keep) for n, f in figs.items()}
        results[subset] = {"videos": int(keep.sum()), "rows": rows}
    print()
    print(table(results["all"]["rows"], f"all {v} clips"))
    print()
    print(table(results["three_stages"]["rows"], f"{counts['three_stages']} clips, 3 stages"))

    out = args.out or cache_root() / "bench" / "segment" / (
        Path(args.checkpoint).resolve().parent.name if args.checkpoint else "frozen")
    if args.limit:
        out = out.with_name(out.name + f"-limit{args.limit}")
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "command": " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "fsar_cache": os.environ.get("FSAR_CACHE"), "cache_root": str(cache_root()),
        "args": {k: (str(x) if isinstance(x, Path) else x) for k, x in vars(args).items()},
        "features": info, "counts": counts, "results": results,
        "per_video": {"video_ids": [r.video_id for r in kept_records], "class_keys": [r.class_key for r in kept_records],
                      "spans": spans.tolist(), "true_bounds": tbounds.tolist(),
                      "bounds": {n: b.tolist() for n, b in bounds.items()}},
        "seconds": time.perf_counter() - start,
    }
    (out / "bench_segment.json").write_text(json.dumps(report, indent=2))
    plot(results, figs, t, out / "bench_segment.png")
    print(f"\nwrote {out / 'bench_segment.json'} and {out / 'bench_segment.png'} ({report['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
