"""Data benchmark: synthetic generation speed, clip decoding with and without the frame cache, and the difficulty
of the synthetic benchmark for plain prototype baselines (5-way 1-shot, test classes, seeded episodes).

    python bench/bench_data.py [--episodes 1000] [--decode-clips 200] [--size 112]

Difficulty baselines use training-free per-frame features so that they run in seconds on a CPU:
``colour`` (RGB histogram) and ``hog`` (gradient orientations in a 4x4 grid) see appearance only; ``motion``
(where pixels differ from the clip's temporal median, 8x8 grid) sees where things move. Each is matched three
ways: mean-pooled over frames (order-blind prototypes), frame-by-frame (aligned), and by dynamic time warping
(monotonic alignment, order-aware, OTAM-like). ``reversed pairs`` are 2-way episodes of a class and its
time reversal, where an order-blind method is at chance by construction. Figures: mean accuracy and 95% CI.
Writes a PNG bar chart to ``<cache>/bench/data_difficulty.png``.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from fsar.data import synthetic as syn
from fsar.data.episodes import EpisodeSampler
from fsar.data.framecache import FrameCache
from fsar.data.loaders import fingerprint, list_videos
from fsar.data.paths import atomic_write_bytes, cache_root
from fsar.data.registry import get_dataset
from fsar.data.video import load_clip


def bench_generation() -> dict:
    """Synthetic videos per second (default size and frames), with one and two worker processes."""
    keys = [c.key for c in get_dataset("synthetic").split("test")]
    out = {}
    for workers in (1, 2):
        tmp = Path(tempfile.mkdtemp())
        try:
            start = time.perf_counter()
            syn.ensure_synthetic(tmp / "set", videos_per_class=4, classes=keys, progress=False, quiet=True,
                                 workers=workers)
            out[f"videos_per_s_{workers}_workers"] = len(keys) * 4 / (time.perf_counter() - start)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def bench_decoding(records, n: int, size: int) -> dict:
    """Test clips per second decoded from .mp4 vs read from the memory-mapped frame cache."""
    recs = records[:n]
    start = time.perf_counter()
    decoded = [load_clip(r, 8, size=size) for r in recs]
    t_decode = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as folder:
        cache = FrameCache(recs, 8, size, folder=folder)
        start = time.perf_counter()
        cache.build(progress=False)
        t_build = time.perf_counter() - start
        start = time.perf_counter()
        cached = [cache.clip(i) for i in range(len(recs))]
        t_cached = time.perf_counter() - start
        assert all(torch.equal(a, b) for a, b in zip(decoded, cached)), "cache differs from decoding"
    return dict(clips=len(recs), size=size, decode_clips_per_s=len(recs) / t_decode,
                cache_build_clips_per_s=len(recs) / t_build, cached_clips_per_s=len(recs) / t_cached)


# ---------------------------------------------------------------- training-free per-frame features [N, T, D]

def colour_features(x: torch.Tensor, bins: int = 4) -> torch.Tensor:
    q = (x.clamp(0, 0.999) * bins).long()
    idx = q[:, :, 0] * bins * bins + q[:, :, 1] * bins + q[:, :, 2]  # n t h w
    return F.one_hot(idx.flatten(2), bins ** 3).float().mean(2)


def hog_features(x: torch.Tensor, cells: int = 4, bins: int = 9) -> torch.Tensor:
    n, t = x.shape[:2]
    g = x.mean(2, keepdim=True).flatten(0, 1)  # (n t) 1 h w
    gx = F.conv2d(g, torch.tensor([[[[-1.0, 0.0, 1.0]]]]), padding=(0, 1))
    gy = F.conv2d(g, torch.tensor([[[[-1.0], [0.0], [1.0]]]]), padding=(1, 0))
    mag, ang = torch.hypot(gx, gy), torch.atan2(gy, gx) % math.pi
    b = (ang / math.pi * bins).long().clamp(max=bins - 1)
    h = torch.zeros(g.shape[0], bins, *g.shape[-2:]).scatter_(1, b, mag)
    return F.normalize(F.adaptive_avg_pool2d(h, cells).flatten(1), dim=1).view(n, t, -1)


def motion_features(x: torch.Tensor, cells: int = 8) -> torch.Tensor:
    residual = (x - x.median(1, keepdim=True).values).abs().mean(2)  # n t h w: what differs from the still scene
    return F.adaptive_avg_pool2d(residual, cells).flatten(2)


def dtw_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Best monotonic alignment score of frame sequences, a [A, T, D], b [B, T, D] (unit rows) -> [A, B]."""
    sim = torch.einsum("atd,bud->abtu", a, b)
    T = sim.shape[-1]
    acc = torch.empty_like(sim)
    for i in range(T):
        for j in range(T):
            if i == 0 and j == 0:
                prev = torch.zeros_like(sim[..., 0, 0])
            else:
                options = [acc[..., i - 1, j]] if i else []
                options += [acc[..., i, j - 1]] if j else []
                options += [acc[..., i - 1, j - 1]] if i and j else []
                prev = torch.stack(options).max(0).values
            acc[..., i, j] = prev + sim[..., i, j]
    return acc[..., -1, -1]


