"""Acting-object masks and action spans of the synthetic benchmark."""
from __future__ import annotations

import numpy as np
import torch
import pytest

from fsar.data import synthetic as syn
from fsar.data.loaders import list_videos
from fsar.model.features import derived_seed

CLASSES = [syn.class_key("push_lr", "ball"), syn.class_key("push_rl", "ball"), syn.class_key("pretend_push", "ball"),
           syn.class_key("lift", "book"), syn.class_key("closer", "star")]


@pytest.fixture(scope="module")
def span_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("span") / "set"
    return syn.ensure_synthetic(root, videos_per_class=2, size=24, frames=16, seed=3, classes=CLASSES,
                                progress=False, quiet=True, workers=1)


def test_action_span_matches_where_the_hand_acts(span_set):
    records = [r for split in ("train", "val", "test") for r in list_videos("synthetic", span_set, split)]
    assert {r.class_key for r in records} == set(CLASSES)
    spans, with_hand = [], 0
    for rec in records:
        onset, offset = syn.action_span(rec)
        assert 0 <= onset < offset <= 1 and 0.35 <= offset - onset <= 0.8
        masks = syn.load_masks(rec)
        tau = np.arange(len(masks)) / (len(masks) - 1)
        hand = (masks == syn.MASK_HAND).any(axis=(1, 2))
        # the renderer paints the hand exactly while a - 0.06 <= tau <= a + d + 0.06 (it may be hidden behind props)
        assert ((tau[hand] >= onset - 0.06 - 1e-9) & (tau[hand] <= offset + 0.06 + 1e-9)).all(), rec.video_id
        with_hand += bool(hand.any())
        spans.append((onset, offset))
    assert with_hand >= len(records) - 1
    assert len(set(spans)) == len(spans)  # drawn per video, not a constant



def _square_video(folder, name: str, n: int = 12, size: int = 48):
    """A dark video with a bright square that moves, and its mask file marking the square."""
    from fsar.data.loaders import VideoRecord
    from fsar.data.video import encode_mp4

    frames = np.full((n, size, size, 3), 20, np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    for t in range(n):
        x = 4 + 2 * t
        frames[t, 10:26, x:x + 12] = 230
        masks[t, 10:26, x:x + 12] = 1
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.mp4"
    path.write_bytes(encode_mp4(frames))
    np.savez_compressed(folder / f"{name}.masks.npz", masks=masks)
    return VideoRecord(path=path, class_key="x", label=0, video_id=name, dataset="hmdb51")


@pytest.mark.parametrize("frame_cache", [False, True])
def test_masks_follow_the_clip_geometry(tmp_path, fsar_cache, frame_cache):
    from fsar.core.errors import FsarError
    from fsar.model.features import ClipLoader

    recs = [_square_video(tmp_path / "v", f"a{i}") for i in range(3)]
    (tmp_path / "v" / "a2.masks.npz").unlink()  # a video without masks
    loader = ClipLoader(recs, num_frames=4, size=32, norm="clip", seed=1, frame_cache=frame_cache, mask_size=32)
    assert loader.mask_available()
    plain = loader.train_clips([0, 1, 2], episode=3)
    clips, masks, has = loader.train_clips([0, 1, 2], episode=3, with_masks=True)
    assert torch.equal(clips, plain)  # the masks change nothing about the clips
    assert masks.shape == (3, 4, 32, 32) and has.tolist() == [True, True, False]
    assert float(masks[2].abs().sum()) == 0 and 0 < float(masks[:2].mean()) < 1
    for ep in range(4):  # the mask moves with the pixels: bright inside, dark outside, whatever the crop and flip
        c, m, _ = loader.train_clips([0, 1], episode=ep, with_masks=True)
        lum = c.mean(dim=2)  # b t h w
        assert float(lum[m > 0.9].mean()) > float(lum[m < 0.1].mean()) + 1.0
    test, tmasks, thas = loader.test_clips([0, 2], with_masks=True)
    assert torch.equal(test, loader.test_clips([0, 2])) and thas.tolist() == [True, False]
    lum = test.mean(dim=2)
    assert float(lum[0][tmasks[0] > 0.9].mean()) > float(lum[0][tmasks[0] < 0.1].mean()) + 1.0
    vm, vh = loader.view_masks([0, 2], view=0)
    assert torch.equal(vm, tmasks) and vh.tolist() == [True, False]
    vm2, _ = loader.view_masks([0, 1], view=2)
    g = torch.Generator().manual_seed(derived_seed(1, 104729, 2, 1))
    clip, m, _ = loader.clip_and_mask(1, train=True, generator=g)
    assert torch.equal(vm2[1], m) and not torch.equal(vm2[1], tmasks[0])
    g = torch.Generator().manual_seed(derived_seed(1, 104729, 2, 1))
    assert torch.equal(clip, loader.clip(1, train=True, generator=g))  # the view extract_features caches
    (tmp_path / "v" / "a1.masks.npz").write_bytes(b"not a zip")
    with pytest.raises(FsarError, match="a1.masks.npz.*fsar-data masks"):
        loader.test_clips([1], with_masks=True)
    small = ClipLoader(recs[:1], num_frames=4, size=32, norm="clip")
    assert small.test_clips([0], with_masks=True)[1].shape == (1, 4, 8, 8)  # default S = size // 4


def _tiny_clipseg(folder):
    """A CLIPSeg with a small random config and an offline processor (tiny letter vocabulary, CLIP normalisation)."""
    import json

    from transformers import (CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor, CLIPTokenizer,
                              ViTImageProcessor)

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    images = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.48145466, 0.4578275, 0.40821073],
                               image_std=[0.26862954, 0.26130258, 0.27577711])
    CLIPSegProcessor(image_processor=images, tokenizer=tok).save_pretrained(folder)
    text = dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=64, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)
    cfg = CLIPSegConfig(text_config=text, vision_config=vision, projection_dim=8, reduce_dim=8, extract_layers=[0],
                        decoder_num_attention_heads=2, decoder_intermediate_size=16)
    torch.manual_seed(0)
    CLIPSegForImageSegmentation(cfg).save_pretrained(folder)
    return folder


