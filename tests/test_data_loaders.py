"""Loaders of the real layouts and split-list formats, on small real videos and frame folders."""
from __future__ import annotations

import json
import warnings

import pytest
import torch

from fsar.data.framecache import ClipDataset, collate_clips
from fsar.data.loaders import fingerprint, list_videos, parse_split_file, scan
from fsar.data.registry import get_dataset
from fsar.data.video import UnreadableVideo, filter_readable, load_clip

from _data_helpers import frame_index, make_video_root, write_indexed_video

HMDB = get_dataset("hmdb51")


def test_video_files_layout_lists_the_split_classes(tmp_path):
    val = [c.key for c in HMDB.split("val")]
    train = [c.key for c in HMDB.split("train")][:2]
    made = make_video_root(tmp_path, val + train, per_class=2)
    records = list_videos("hmdb51", tmp_path, "val")
    assert len(records) == 2 * len(val)
    assert {r.class_key for r in records} == set(val)  # train folders are not part of val
    assert [r.label for r in records] == sorted(r.label for r in records)
    for r in records:
        assert r.label == HMDB.by_key(r.class_key).index and r.split == "val" and r.path.is_file()
        assert r.video_id in made[r.class_key]
    assert list_videos("hmdb51", tmp_path, "val") == records  # deterministic order


def test_frame_folder_layout_decodes_jpgs(tmp_path):
    test = [c.key for c in HMDB.split("test")]
    make_video_root(tmp_path, test, per_class=1, frames=True, n=10)
    records = list_videos("hmdb51", tmp_path, "test")
    assert len(records) == len(test) and all(r.path.is_dir() for r in records)
    clip = load_clip(records[0], num_frames=5, size=16)
    assert clip.shape == (5, 3, 16, 16) and clip.dtype == torch.uint8
    # 10 frames, 5 segments of 2: centres are frames 1, 3, 5, 7, 9
    assert [frame_index(f) for f in clip] == [1, 3, 5, 7, 9]


def test_class_name_split_list(tmp_path):
    val = [c.key for c in HMDB.split("val")]
    made = make_video_root(tmp_path, val, per_class=3)
    lines = [f"{k}/{made[k][0]}.avi 1" for k in val[:4]] + [f"{val[4]}/{made[val[4]][1]}"]
    split_file = tmp_path / "vallist.txt"
    split_file.write_text("\n".join(lines) + "\n")
    records = list_videos("hmdb51", tmp_path, "val", split_file)
    assert [(r.class_key, r.video_id) for r in records] == [(k, made[k][0]) for k in val[:4]] + [(val[4], made[val[4]][1])]


def test_split_index_list_points_into_the_registry_split(tmp_path):
    val = [c.key for c in HMDB.split("val")]
    made = make_video_root(tmp_path, val, per_class=1)
    split_file = tmp_path / "val.txt"
    split_file.write_text(f"val3/{made[val[3]][0]}\nval0/{made[val[0]][0]}\n")
    records = list_videos("hmdb51", tmp_path, "val", split_file)
    assert {r.class_key for r in records} == {val[0], val[3]}
    split_file.write_text("val10/x\n")
    with pytest.raises(ValueError, match="line 1: class index 10 is out of range"):
        parse_split_file(split_file, HMDB)
    split_file.write_text("no slash here\n")
    with pytest.raises(ValueError, match="line 1"):
        parse_split_file(split_file, HMDB)


def test_split_list_entries_without_files_are_counted_not_fatal(tmp_path):
    val = [c.key for c in HMDB.split("val")]
    made = make_video_root(tmp_path, val[:1], per_class=1)
    split_file = tmp_path / "val.txt"
    split_file.write_text(f"{val[0]}/{made[val[0]][0]}\n{val[1]}/gone_video\n")
    listing = scan("hmdb51", tmp_path, "val", split_file)
    assert len(listing.records) == 1 and listing.missing == [f"{val[1]}/gone_video"]
    with pytest.warns(UserWarning, match="1 videos of the split list are missing"):
        list_videos("hmdb51", tmp_path, "val", split_file)


def test_ssv2_flat_ids_with_label_json(tmp_path):
    info = get_dataset("ssv2_small")
    test = [c.key for c in info.split("test")]
    root = tmp_path / "20bn-something-something-v2"
    labels = []
    for i, key in enumerate(test[:3]):
        for j in range(2):
            vid = str(1000 + 10 * i + j)
            write_indexed_video(root / f"{vid}.mp4", n=8)
            labels.append({"id": vid, "label": "x", "template": key.replace("something", "[something]", 1)})
    labels.append({"id": "99999", "label": "x", "template": info.split("train")[0].key})  # another split
    (tmp_path / "something-something-v2-validation.json").write_text(json.dumps(labels))
    records = list_videos("ssv2_small", root, "test")
    assert len(records) == 6 and {r.class_key for r in records} == set(test[:3])
    assert all(r.path.parent == root for r in records)


def test_missing_root_gives_one_line_error_with_layouts(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist; expected root/<class>/<video>") as e:
        list_videos("hmdb51", tmp_path / "nope", "val")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="needs --root"):
        list_videos("ucf101", None, "val")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no folder for any val class"):
        list_videos("hmdb51", tmp_path / "empty", "val")


def test_truncated_and_corrupt_files_are_skipped_and_counted(tmp_path):
    val = [c.key for c in HMDB.split("val")]
    make_video_root(tmp_path, val, per_class=2)
    records = list_videos("hmdb51", tmp_path, "val")
    cut = records[0].path
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])  # truncated mid-file
    records[3].path.write_bytes(b"not a video at all" * 20)
    with pytest.raises(UnreadableVideo):
        load_clip(records[0])
    with pytest.warns(UserWarning, match="skipped 2 unreadable of 20"):
        good, bad = filter_readable(records)
    assert len(good) == 18 and {r.path for r, _ in bad} == {records[0].path, records[3].path}
    ds = ClipDataset(records[:4], num_frames=4, size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = collate_clips([ds[i] for i in range(4)])
    assert batch[0].shape == (2, 4, 3, 16, 16) and set(ds.unreadable) == {0, 3}


def test_fingerprint_tracks_content_and_labels(tmp_path):
    val = [c.key for c in HMDB.split("val")]
    make_video_root(tmp_path / "a", val, per_class=1)
    make_video_root(tmp_path / "b", val, per_class=1)
    ra, rb = list_videos("hmdb51", tmp_path / "a", "val"), list_videos("hmdb51", tmp_path / "b", "val")
    assert fingerprint(ra) == fingerprint(rb)  # relative paths: the same data in another place
    write_indexed_video(ra[0].path, n=20)
    assert fingerprint(list_videos("hmdb51", tmp_path / "a", "val")) != fingerprint(rb)
    assert fingerprint(rb[1:]) != fingerprint(rb)


def test_truncated_avi_is_detected_from_its_header_frame_count(tmp_path):
    import av
    import numpy as np

    from fsar.data.video import count_frames

    path = tmp_path / "clip.avi"
    frames = np.random.default_rng(0).integers(0, 255, (40, 32, 32, 3)).astype(np.uint8)
    with av.open(str(path), "w") as container:  # AVI + MPEG-4 part 2, as in HMDB51 and UCF101
        stream = container.add_stream("mpeg4", rate=25)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    assert count_frames(path) == 40
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UnreadableVideo, match="truncated: decoded \\d+ of 40 frames"):
        load_clip(path)
