"""Frame sampling, decoding and the torch transforms."""
from __future__ import annotations

import pytest
import torch

from fsar.data import transforms as T
from fsar.data.loaders import VideoRecord
from fsar.data.video import UnreadableVideo, count_frames, load_clip, read_frames, sample_frames, segment_indices

from _data_helpers import frame_index, write_indexed_video


def test_segment_indices_test_centres_and_train_within_segments():
    assert segment_indices(16, 8) == [1, 3, 5, 7, 9, 11, 13, 15]
    assert segment_indices(10, 5) == [1, 3, 5, 7, 9]
    assert segment_indices(3, 8) == [0, 0, 0, 1, 1, 2, 2, 2]  # short videos repeat frames, in order
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(50):
        idx = segment_indices(40, 8, train=True, generator=g)
        assert all(5 * i <= j < 5 * (i + 1) for i, j in enumerate(idx))
        seen.add(tuple(idx))
    assert len(seen) > 40  # really random at train
    a = segment_indices(40, 8, True, torch.Generator().manual_seed(9))
    assert a == segment_indices(40, 8, True, torch.Generator().manual_seed(9))


def test_decoding_picks_the_segment_centres(tmp_path):
    path = write_indexed_video(tmp_path / "v.mp4", n=16, size=32, width=48)
    assert count_frames(path) == 16
    frames = read_frames(path, 8)
    assert frames.shape == (8, 32, 48, 3)
    assert [frame_index(f) for f in frames] == [1, 3, 5, 7, 9, 11, 13, 15]


def test_test_time_clips_are_deterministic_and_train_clips_follow_the_generator(tmp_path):
    path = write_indexed_video(tmp_path / "v.mp4", n=16, size=40, width=56)
    rec = VideoRecord(path=path, class_key="x", label=0, video_id="v")
    a, b = load_clip(rec, 4, size=24), load_clip(rec, 4, size=24)
    assert a.shape == (4, 3, 24, 24) and a.dtype == torch.uint8 and torch.equal(a, b)
    torch.manual_seed(0)
    c = load_clip(rec, 4, train=True, size=24, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(1)  # the global RNG must not matter
    d = load_clip(rec, 4, train=True, size=24, generator=torch.Generator().manual_seed(5))
    assert torch.equal(c, d)
    frames, idx = sample_frames(path, 4, train=True, generator=torch.Generator().manual_seed(5))
    assert [frame_index(f) for f in frames] == idx and all(4 * i <= j < 4 * (i + 1) for i, j in enumerate(idx))


def test_unreadable_files_raise_the_specific_error(tmp_path):
    with pytest.raises(UnreadableVideo, match="does not exist"):
        load_clip(tmp_path / "missing.mp4")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 1000)
    with pytest.raises(UnreadableVideo) as e:
        read_frames(bad)
    assert e.value.path == bad
    (tmp_path / "empty_frames").mkdir()
    with pytest.raises(UnreadableVideo, match="no .jpg"):
        read_frames(tmp_path / "empty_frames")


def test_flip_follows_direction_matters(tmp_path):
    import numpy as np

    from fsar.data.video import encode_mp4

    arr = np.zeros((8, 32, 64, 3), dtype=np.uint8)
    arr[:] = (255 - 4 * np.arange(64))[None, None, :, None]  # bright on the left, dark on the right
    path = tmp_path / "half.mp4"
    path.write_bytes(encode_mp4(arr))

    def left_brighter(rec, seed):
        clip = load_clip(rec, 2, train=True, size=16, generator=torch.Generator().manual_seed(seed))
        return clip[..., :8].float().mean() > clip[..., 8:].float().mean()

    ssv2 = VideoRecord(path=path, class_key="x", label=0, video_id="v", dataset="ssv2_small")
    hmdb = VideoRecord(path=path, class_key="x", label=0, video_id="v", dataset="hmdb51")
    assert all(left_brighter(ssv2, s) for s in range(12))  # never flipped where direction is the label
    flips = [not left_brighter(hmdb, s) for s in range(24)]
    assert 0 < sum(flips) < 24
    forced = load_clip(ssv2, 2, train=True, size=16, flip=True, generator=torch.Generator().manual_seed(0))
    assert forced[..., :8].float().mean() < forced[..., 8:].float().mean()  # flip=True overrides


def test_transforms_shapes_and_normalisation():
    x = torch.randint(0, 256, (4, 3, 30, 50), dtype=torch.uint8)
    assert T.resize_short_side(x, 15).shape == (4, 3, 15, 25)
    assert T.center_crop(T.resize_short_side(x, 15), 15).shape == (4, 3, 15, 15)
    assert T.test_transform(x, 21).shape == (4, 3, 21, 21)
    g = torch.Generator().manual_seed(0)
    y = T.train_transform(x, 21, generator=g, flip=True)
    assert y.shape == (4, 3, 21, 21) and y.dtype == torch.uint8
    white = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    assert torch.allclose(T.normalize(white, "tiny"), torch.ones(2, 3, 4, 4))
    clip = T.normalize(white, "clip")
    assert clip.dtype == torch.float32
    assert torch.allclose(clip[0, :, 0, 0], (1 - torch.tensor(T.NORMALIZATION["clip"][0])) / torch.tensor(T.NORMALIZATION["clip"][1]))
    assert not torch.allclose(T.normalize(white, "resnet50"), clip)
    with pytest.raises(KeyError, match="no normalisation for backbone 'vgg'"):
        T.normalize(white, "vgg")
    jit = T.color_jitter(x.float() / 255, generator=torch.Generator().manual_seed(1))
    assert jit.min() >= 0 and jit.max() <= 1 and not torch.allclose(jit, x.float() / 255)


def test_encoding_is_a_function_of_the_frames():
    """Short synthetic clips of several sizes, each encoded 12 times, interleaved (what generation does): one
    bitstream per clip. libx264's default macroblock-tree rate control gave 2-3 bitstreams for some of these."""
    import hashlib

    from fsar.data import synthetic as syn
    from fsar.data.video import encode_mp4

    keys = list(syn._BY_KEY)
    clips = [syn.render_video(keys[i], [5, 1, i], size, 8)[0] for i, size in enumerate((32, 16, 64, 32, 48))]
    seen: list[set[str]] = [set() for _ in clips]
    for _ in range(12):
        for clip, digests in zip(clips, seen):
            digests.add(hashlib.sha256(encode_mp4(clip)).hexdigest())
    assert [len(d) for d in seen] == [1] * len(clips)
    data = encode_mp4(clips[0])
    assert b"Lavf" not in data  # bitexact: the libavformat version is not written into the file
