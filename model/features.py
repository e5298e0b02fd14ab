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
from fsar.data.video import sample_frames, segment_indices, transform_clip
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

    Masks (``with_masks=True``, ``view_masks``): the acting-object mask file of each video (``fsar-data masks``
    writes it beside the frame cache, see ``fsar.data.masks.find_mask_file``; else ``<video>.masks.npz`` beside the
    video, as the synthetic benchmark writes it; uint8 [F, h, w], > 0 = acting part) on exactly the frames, crop
    and flip of its clip, as float [T, S, S] in 0..1 (the fraction of each cell covered), S = ``mask_size``
    (default: clip size // 4). A video without a mask file gives zeros and has_mask False. The mask file is
    assumed to cover the whole frame (same aspect ratio).
    """

    def __init__(self, records: Sequence, num_frames: int, size: int, norm: str, seed: int = 0,
                 frame_cache: bool = False, progress: bool = False, mask_size: int | None = None):
        from fsar.data.transforms import normalize

        self.records, self.num_frames, self.size, self.norm, self.seed = list(records), num_frames, size, norm, seed
        self.mask_size = mask_size or max(1, size // 4)  # our choice: a quarter of the clip size
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

    def clip_and_mask(self, i: int, train: bool = False,
                      generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, bool]:
        """Clip ``i`` (float [T, 3, H, W], the very clip ``clip`` gives for the same generator state), its masks
        on the same frames and crop (float [T, S, S]) and whether a mask file exists (raises UnreadableVideo)."""
        rec, T = self.records[i], self.num_frames
        if self.cache is None:
            frames, idx = sample_frames(rec.path, T, train, generator)
            m = self._mask_frames(i, idx, frames.shape[1], frames.shape[2])
            if m is None:
                x = transform_clip(frames, rec, train, self.size, generator)
            else:
                x, m = transform_clip(frames, rec, train, self.size, generator, extra=m)
        else:
            from fsar.data import transforms

            cached = self.cache.frames(i)  # t c h w, test frames resized and centre-cropped to side
            side = cached.shape[-1]
            m = self._mask_frames(i, None, None, None)
            if m is not None:  # the frame cache's geometry: short side to `side`, centre crop
                m = transforms.center_crop(transforms.resize_short_side(m, side), side)
            if not train:
                x = transforms.center_crop(cached, self.size)
                m = None if m is None else transforms.center_crop(m, self.size)
            else:
                frames = cached.permute(0, 2, 3, 1).numpy()  # t c h w -> t h w c
                out = transform_clip(frames, rec, True, self.size, generator, crop_ratio=self.size / side, extra=m)
                x, m = out if m is not None else (out, None)
        x = self._normalize(x, self.norm)
        S = self.mask_size
        if m is None:
            return x, torch.zeros(T, S, S), False
        # area average to S x S: each cell is the fraction of its pixels on an acting part
        m = torch.nn.functional.adaptive_avg_pool2d(m.float(), (S, S)).squeeze(1).clamp(0, 1)  # t 1 h w -> t s s
        return x, m, True

    def _mask_frames(self, i: int, idx: list[int] | None, height: int | None, width: int | None) -> Tensor | None:
        """Masks of record ``i`` at frame indices ``idx`` (None: the test indices) as float [T, 1, H, W] in 0..1,
        resized to (height, width) when given; None when the video has no mask file."""
        from fsar.core.errors import FsarError
        from fsar.data import transforms
        from fsar.data.masks import find_mask_file

        path = find_mask_file(self.records[i])
        if path is None:
            return None
        try:
            with np.load(path) as data:
                masks = np.asarray(data["masks"])
            if masks.ndim != 3 or len(masks) == 0:
                raise ValueError(f"shape {masks.shape}, expected [F, h, w]")
        except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
            raise FsarError(f"unreadable mask file {path} ({e}); delete it and rewrite it with "
                            f"`fsar-data masks --dataset {self.records[i].dataset or 'D'} --root R`") from None
        if idx is None:
            idx = segment_indices(len(masks), self.num_frames, False)
        idx = [min(int(t), len(masks) - 1) for t in idx]
        m = torch.from_numpy((masks[idx] > 0).astype(np.float32)).unsqueeze(1)  # t h w -> t 1 h w
        if height is not None and (height, width) != tuple(m.shape[-2:]):
            m = transforms.resize(m, height, width)
        return m

    def mask_available(self) -> bool:
        """Whether any record has a mask file."""
        from fsar.data.masks import find_mask_file

        return any(find_mask_file(r) is not None for r in self.records)

    def view_masks(self, indices: Sequence[int], view: int) -> tuple[Tensor, Tensor]:
        """Masks [B, T, S, S] and has_mask [B] on exactly the frames and crops of cached feature view ``view``
        (0: the test clip; v > 0: the augmentation ``extract_features`` draws from (seed, 104729, v, index))."""
        masks, has = [], []
        for i in indices:
            i = int(i)
            g = None if view == 0 else torch.Generator().manual_seed(derived_seed(self.seed, 104729, view, i))
            try:
                _, m, h = self.clip_and_mask(i, train=view != 0, generator=g)
            except UnreadableVideo:
                m, h = torch.zeros(self.num_frames, self.mask_size, self.mask_size), False
            masks.append(m)
            has.append(h)
        return torch.stack(masks), torch.tensor(has, dtype=torch.bool)

    def test_clips(self, indices: Sequence[int], with_masks: bool = False):
        """Deterministic clips of the given records: [B, T, 3, H, W]; with masks: (clips, masks [B, T, S, S], has_mask [B])."""
        if not with_masks:
            return torch.stack([self.clip(int(i)) for i in indices])
        out = [self.clip_and_mask(int(i)) for i in indices]
        return (torch.stack([o[0] for o in out]), torch.stack([o[1] for o in out]),
                torch.tensor([o[2] for o in out], dtype=torch.bool))

    def train_clips(self, indices: Sequence[int], episode: int, with_masks: bool = False):
        """Augmented clips for one episode; slot j's randomness comes from (seed, episode, j) only.

        With masks: (clips [B, T, 3, H, W], masks [B, T, S, S] on the same frames and crops, has_mask [B])."""
        used = {int(i) for i in indices}
        out = []
        for j, i in enumerate(indices):
            i = int(i)
            for cand in [i] + self._substitutes(i, used):
                g = torch.Generator().manual_seed(derived_seed(self.seed, episode, j))
                try:
                    out.append(self.clip_and_mask(cand, train=True, generator=g) if with_masks
                               else self.clip(cand, train=True, generator=g))
                    used.add(cand)
                    break
                except UnreadableVideo as e:
                    if cand not in self.bad:
                        self.bad.add(cand)
                        warnings.warn(f"skipping unreadable video {e.path} ({e.reason}); using another of its class", stacklevel=2)
            else:
                raise UnreadableVideo(self.records[i].path, "no readable video of this class is left")
        if with_masks:
            return (torch.stack([o[0] for o in out]), torch.stack([o[1] for o in out]),
                    torch.tensor([o[2] for o in out], dtype=torch.bool))
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
