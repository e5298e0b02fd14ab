"""The frame cache: equal to decoding, no decoding once built, atomic, keyed by records and settings."""
from __future__ import annotations

import warnings

import pytest
import torch

from fsar.data.framecache import ClipDataset, FrameCache
from fsar.data.loaders import list_videos
from fsar.data.registry import get_dataset
from fsar.data.video import UnreadableVideo, load_clip

from _data_helpers import make_video_root


@pytest.fixture
def records(tmp_path):
    val = [c.key for c in get_dataset("hmdb51").split("val")][:3]
    make_video_root(tmp_path / "videos", val, per_class=2, n=12)
    with pytest.warns(UserWarning, match="lacks 7 of 10 val class folders"):
        return list_videos("hmdb51", tmp_path / "videos", "val")


def test_cached_clips_equal_decoded_clips_and_need_no_video(records, fsar_cache):
    cache = FrameCache(records, num_frames=4, size=24)
    assert not cache.exists()
    cache.build(progress=False)
    assert cache.exists() and cache.path.parent == fsar_cache / "frames"
    expected = [load_clip(r, 4, size=24) for r in records]
    for r in records:  # from now on nothing can be decoded (same sizes: same fingerprint, same cache)
        r.path.write_bytes(b"\0" * r.path.stat().st_size)
    again = FrameCache(records, num_frames=4, size=24).build(progress=False)  # reuses the file
    for i, clip in enumerate(expected):
        assert torch.equal(again.clip(i), clip)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    a, b = again.clip(0, train=True, generator=g1), again.clip(0, train=True, generator=g2)
    assert a.shape == (4, 3, 24, 24) and torch.equal(a, b)
    ds = ClipDataset(records, num_frames=4, size=24, cache=again, backbone="tiny")
    x, label = ds[2]
    assert x.dtype == torch.float32 and label == records[2].label and torch.allclose(x * 255, expected[2].float())
    assert not list(fsar_cache.glob("frames/.*tmp*"))  # no temporary file left


def test_cache_key_follows_records_and_settings(records, fsar_cache):
    base = FrameCache(records, 4, 24)
    assert FrameCache(records, 4, 24).path == base.path
    assert FrameCache(records, 8, 24).path != base.path
    assert FrameCache(records, 4, 32).path != base.path
    assert FrameCache(records[1:], 4, 24).path != base.path


def test_half_written_cache_is_never_used(records, fsar_cache):
    cache = FrameCache(records, 4, 24)
    cache.folder.mkdir(parents=True)
    cache.path.write_bytes(b"\x93NUMPY garbage from a killed run")  # array without its sidecar
    assert not cache.exists()
    with pytest.raises(FileNotFoundError, match="call FrameCache.build"):
        cache.open()
    cache.build(progress=False)
    assert torch.equal(cache.clip(0), load_clip(records[0], 4, size=24))


def test_unreadable_videos_are_counted_in_the_cache(records, fsar_cache):
    records[1].path.write_bytes(b"broken")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cache = FrameCache(records, 4, 24).build(progress=False)
    assert list(cache.unreadable) == [1] and cache.readable() == [0, 2, 3, 4, 5]
    with pytest.raises(UnreadableVideo):
        cache.clip(1)