def evaluate(feats: torch.Tensor, labels: list[int], episodes: int, way: int = 5, classes=None) -> dict:
    """Accuracy (%) and 95% CI of cosine prototype matching three ways over seeded 1-shot episodes."""
    f = feats - feats.mean((0, 1), keepdim=True)
    pooled, frames = F.normalize(f.mean(1), dim=-1), F.normalize(f, dim=-1)
    sims = {"mean-pooled": pooled @ pooled.T,  # every video against every video, then index per episode
            "frame-aligned": torch.einsum("atd,btd->ab", frames, frames),
            "dtw": dtw_similarity(frames, frames)}
    eps = list(EpisodeSampler(labels, way, 1, 1, seed=0, num_episodes=episodes)) if classes is None else classes
    out = {}
    for k, s in sims.items():
        acc = torch.tensor([(s[e.query][:, e.support].argmax(1) == e.query_labels).float().mean().item() for e in eps])
        out[k] = (100 * acc.mean().item(), 100 * 1.96 * acc.std().item() / math.sqrt(len(acc)))
    return out


def reversed_pair_episodes(records, n: int):
    """2-way 1-shot episodes of (class, its time reversal) from the test split, seeded."""
    from fsar.data.episodes import Episode

    info = get_dataset("synthetic")
    pairs = [(info.by_key(a).index, info.by_key(b).index) for a, b in syn.reversed_pairs()
             if info.by_key(a).split == "test"]
    by_label: dict[int, list[int]] = {}
    for i, r in enumerate(records):
        by_label.setdefault(r.label, []).append(i)
    g = torch.Generator().manual_seed(0)
    eps = []
    for i in range(n):
        a, b = pairs[i % len(pairs)]
        sup, qry = [], []
        for c in (a, b):
            pick = torch.randperm(len(by_label[c]), generator=g)[:2].tolist()
            sup.append(by_label[c][pick[0]])
            qry.append(by_label[c][pick[1]])
        eps.append(Episode(i, [a, b], sup, qry, torch.arange(2), torch.arange(2)))
    return eps


def plot(results: dict, path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    methods = ["mean-pooled", "frame-aligned", "dtw"]
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.25
    for k, m in enumerate(methods):
        vals = [results[n][m][0] for n in names]
        errs = [results[n][m][1] for n in names]
        ax.bar([i + (k - 1) * width for i in range(len(names))], vals, width, yerr=errs, label=m)
    ax.axhline(20, color="gray", ls="--", lw=1, label="5-way chance")
    ax.axhline(50, color="gray", ls=":", lw=1, label="2-way chance")
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("synthetic benchmark, test classes, 1-shot: training-free prototype baselines")
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--decode-clips", type=int, default=200)
    parser.add_argument("--size", type=int, default=112, help="clip size for the decoding benchmark")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (data loading runs 1 per worker)")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    root = syn.ensure_synthetic()  # the default benchmark (generated on demand)
    manifest = syn.read_manifest(root)
    print(f"default synthetic set: {root} ({manifest['num_videos']} videos, fingerprint {manifest['fingerprint']}, "
          f"generated in {manifest['seconds']} s = {manifest['num_videos'] / manifest['seconds']:.1f} videos/s "
          f"with {manifest.get('workers', 1)} workers)")
    gen = bench_generation()
    print("generation: " + ", ".join(f"{k} {v:.1f}" for k, v in gen.items()))

    test = list_videos("synthetic", root, "test")
    dec = bench_decoding(test, args.decode_clips, args.size)
    print(f"decoding {dec['clips']} test clips of 8x{dec['size']}px: {dec['decode_clips_per_s']:.1f} clips/s from .mp4, "
          f"{dec['cached_clips_per_s']:.0f} clips/s from the frame cache (built at {dec['cache_build_clips_per_s']:.1f} clips/s)")

    start = time.perf_counter()
    cache = FrameCache(test, 8, 32).build(progress=False)  # 32 px is plenty for these features
    x = torch.stack([cache.clip(i) for i in range(len(test))]).float() / 255  # n t 3 h w
    labels = [r.label for r in test]
    feats = {"colour": colour_features(x), "hog": hog_features(x), "motion": motion_features(x)}
    results = {}
    for name, f in feats.items():
        results[f"{name} 5-way"] = evaluate(f, labels, args.episodes)
    pairs = reversed_pair_episodes(test, args.episodes)
    results["motion reversed pairs 2-way"] = evaluate(feats["motion"], labels, args.episodes, classes=pairs)
    print(f"difficulty ({args.episodes} seeded 1-shot episodes of the {len(set(labels))} test classes, "
          f"data fingerprint {fingerprint(test)}; {time.perf_counter() - start:.0f} s):")
    for name, res in results.items():
        print(f"  {name:30s} " + "  ".join(f"{m} {a:5.1f} +- {ci:.1f}" for m, (a, ci) in res.items()))
    png = cache_root() / "bench" / "data_difficulty.png"
    plot(results, png)
    report = dict(generation=gen, decoding=dec, difficulty=results, data_fingerprint=fingerprint(test),
                  synthetic_fingerprint=manifest["fingerprint"], episodes=args.episodes)
    (png.parent / "data_bench.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {png} and {png.parent / 'data_bench.json'}")


if __name__ == "__main__":
    main()
