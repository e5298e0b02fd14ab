"""Packaged pretrained backbones on a CPU: seconds per frame by input size and thread count, parameter count, and a
training-free few-shot measure of their frozen features on the synthetic test classes.

    python bench/bench_backbones.py [--backbones effnet-lite0,dinov2-s] [--sizes 64,112,128,224] [--threads 1,2]
                                    [--repeat 5] [--batch 8] [--episodes 1000] [--no-fewshot]

Speed: a batch of ``--batch`` random frames, one warm-up pass, then the median of ``--repeat`` passes, divided by the
batch (frozen backbone, no gradients). Parameters: those the forward pass uses (EfficientNet-Lite's unused ImageNet
classifier left out). Few-shot: every test video of the default synthetic benchmark, 8 test-time frames at the
backbone's default size (``DEFAULT_SIZE``), encoded once; the global token (index 0) averaged over frames is one
vector per video; 5-way 1-shot episodes (seeded, one query per class) pick the support video of highest cosine,
on the raw features and on features centred by the mean over all test videos (as ``bench_data.py`` does).
Accuracy in % with the 95 % interval over episodes. Writes ``<cache>/bench/backbones.json``.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

from fsar.data import synthetic as syn
from fsar.data.episodes import EpisodeSampler
from fsar.data.framecache import FrameCache
from fsar.data.loaders import fingerprint, list_videos
from fsar.data.paths import atomic_write_text, cache_root
from fsar.data.transforms import normalize
from fsar.model.backbones import DEFAULT_SIZE, build_backbone


def forward_parameters(backbone) -> int:
    """Parameters the forward pass uses (EfficientNet-Lite keeps its ImageNet classifier only for checks)."""
    unused = getattr(getattr(backbone, "model", None), "classifier", None)
    skip = {id(p) for p in unused.parameters()} if isinstance(unused, torch.nn.Module) else set()
    return sum(p.numel() for p in backbone.parameters() if id(p) not in skip)


@torch.no_grad()
def seconds_per_frame(backbone, size: int, threads: int, batch: int, repeat: int) -> float:
    torch.set_num_threads(threads)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    backbone(x)  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        backbone(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times) / batch


@torch.no_grad()
def encode_videos(backbone, clips: FrameCache, batch: int) -> torch.Tensor:
    """Global token of every frame of every cached test clip: [V, T, D]."""
    out = []
    for start in range(0, len(clips), batch):
        x = torch.stack([clips.clip(i) for i in range(start, min(start + batch, len(clips)))])  # v t 3 h w uint8
        v, t = x.shape[:2]
        tokens = backbone(normalize(x, backbone.norm).flatten(0, 1))
        out.append(tokens[:, 0].reshape(v, t, -1))
    return torch.cat(out)


def prototype_accuracy(video_feats: torch.Tensor, labels: list[int], episodes: int) -> dict:
    """5-way 1-shot nearest-support accuracy (%) and 95 % interval, raw and mean-centred cosine."""
    sampler = EpisodeSampler(labels, 5, 1, 1, seed=0, num_episodes=episodes)
    eps = [sampler.episode(i) for i in range(episodes)]
    out = {}
    for kind, f in (("raw", video_feats), ("centred", video_feats - video_feats.mean(0, keepdim=True))):
        f = F.normalize(f, dim=-1)
        sim = f @ f.T
        acc = torch.tensor([(sim[e.query][:, e.support].argmax(1) == e.query_labels).float().mean().item()
                            for e in eps])
        out[kind] = (100 * acc.mean().item(), 100 * 1.96 * acc.std().item() / math.sqrt(len(acc)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="effnet-lite0,effnet-lite1,effnet-lite2,dinov2-s")
    parser.add_argument("--sizes", default="64,112,128,224")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8, help="frames per timed forward pass")
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--fewshot-threads", type=int, default=2)
    parser.add_argument("--no-fewshot", action="store_true")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    names = args.backbones.split(",")
    sizes = [int(s) for s in args.sizes.split(",")]
    threads = [int(t) for t in args.threads.split(",")]

    report: dict = {"speed": {}, "fewshot": {}, "settings": vars(args)}
    print(f"seconds per frame (batch {args.batch}, median of {args.repeat}, frozen, no gradients)")
    print(f"  {'backbone':14s} {'params':>8s}  " + "  ".join(f"{s:>4d}px/{t}t" for s in sizes for t in threads))
    backbones = {}
    for name in names:
        backbone = build_backbone(name, tune="frozen")
        backbones[name] = backbone
        row = {f"{s}px_{t}threads": seconds_per_frame(backbone, s, t, args.batch, args.repeat)
               for s in sizes for t in threads}
        params = forward_parameters(backbone)
        report["speed"][name] = dict(params=params, weights_id=backbone.weights_id, seconds_per_frame=row)
        print(f"  {name:14s} {params / 1e6:7.2f}M  " + "  ".join(f"{v:10.4f}" for v in row.values()), flush=True)

    if not args.no_fewshot:
        torch.set_num_threads(args.fewshot_threads)
        root = syn.ensure_synthetic()
        test = list_videos("synthetic", root, "test")
        labels = [r.label for r in test]
        print(f"training-free 5-way 1-shot, mean-pooled global token, {len(test)} test videos of "
              f"{len(set(labels))} classes (data {fingerprint(test)}), {args.episodes} seeded episodes")
        for name, backbone in backbones.items():
            size = DEFAULT_SIZE[name]
            clips = FrameCache(test, args.frames, size).build(progress=False)
            start = time.perf_counter()
            feats = encode_videos(backbone, clips, batch=4)
            seconds = time.perf_counter() - start
            res = prototype_accuracy(feats.mean(1), labels, args.episodes)
            report["fewshot"][name] = dict(size=size, encode_seconds=seconds, **res)
            print(f"  {name:14s} {size:4d}px  raw {res['raw'][0]:5.1f} +- {res['raw'][1]:.1f}   centred "
                  f"{res['centred'][0]:5.1f} +- {res['centred'][1]:.1f}   (encoded in {seconds:.0f} s)", flush=True)
    path = cache_root() / "bench" / "backbones.json"
    atomic_write_text(path, json.dumps(report, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
