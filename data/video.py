"""Decode videos (PyAV) or frame folders, and sample T frames, one per equal segment.

Train-time sampling takes a random frame inside each segment (from a ``torch.Generator``); test-time sampling takes
each segment's centre, so evaluation never depends on a random state. Files that cannot be decoded, or that end
long before their header says, raise ``UnreadableVideo``: callers catch it, skip the video and count it.
"""
from __future__ import annotations

import io
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from fsar.data import transforms

if TYPE_CHECKING:
    from fsar.data.loaders import VideoRecord

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v")
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")
# a file whose decoded frame count falls this far short of its header is treated as truncated
TRUNCATION_TOLERANCE = 0.9


class UnreadableVideo(Exception):
    """A video file or frame folder that cannot be decoded (missing, corrupt, truncated, empty)."""

    def __init__(self, path: Path | str, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot read video {path}: {reason}")


def frame_files(folder: Path) -> list[Path]:
    """The image files of an extracted-frames folder, in natural order (``img_2`` before ``img_10``)."""
    files = [p for p in folder.iterdir() if p.suffix.lower() in FRAME_EXTENSIONS and not p.name.startswith(".")]
    return sorted(files, key=lambda p: (len(p.stem), p.stem))


def segment_indices(n_frames: int, num_frames: int, train: bool = False,
                    generator: torch.Generator | None = None) -> list[int]:
    """One frame index per equal segment: the centre at test, a random frame of the segment at train.

    With fewer frames than segments, frames repeat (segments shorter than one frame share it).
    """
    if n_frames < 1:
        raise ValueError("a video needs at least one frame")
    seg = n_frames / num_frames
    out = []
    for i in range(num_frames):
        start = min(int(math.floor(seg * i)), n_frames - 1)
        end = max(min(int(math.floor(seg * (i + 1))), n_frames), start + 1)  # exclusive
        if train:
            out.append(start + int(torch.randint(end - start, (1,), generator=generator)))
        else:
            out.append(min(int(seg * (i + 0.5)), n_frames - 1))
    return out


def _decode_file(path: Path) -> list:
    """All frames of a video file as PyAV frames (still in the codec's pixel format, converted later).

    A decode error near the end is tolerated when at least 90% of the frames the header announces came out;
    anything else (no header count, fewer frames, no frames) is ``UnreadableVideo``.
    """
    import av

    frames, error = [], None
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UnreadableVideo(path, "no video stream")
            stream = container.streams.video[0]
            expected = stream.frames or 0
            if not expected and stream.duration and stream.average_rate and stream.time_base:
                expected = int(float(stream.duration * stream.time_base) * float(stream.average_rate))
            try:
                for frame in container.decode(stream):
                    frames.append(frame)
            except (av.FFmpegError, ValueError, EOFError) as e:
                error = f"{type(e).__name__}: {e}"
    except UnreadableVideo:
        raise
    except (av.FFmpegError, OSError, ValueError, EOFError) as e:
        raise UnreadableVideo(path, f"{type(e).__name__}: {e}") from None
    if not frames:
        raise UnreadableVideo(path, error or "no frames could be decoded")
    if expected and len(frames) < TRUNCATION_TOLERANCE * expected - 1:
        raise UnreadableVideo(path, f"truncated: decoded {len(frames)} of {expected} frames")
    if error and not expected:
        raise UnreadableVideo(path, f"decode error after {len(frames)} frames ({error})")
    return frames


def count_frames(path: Path | str) -> int:
    """Number of decodable frames of a video file or frame folder (raises UnreadableVideo)."""
    path = Path(path)
    if path.is_dir():
        n = len(frame_files(path))
        if n == 0:
            raise UnreadableVideo(path, "frame folder holds no .jpg/.png files")
        return n
    if not path.is_file():
        raise UnreadableVideo(path, "file does not exist")
    return len(_decode_file(path))


def sample_frames(path: Path | str, num_frames: int = 8, train: bool = False,
                  generator: torch.Generator | None = None) -> tuple[np.ndarray, list[int]]:
    """Sample ``num_frames`` frames (one per segment): uint8 RGB [T, H, W, 3] and the chosen frame indices."""
    path = Path(path)
    if path.is_dir():
        files = frame_files(path)
        if not files:
            raise UnreadableVideo(path, "frame folder holds no .jpg/.png files")
        from PIL import Image, UnidentifiedImageError

        idx = segment_indices(len(files), num_frames, train, generator)
        out = []
        for i in idx:
            try:
                with Image.open(files[i]) as im:
                    out.append(np.asarray(im.convert("RGB")))
            except (OSError, UnidentifiedImageError, SyntaxError) as e:
                raise UnreadableVideo(files[i], f"bad frame image ({e})") from None
        if len({a.shape for a in out}) > 1:
            raise UnreadableVideo(path, "frames of different sizes")
        return np.stack(out), idx
    if not path.is_file():
        raise UnreadableVideo(path, "file does not exist")
    frames = _decode_file(path)
    idx = segment_indices(len(frames), num_frames, train, generator)
    return np.stack([frames[i].to_ndarray(format="rgb24") for i in idx]), idx


def read_frames(path: Path | str, num_frames: int = 8, train: bool = False,
                generator: torch.Generator | None = None) -> np.ndarray:
    """Sample ``num_frames`` frames (one per segment) as uint8 RGB, shape [T, H, W, 3]."""
    return sample_frames(path, num_frames, train, generator)[0]


def load_clip(record: "VideoRecord | Path | str", num_frames: int = 8, train: bool = False, size: int = 112,
              generator: torch.Generator | None = None, flip: bool | None = None,
              crop_ratio: float = transforms.CROP_RATIO) -> torch.Tensor:
    """One clip as uint8 [T, 3, size, size]: sampled frames, then the train or test transform.

    Test: segment centres, resize short side to ``size / crop_ratio``, centre crop (deterministic).
    Train: random frame per segment, random resized crop, flip, colour jitter, all drawn from ``generator``;
    ``flip=None`` flips half the clips unless the record's data set has ``direction_matters`` (SSv2, synthetic).
    The same crop/flip/jitter applies to every frame of a clip. Normalise afterwards with ``transforms.normalize``.
    Raises ``UnreadableVideo`` for a file that cannot be decoded.
    """
    frames, _ = sample_frames(getattr(record, "path", record), num_frames, train, generator)
    return transform_clip(frames, record, train, size, generator, flip, crop_ratio)


def transform_clip(frames: np.ndarray, record=None, train: bool = False, size: int = 112,
                   generator: torch.Generator | None = None, flip: bool | None = None,
                   crop_ratio: float = transforms.CROP_RATIO, extra: torch.Tensor | None = None):
    """The train or test transform of ``load_clip`` on sampled frames [T, H, W, 3] (uint8 numpy).

    ``extra`` ([T, C', H, W] float, e.g. masks) follows the same geometry; then ``(clip, extra)`` is returned.
    """
    clip = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # t h w c -> t c h w
    if not train:
        out = transforms.test_transform(clip, size, crop_ratio, extra=extra)
        if flip and extra is None:
            return transforms.hflip(out)
        return (transforms.hflip(out[0]), transforms.hflip(out[1])) if flip else out
    if flip is None:
        flip = not _direction_matters(getattr(record, "dataset", "") or "")
        flip = flip and bool(torch.rand((), generator=generator) < 0.5)
    return transforms.train_transform(clip, size, generator=generator, flip=flip, crop_ratio=crop_ratio, extra=extra)


def _direction_matters(dataset: str) -> bool:
    if not dataset:
        return False
    from fsar.data.registry import get_dataset

    try:
        return get_dataset(dataset).direction_matters
    except KeyError:
        return False


def filter_readable(records: Sequence["VideoRecord"], progress: bool = False,
                    warn: bool = True) -> tuple[list["VideoRecord"], list[tuple["VideoRecord", str]]]:
    """Split records into readable ones and ``(record, reason)`` for each unreadable one (decodes every video)."""
    from fsar.data.progress import track

    good, bad = [], []
    for rec in track(records, "checking videos", enabled=progress):
        try:
            count_frames(rec.path)
            good.append(rec)
        except UnreadableVideo as e:
            bad.append((rec, e.reason))
    if bad and warn:
        warnings.warn(f"skipped {len(bad)} unreadable of {len(records)} videos (first: {bad[0][0].path}: {bad[0][1]})",
                      stacklevel=2)
    return good, bad


def encode_mp4(frames: np.ndarray, fps: int = 8, codec: str = "libx264", crf: int = 18) -> bytes:
    """Uint8 RGB frames [F, H, W, 3] as the bytes of an .mp4 (yuv420p; H.264 by default); H and W must be even.

    The bytes are a function of the frames: the same frames give the same bytes, call after call and process after
    process, so a regenerated benchmark has the same files and the same fingerprint. libx264's macroblock-tree
    rate control (``mbtree``, on by default with ``crf``) broke that on short clips: measured with libx264 core 165
    (PyAV 18.1), the same frames gave different bitstreams (and slightly different decoded pixels) depending on what
    the process had encoded before, in 1 to 3 of 25 encodes of a clip; with ``mbtree=0`` every encode was the same
    (120 of 120 per clip, 5 clips, 3 processes); ``bframes=0`` also fixes it but costs more bits. Also: one encoder
    thread, and ``bitexact`` so the container does not record the libavformat version.
    ``codec='mpeg4'`` works where a PyAV wheel lacks libx264.
    """
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4", options={"fflags": "+bitexact"}) as container:
        options = {"threads": "1"}
        if codec == "libx264":
            options.update({"crf": str(crf), "preset": "veryfast", "x264-params": "mbtree=0"})
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.height, stream.width = frames.shape[1], frames.shape[2]
        stream.pix_fmt = "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def write_video(path: Path | str, frames: np.ndarray, fps: int = 8, codec: str = "libx264") -> None:
    """Write frames [F, H, W, 3] as an .mp4 file atomically (readers never see half a file)."""
    from fsar.data.paths import atomic_write_bytes

    atomic_write_bytes(Path(path), encode_mp4(frames, fps, codec))
