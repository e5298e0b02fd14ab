"""Helpers for the data tests: small real videos whose frames say their own index."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fsar.data.video import encode_mp4

LEVEL_STEP = 12  # frame t is a flat grey of level 10 + 12 t: decoding recovers t despite H.264 loss


def indexed_frames(n: int, size: int = 32, width: int | None = None) -> np.ndarray:
    """Uint8 RGB frames [n, size, width, 3]; frame t is grey level 10 + LEVEL_STEP * t."""
    width = width or size
    levels = 10 + LEVEL_STEP * np.arange(n)
    assert levels.max() < 256, "too many frames for distinct grey levels"
    return np.broadcast_to(levels[:, None, None, None], (n, size, width, 3)).astype(np.uint8).copy()


def frame_index(frame) -> int:
    """Recover the index of a frame made by ``indexed_frames`` (any [..., H, W] or [3, H, W] layout)."""
    level = float(np.asarray(frame, dtype=np.float64).mean())
    return int(round((level - 10) / LEVEL_STEP))


def write_indexed_video(path: Path, n: int = 16, size: int = 32, width: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_mp4(indexed_frames(n, size, width)))
    return path


def write_frame_folder(folder: Path, n: int = 10, size: int = 32) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for t, frame in enumerate(indexed_frames(n, size)):
        Image.fromarray(frame).save(folder / f"img_{t + 1:05d}.jpg", quality=95)
    return folder


def make_video_root(root: Path, classes: list[str], per_class: int = 3, frames: bool = False, n: int = 12) -> dict:
    """``root/<class>/<vid>.mp4`` (or frame folders) for the given classes; returns {class: [video ids]}."""
    out = {}
    for ci, key in enumerate(classes):
        ids = []
        for v in range(per_class):
            vid = f"{key.replace(' ', '_')}_v{v:02d}"
            if frames:
                write_frame_folder(root / key / vid, n=n)
            else:
                write_indexed_video(root / key / f"{vid}.mp4", n=n)
            ids.append(vid)
        out[key] = ids
    return out
