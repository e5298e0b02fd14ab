"""Decode once: the test-time frames of a record list in one uint8 memory-mapped .npy, and a clip Dataset.

The cache holds, for each record, the T segment-centre frames resized so the short side is ``size / crop_ratio``
and centre-cropped to that square: ``[N, T, 3, S, S]`` uint8 with S = round(size / crop_ratio). A test clip is its
centre ``size`` crop (identical to ``load_clip(train=False)``); a train clip from the cache gets the spatial
augmentation (random resized crop, flip, colour jitter) but not temporal jitter (the frames are fixed).
The file name is a hash of the records' fingerprint and the sampling settings; the array is written under a
temporary name and renamed, and its JSON sidecar is written last, so a half-written cache is never used.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fsar.data import transforms
from fsar.data.loaders import VideoRecord, fingerprint
from fsar.data.paths import atomic_write_text, cache_root
from fsar.data.video import UnreadableVideo, load_clip, transform_clip

CACHE_VERSION = 1


class FrameCache:
    """Memory-mapped test-time frames of ``records``; ``build()`` once, then ``clip(i)`` without decoding."""

    def __init__(self, records: Sequence[VideoRecord], num_frames: int = 8, size: int = 112,
                 crop_ratio: float = transforms.CROP_RATIO, folder: Path | str | None = None):
        self.records = list(records)
        self.num_frames, self.size, self.crop_ratio = num_frames, size, crop_ratio
        self.side = round(size / crop_ratio)
        self.config = dict(version=CACHE_VERSION, fingerprint=fingerprint(self.records), num_frames=num_frames,
                           size=size, crop_ratio=crop_ratio, side=self.side, count=len(self.records))
        key = hashlib.sha256(json.dumps(self.config, sort_keys=True).encode()).hexdigest()[:20]
        self.folder = Path(folder) if folder is not None else cache_root() / "frames"
        self.path = self.folder / f"{key}.npy"
        self.meta_path = self.folder / f"{key}.json"
        self._array: np.ndarray | None = None
        self.unreadable: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.records)

    def exists(self) -> bool:
        """True when a complete cache for these records and settings is on disk."""
        return self._load_meta() is not None

    def _load_meta(self) -> dict | None:
        try:
            meta = json.loads(self.meta_path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        if meta.get("config") != self.config or not self.path.is_file():
            return None
        return meta

    def build(self, progress: bool = True) -> "FrameCache":
        """Decode every record once (unless cached already) and open the memory map; unreadable videos are
        counted (``self.unreadable``: index -> reason) and stored as zeros."""
        from filelock import FileLock

        from fsar.data.progress import track

        self.folder.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock"):
            if not self.exists():
                tmp = self.path.with_name(f".{self.path.stem}.{os.getpid()}.tmp.npy")
                shape = (len(self.records), self.num_frames, 3, self.side, self.side)
                arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
                bad: dict[int, str] = {}
                try:
                    for i, rec in enumerate(track(self.records, "caching frames", enabled=progress)):
                        try:
                            clip = load_clip(rec, self.num_frames, train=False, size=self.side, crop_ratio=1.0)
                            arr[i] = clip.numpy()
                        except UnreadableVideo as e:
                            bad[i] = e.reason
                    arr.flush()
                    del arr
                    with open(tmp, "rb+") as f:
                        os.fsync(f.fileno())
                    os.replace(tmp, self.path)
                finally:
                    tmp.unlink(missing_ok=True)
                atomic_write_text(self.meta_path, json.dumps(
                    dict(config=self.config, unreadable={str(k): v for k, v in bad.items()},
                         paths=[str(r.path) for r in self.records]), indent=1))
        return self.open()

    def open(self) -> "FrameCache":
        """Memory-map an existing cache (raises FileNotFoundError with the fix when it is not built)."""
        meta = self._load_meta()
        if meta is None:
            raise FileNotFoundError(f"no frame cache at {self.path}; call FrameCache.build() first")
        self._array = np.load(self.path, mmap_mode="r")
        self.unreadable = {int(k): v for k, v in meta["unreadable"].items()}
        if self.unreadable:
            warnings.warn(f"{len(self.unreadable)} of {len(self.records)} videos are unreadable and will be skipped "
                          f"(first: {self.records[min(self.unreadable)].path})", stacklevel=2)
        return self

    def frames(self, i: int) -> torch.Tensor:
        """The stored uint8 frames [T, 3, S, S] of record ``i`` (raises UnreadableVideo for a bad video)."""
        if self._array is None:
            self.open()
        if i in self.unreadable:
            raise UnreadableVideo(self.records[i].path, self.unreadable[i])
        return torch.from_numpy(np.array(self._array[i]))

    def clip(self, i: int, train: bool = False, generator: torch.Generator | None = None,
             flip: bool | None = None) -> torch.Tensor:
        """Clip ``i`` as uint8 [T, 3, size, size]: test = centre crop (equal to ``load_clip``), train = spatial
        augmentation of the cached frames."""
        x = self.frames(i)
        if not train:
            return transforms.center_crop(x, self.size)
        frames = x.permute(0, 2, 3, 1).numpy()  # t c h w -> t h w c
        return transform_clip(frames, self.records[i], True, self.size, generator, flip, crop_ratio=self.size / self.side)

    def readable(self) -> list[int]:
        """Indices of the records that decoded."""
        return [i for i in range(len(self.records)) if i not in self.unreadable]


def item_seed(seed: int, epoch: int, index: int) -> int:
    digest = hashlib.sha256(f"fsar-clip:{seed}:{epoch}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class ClipDataset(torch.utils.data.Dataset):
    """``(clip, label)`` per record: uint8 [T, 3, size, size], or normalised float when ``backbone`` is given.

    Train-time randomness comes from a generator seeded by (seed, epoch, index) (call ``set_epoch``), so a run is
    reproducible with any number of DataLoader workers. With ``cache`` (a built FrameCache) nothing is decoded.
    An unreadable video gives ``None`` (drop it with ``collate_clips``) and is counted in ``unreadable``.
    """

    def __init__(self, records: Sequence[VideoRecord], num_frames: int = 8, size: int = 112, train: bool = False,
                 seed: int = 0, cache: FrameCache | None = None, backbone: str | None = None):
        self.records = list(records)
        self.num_frames, self.size, self.train, self.seed = num_frames, size, train, seed
        self.cache, self.backbone = cache, backbone
        self.epoch = 0
        self.unreadable: dict[int, str] = dict(cache.unreadable) if cache is not None else {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(item_seed(self.seed, self.epoch, i)) if self.train else None
        try:
            if self.cache is not None:
                clip = self.cache.clip(i, train=self.train, generator=g)
            else:
                clip = load_clip(self.records[i], self.num_frames, self.train, self.size, generator=g)
        except UnreadableVideo as e:
            if i not in self.unreadable:
                warnings.warn(f"skipping unreadable video: {e}", stacklevel=2)
            self.unreadable[i] = e.reason
            return None
        if self.backbone is not None:
            clip = transforms.normalize(clip, self.backbone)
        return clip, self.records[i].label


def collate_clips(batch: list) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Stack ``(clip, label)`` items into ([B, T, 3, H, W], [B]), dropping unreadable (None) items."""
    items = [b for b in batch if b is not None]
    if not items:
        return None
    return torch.stack([c for c, _ in items]), torch.tensor([label for _, label in items])