def _strip_masks(span_set, folder):
    """A copy of the synthetic set without its ground-truth mask files (as a real data set is)."""
    import shutil

    root = folder / "set"
    shutil.copytree(span_set, root)
    for p in root.rglob("*.masks.npz"):
        p.unlink()
    return root


def _tree(root):
    """Every path under ``root`` with its size and modification time: what a writer under the root would change."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_cli_masks_writes_skips_and_counts(tmp_path, span_set, fsar_cache, monkeypatch):
    import shutil

    from typer.testing import CliRunner

    from fsar.cli.data import app
    from fsar.data.masks import find_mask_file, mask_file

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = _strip_masks(span_set, tmp_path)
    seg = _tiny_clipseg(tmp_path / "clipseg")
    records = list_videos("synthetic", root, "train")
    records[1].path.write_bytes(b"not a video")
    run = ["masks", "--dataset", "synthetic", "--root", str(root), "--split", "train", "--segmenter-path", str(seg),
           "--no-progress"]
    res = CliRunner().invoke(app, run)
    assert res.exit_code == 0, res.output
    assert f"{len(records) - 1} written, 0 already current, 1 unreadable" in res.output
    path = mask_file(records[0])
    assert path.is_relative_to(fsar_cache / "frames" / "masks" / "synthetic") and find_mask_file(records[0]) == path
    assert not list(root.rglob("*.masks.npz"))  # nothing beside the videos
    with np.load(path) as data:
        masks = data["masks"]
        assert str(data["prompt"]) == records[0].class_key  # the synthetic class name is its key
    assert masks.shape == (16, 64, 64) and masks.dtype == np.uint8 and set(np.unique(masks)) <= {0, 1}
    again = CliRunner().invoke(app, run)
    assert f"0 written, {len(records) - 1} already current, 1 unreadable" in again.output
    # a changed video never meets the masks of its old content: it gets a new mask file
    shutil.copyfile(records[2].path, records[0].path)
    assert mask_file(records[0]) != path and find_mask_file(records[0]) is None
    changed = CliRunner().invoke(app, run)
    assert f"1 written, {len(records) - 2} already current, 1 unreadable" in changed.output
    missing = CliRunner().invoke(app, run[:-3] + ["--segmenter-path", str(tmp_path / "nowhere"), "--no-progress"])
    assert missing.exit_code == 2 and "--segmenter-path" in missing.output
    assert len(missing.output.strip().splitlines()) == 1


def test_masks_of_a_read_only_root_are_read_back(tmp_path, span_set, fsar_cache):
    import shutil

    from typer.testing import CliRunner

    from fsar.cli.data import app
    from fsar.data.masks import find_mask_file, mask_file
    from fsar.model.features import ClipLoader

    root = _strip_masks(span_set, tmp_path)
    seg = _tiny_clipseg(tmp_path / "clipseg")
    records = list_videos("synthetic", root, "test")
    before = _tree(root)
    paths = [root, *root.rglob("*")]
    for p in paths:
        p.chmod(p.stat().st_mode & ~0o222)  # read-only (a root user ignores it; the tree comparison below does not)
    try:
        res = CliRunner().invoke(app, ["masks", "--dataset", "synthetic", "--root", str(root), "--split", "test",
                                       "--segmenter-path", str(seg), "--no-progress"])
    finally:
        for p in paths:
            p.chmod(p.stat().st_mode | 0o200)
    assert res.exit_code == 0, res.output
    assert f"{len(records)} written, 0 already current, 0 unreadable" in res.output
    assert _tree(root) == before  # the data root is only read
    assert all(find_mask_file(r) == mask_file(r) for r in records)
    loader = ClipLoader(records, num_frames=4, size=32, norm="clip", mask_size=8)
    assert loader.mask_available()
    clips, masks, has = loader.test_clips(range(len(records)), with_masks=True)
    assert has.all() and masks.shape == (len(records), 4, 8, 8)
    mask_file(records[0]).unlink()  # it is the file beside the frame cache that the loader found
    assert loader.test_clips([0, 1], with_masks=True)[2].tolist() == [False, True]
    # the segmenter's file comes before a <video>.masks.npz beside the video: all ones beats the sparse ground truth
    syn_root = tmp_path / "gt"
    shutil.copytree(span_set, syn_root)
    rec = list_videos("synthetic", syn_root, "test")[0]
    gt = ClipLoader([rec], num_frames=4, size=32, norm="clip", mask_size=8).test_clips([0], with_masks=True)[1]
    assert float(gt.mean()) < 0.5
    mask_file(rec).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(mask_file(rec), masks=np.ones((16, 64, 64), np.uint8), prompt=np.array("x"),
                        segmenter=np.array("hand"))
    ones = ClipLoader([rec], num_frames=4, size=32, norm="clip", mask_size=8).test_clips([0], with_masks=True)[1]
    assert float(ones.mean()) == 1.0


def _save_synthetic_dist(keys, phrases):
    """A hand-written dist knowledge set of the synthetic data set for ``keys`` (as tests/_knowledge_helpers does)."""
    from _knowledge_helpers import make_row

    from fsar.data.registry import get_dataset
    from fsar.knowledge.store import save_knowledge

    rows = [make_row(c.index, c.key, c.name, c.split, {"spatial": phrases(c.key), "temporal": [
        "the hand reaches the object", "the object moves", "the hand lets go", "the object rests"]})
        for c in get_dataset("synthetic").classes if c.key in keys]
    return save_knowledge("synthetic", "dist", "handwritten", rows)


def test_knowledge_prompt_reads_the_dist_knowledge(tmp_path, span_set, fsar_cache):
    from typer.testing import CliRunner

    from fsar.cli.data import app
    from fsar.data.masks import class_prompts, mask_file

    root = _strip_masks(span_set, tmp_path)
    seg = _tiny_clipseg(tmp_path / "clipseg")
    records = list_videos("synthetic", root, "train")
    keys = {r.class_key for r in records}
    run = ["masks", "--dataset", "synthetic", "--root", str(root), "--split", "train", "--segmenter-path", str(seg),
           "--prompt", "knowledge", "--no-progress"]
    none = CliRunner().invoke(app, run)  # no dist knowledge at all
    assert none.exit_code == 2 and len(none.output.strip().splitlines()) == 1
    assert "fsar-knowledge generate --dataset synthetic --kind dist" in none.output
    assert not (fsar_cache / "frames" / "masks").exists()

    first = sorted(keys)[0]
    _save_synthetic_dist(keys - {first}, lambda k: [f"the moving {k.split()[-1]} object", "a plain table"])
    partial = CliRunner().invoke(app, run)  # a class of the split has no knowledge
    assert partial.exit_code == 2 and len(partial.output.strip().splitlines()) == 1
    assert first in partial.output and "fsar-knowledge generate --dataset synthetic --kind dist" in partial.output

    _save_synthetic_dist(keys, lambda k: [f"the moving {k.split()[-1]} object", "a plain table"])
    prompts = class_prompts("synthetic", keys, "knowledge")
    assert prompts == {k: f"{k}, the moving {k.split()[-1]} object" for k in keys}  # name + first spatial phrase
    assert class_prompts("synthetic", keys, "name") == {k: k for k in keys}
    res = CliRunner().invoke(app, run)
    assert res.exit_code == 0, res.output
    assert f"{len(records)} written" in res.output and "prompt: knowledge" in res.output
    for rec in records:
        with np.load(mask_file(rec)) as data:
            assert str(data["prompt"]) == prompts[rec.class_key] and "the moving" in str(data["prompt"])
    # switching back to name prompts redoes every file (the prompt is part of what makes a file current)
    back = CliRunner().invoke(app, run[:-3] + ["--prompt", "name", "--no-progress"])
    assert f"{len(records)} written, 0 already current" in back.output
    bad = CliRunner().invoke(app, run[:-3] + ["--prompt", "objects", "--no-progress"])
    assert bad.exit_code == 2 and "--prompt 'objects'" in bad.output
