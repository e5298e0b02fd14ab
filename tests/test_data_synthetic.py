"""The synthetic benchmark: class design, determinism, exact reversals, on-disk layout, CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fsar.cli.data import app
from fsar.data import synthetic as syn
from fsar.data.loaders import list_videos
from fsar.data.registry import get_dataset
from fsar.data.video import load_clip, read_frames

# a small set: three reversed pairs, one pretending class, and classes of every split
SMALL = [syn.class_key("push_lr", "ball"), syn.class_key("push_rl", "ball"), syn.class_key("pretend_push", "ball"),
         syn.class_key("spin_cw", "cup"), syn.class_key("spin_acw", "cup"),
         syn.class_key("cover", "book"), syn.class_key("uncover", "book"),
         syn.class_key("put_on", "ring"), syn.class_key("lift", "book"), syn.class_key("closer", "star")]


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn") / "set"
    return syn.ensure_synthetic(root, videos_per_class=3, size=32, frames=8, seed=5, classes=SMALL,
                                progress=False, quiet=True, workers=1)


def test_class_design():
    info = get_dataset("synthetic")
    rows = syn.class_table()
    assert info.direction_matters and len(info.classes) == len(rows) >= 48
    assert len({r["program"] for r in rows}) >= 12 and len({r["object"] for r in rows}) >= 5
    n = {s: len(info.split(s)) for s in ("train", "val", "test")}
    assert n["train"] == 4 * n["val"] == 4 * n["test"] and n["val"] * 6 == len(rows)  # 2/3, 1/6, 1/6
    train_pairs = {(r["program"], r["object"]) for r in rows if r["split"] == "train"}
    train_programs = {r["program"] for r in rows if r["split"] == "train"}
    train_objects = {r["object"] for r in rows if r["split"] == "train"}
    for r in rows:
        if r["split"] != "train":  # unseen pair, made of a seen motion and a seen object
            assert (r["program"], r["object"]) not in train_pairs
            assert r["program"] in train_programs and r["object"] in train_objects
    for fwd, rev in syn.reversed_pairs():  # both directions of a pair sit in the same split
        assert info.by_key(fwd).split == info.by_key(rev).split
    keys = [c.key for c in info.classes]
    for name in ("rolling a ball from left to right", "putting a cup on top of a box", "pretending to push a star",
                 "spinning a ring clockwise", "uncovering a book", "moving a cup away from the camera"):
        assert name in keys


def test_reversed_classes_are_exact_time_reversals():
    for fwd, rev in [(SMALL[0], SMALL[1]), (SMALL[3], SMALL[4]), (SMALL[5], SMALL[6])]:
        f_frames, f_masks = syn.render_video(fwd, 11, size=32, frames=10)
        r_frames, r_masks = syn.render_video(rev, 11, size=32, frames=10)
        assert np.array_equal(r_frames, f_frames[::-1]) and np.array_equal(r_masks, f_masks[::-1])
        assert not np.array_equal(f_masks, f_masks[::-1])  # and not palindromes


def test_motion_goes_where_the_name_says():
    def centroid_x(mask):
        ys, xs = np.nonzero(mask == syn.MASK_OBJECT)
        return xs.mean()

    for seed in range(3):
        _, m = syn.render_video(syn.class_key("push_lr", "cup"), seed, size=48, frames=12)
        assert centroid_x(m[-1]) - centroid_x(m[0]) > 10  # left to right
        _, m = syn.render_video(syn.class_key("pretend_push", "cup"), seed, size=48, frames=12)
        assert abs(centroid_x(m[-1]) - centroid_x(m[0])) < 2  # goes and comes back
        assert max(centroid_x(f) for f in m) - centroid_x(m[0]) > 3
        _, m = syn.render_video(syn.class_key("closer", "ball"), seed, size=48, frames=12)
        assert (m[-1] == syn.MASK_OBJECT).sum() > 2 * (m[0] == syn.MASK_OBJECT).sum()  # grows


def test_generation_is_deterministic_and_seeded(tmp_path, small_set):
    again = syn.ensure_synthetic(tmp_path / "again", videos_per_class=3, size=32, frames=8, seed=5, classes=SMALL,
                                 progress=False, quiet=True, workers=2)
    a, b = syn.read_manifest(small_set), syn.read_manifest(again)
    assert a["fingerprint"] == b["fingerprint"]  # worker count does not change a byte
    assert (small_set / SMALL[0] / "push_lr-ball-001.mp4").read_bytes() == (again / SMALL[0] / "push_lr-ball-001.mp4").read_bytes()
    other = syn.ensure_synthetic(tmp_path / "other", videos_per_class=3, size=32, frames=8, seed=6, classes=SMALL[:2],
                                 progress=False, quiet=True, workers=1)
    assert not np.array_equal(read_frames(other / SMALL[0] / "push_lr-ball-000.mp4"),
                              read_frames(small_set / SMALL[0] / "push_lr-ball-000.mp4"))
    # an existing folder is reused as is; one made with other settings is never overwritten
    assert syn.ensure_synthetic(again, videos_per_class=3, size=32, frames=8, seed=5, classes=SMALL, quiet=True) == again
    with pytest.raises(FileExistsError, match="was made with other parameters"):
        syn.ensure_synthetic(again, videos_per_class=3, size=32, frames=8, seed=9, classes=SMALL, quiet=True)
    assert not list(tmp_path.glob(".*.tmp-*"))  # no temporary folder left behind


def test_layout_splits_masks_and_loaders(small_set):
    manifest = syn.read_manifest(small_set)
    assert manifest["classes"] == [k for k in (c.key for c in get_dataset("synthetic").classes) if k in SMALL]
    records = list_videos("synthetic", small_set, "train")
    assert len(records) == 3 * sum(get_dataset("synthetic").by_key(k).split == "train" for k in SMALL)
    assert all(r.path.suffix == ".mp4" for r in records)
    rec = records[0]
    masks = syn.load_masks(rec)
    assert masks.shape == (8, 32, 32) and masks.dtype == np.uint8 and (masks == syn.MASK_OBJECT).any()
    assert read_frames(rec.path, 8).shape == (8, 32, 32, 3)  # all 8 frames decode
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    clip, m = syn.load_clip_with_masks(rec, num_frames=4, train=True, size=24, generator=g1)
    assert torch.equal(clip, load_clip(rec, num_frames=4, train=True, size=24, generator=g2))
    assert m.shape == (4, 24, 24) and 0 < float(m.mean()) < 1
    val = list_videos("synthetic", small_set, "val")
    # the reversed pair of the split decodes to (nearly) reversed frames: rendered with different seeds, though
    assert {r.class_key for r in val} <= set(SMALL)


def test_default_benchmark_is_generated_on_demand(fsar_cache, monkeypatch, capsys):
    monkeypatch.setattr(syn, "DEFAULTS", dict(videos_per_class=2, size=32, frames=8, seed=0))
    calls = []
    real = syn.ensure_synthetic

    def small(root=None, **kw):
        calls.append(root)
        return real(fsar_cache / "synthetic", videos_per_class=2, size=32, frames=8, classes=SMALL, progress=False)

    monkeypatch.setattr(syn, "ensure_synthetic", small)
    records = list_videos("synthetic", None, "train")
    assert calls == [None] and records and records[0].root == fsar_cache / "synthetic"
    assert "Generating the synthetic benchmark" in capsys.readouterr().err
    list_videos("synthetic", None, "train")
    assert "Generating" not in capsys.readouterr().err  # second time: it exists


def test_cli_synth_and_info(tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    res = runner.invoke(app, ["synth", "--out", str(out), "--videos-per-class", "1", "--size", "16", "--frames", "4",
                              "--seed", "2", "--no-preview"])
    assert res.exit_code == 0, res.output
    assert "90 classes, 90 videos" in res.output and (out / "manifest.json").is_file()
    victim = out / syn.class_key("push_lr", "ball") / "push_lr-ball-000.mp4"
    victim.write_bytes(victim.read_bytes()[:100])
    res = runner.invoke(app, ["info", "--dataset", "synthetic", "--root", str(out), "--no-classes"])
    assert res.exit_code == 0, res.output
    assert "unreadable" in res.output and "push_lr-ball-000.mp4" in res.output
    assert json.loads((out / "manifest.json").read_text())["splits"] == {"train": 60, "val": 15, "test": 15}
    res = runner.invoke(app, ["synth", "--out", str(out), "--size", "33"])
    assert res.exit_code != 0 and "even number" in res.output
