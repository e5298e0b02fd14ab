"""Clip loading for the trainer and evaluator, and per-video feature caches (the backbone is fixed at test time).

Test clips use deterministic frames (segment centres, centre crop). Train clips draw their augmentation from a
generator seeded by (seed, episode, slot), so an episode's input depends on nothing but those numbers: runs, resumed
runs and every DDP rank see the same data for the same episode.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fsar.data.video import UnreadableVideo, load_clip
from fsar.model.backbones import state_fingerprint


def derived_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (numpy SeedSequence: no collisions between nearby tuples)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class ClipLoader:
    """Normalised clips [B, T, 3, H, W] of a list of video records, test-style or augmented.

    With ``frame_cache`` the test-time frames of every record are decoded once into the data area's memory-mapped
    ``FrameCache`` (identical test clips, no decoding afterwards); train clips then get the spatial augmentation of
    those frames but no temporal jitter. Without it every clip is decoded again (train: random frame per segment).
    An unreadable video met while training is replaced by the next readable video of its class that is not already
    in the episode (deterministic), with a warning; ``bad`` counts them.
    """

    def __init__(self, records: Sequence, num_frames: int, size: int, norm: str, seed: int = 0,
                 frame_cache: bool = False, progress: bool = False):
        from fsar.data.transforms import normalize

        self.records, self.num_frames, self.size, self.norm, self.seed = list(records), num_frames, size, norm, seed
        self._normalize = normalize
        self.cache = None
        if frame_cache:
            from fsar.data.framecache import FrameCache

            self.cache = FrameCache(self.records, num_frames, size).build(progress=progress)
        self.bad: set[int] = set()
        self._by_label: dict[int, list[int]] = {}
        for i, r in enumerate(self.records):
            self._by_label.setdefault(r.label, []).append(i)

    def clip(self, i: int, train: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """One clip as float [T, 3, H, W] (raises UnreadableVideo)."""
        if self.cache is not None:
            x = self.cache.clip(i, train=train, generator=generator)
        else:
            x = load_clip(self.records[i], num_frames=self.num_frames, train=train, size=self.size, generator=generator)
        return self._normalize(x, self.norm)

    def test_clips(self, indices: Sequence[int]) -> Tensor:
        """Deterministic clips of the given records: [B, T, 3, H, W]."""
        return torch.stack([self.clip(int(i)) for i in indices])

    def train_clips(self, indices: Sequence[int], episode: int) -> Tensor:
        """Augmented clips for one episode; slot j's randomness comes from (seed, episode, j) only."""
        used = {int(i) for i in indices}
        out = []
        for j, i in enumerate(indices):
            i = int(i)
            for cand in [i] + self._substitutes(i, used):
                g = torch.Generator().manual_seed(derived_seed(self.seed, episode, j))
                try:
                    out.append(self.clip(cand, train=True, generator=g))
                    used.add(cand)
                    break
                except UnreadableVideo as e:
                    if cand not in self.bad:
                        self.bad.add(cand)
                        warnings.warn(f"skipping unreadable video {e.path} ({e.reason}); using another of its class", stacklevel=2)
            else:
                raise UnreadableVideo(self.records[i].path, "no readable video of this class is left")
        return torch.stack(out)

    def _substitutes(self, i: int, used: set[int]) -> list[int]:
        same = self._by_label[self.records[i].label]
        start = same.index(i)
        return [c for c in same[start + 1 :] + same[:start] if c not in used and c not in self.bad]


def _records_key(records: Sequence) -> str:
    try:
        from fsar.data.loaders import fingerprint

        return fingerprint(records)
    except ImportError:  # pragma: no cover - the data area always provides it
        h = hashlib.sha256()
        for r in records:
            h.update(f"{r.path}|{r.label}|{r.class_key}\n".encode())
        return h.hexdigest()[:16]


@torch.no_grad()
def extract_features(
    model,
    loader: ClipLoader,
    indices: Sequence[int] | None = None,
    batch_videos: int = 16,
    device: torch.device | str = "cpu",
    progress: bool = False,
    description: str = "features",
    amp: bool = False,
    view: int = 0,
) -> tuple[Tensor, list[int]]:
    """Features of every readable video with deterministic frames: ([V, T, ...] float32 on CPU, kept indices).

    ``view`` 0 is the test-style clip; view v > 0 is a train-style augmented clip whose augmentation is drawn from
    (loader seed, v, video index) alone, so a frozen backbone can train on several fixed augmented views.
    Unreadable videos are left out with one warning; callers sample episodes from the kept ones only.
    """
    from fsar.data.progress import track

    indices = list(range(len(loader.records))) if indices is None else [int(i) for i in indices]
    was_training = model.training
    model.eval()
    feats, kept, bad = [], [], []
    batches = [indices[s : s + batch_videos] for s in range(0, len(indices), batch_videos)]
    for batch in track(batches, description, enabled=progress):
        clips, ok = [], []
        for i in batch:
            try:
                if view == 0:
                    clips.append(loader.clip(i))
                else:
                    g = torch.Generator().manual_seed(derived_seed(loader.seed, 104729, view, i))
                    clips.append(loader.clip(i, train=True, generator=g))
                ok.append(i)
            except UnreadableVideo as e:
                bad.append((i, e.reason))
        if not clips:
            continue
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and torch.device(device).type == "cuda"):
            f = model.encode(torch.stack(clips).to(device))
        feats.append(f.float().cpu())
        kept.extend(ok)
    model.train(was_training)
    if bad:
        loader.bad.update(i for i, _ in bad)
        warnings.warn(f"left out {len(bad)} unreadable of {len(indices)} videos (first: {loader.records[bad[0][0]].path}: {bad[0][1]})", stacklevel=2)
    if not feats:
        raise UnreadableVideo(Path(str(loader.records[indices[0]].path)).parent if indices else Path("."), "no readable video")
    return torch.cat(feats), kept


def feature_cache_path(model, loader: ClipLoader, cache_dir: Path, view: int = 0, bf16: bool = False) -> Path:
    """Where the features of these records under these exact (frozen) weights (and precision) are stored."""
    key = "|".join(([f"view{view}", str(loader.seed)] if view else []) + (["bf16"] if bf16 else []) + [
        model.backbone.name,
        state_fingerprint(model.backbone),
        model.feature_kind,
        str(loader.num_frames),
        str(loader.size),
        _records_key(loader.records),
    ])
    return Path(cache_dir) / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.pt"


def cached_features(model, loader: ClipLoader, cache_dir: Path | None = None, **kwargs) -> tuple[Tensor, list[int]]:
    """``extract_features`` with an on-disk cache (used when the backbone is frozen: same weights, same features)."""
    if cache_dir is None or not model.backbone.frozen:
        return extract_features(model, loader, **kwargs)
    bf16 = bool(kwargs.get("amp")) and torch.device(kwargs.get("device", "cpu")).type == "cuda"
    path = feature_cache_path(model, loader, cache_dir, kwargs.get("view", 0), bf16)
    if path.is_file():
        blob = torch.load(path, map_location="cpu", weights_only=True)
        return blob["features"], blob["kept"].tolist()
    feats, kept = extract_features(model, loader, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # ranks may write the same cache at once
    torch.save({"features": feats.half() if kwargs.get("view", 0) else feats, "kept": torch.tensor(kept)}, tmp)
    tmp.replace(path)
    return feats, kept
