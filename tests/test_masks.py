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


def test_cli_masks_writes_skips_and_counts(tmp_path, span_set, monkeypatch):
    import shutil

    from typer.testing import CliRunner

    from fsar.cli.data import app

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = tmp_path / "set"
    shutil.copytree(span_set, root)
    for p in root.rglob("*.masks.npz"):
        p.unlink()
    seg = _tiny_clipseg(tmp_path / "clipseg")
    records = list_videos("synthetic", root, "train")
    records[1].path.write_bytes(b"not a video")
    run = ["masks", "--dataset", "synthetic", "--root", str(root), "--split", "train", "--segmenter-path", str(seg),
           "--no-progress"]
    res = CliRunner().invoke(app, run)
    assert res.exit_code == 0, res.output
    assert f"{len(records) - 1} written, 0 already current, 1 unreadable" in res.output
    masks = syn.load_masks(records[0])
    assert masks.shape == (16, 64, 64) and masks.dtype == np.uint8 and set(np.unique(masks)) <= {0, 1}
    again = CliRunner().invoke(app, run)
    assert f"0 written, {len(records) - 1} already current, 1 unreadable" in again.output
    missing = CliRunner().invoke(app, run[:-3] + ["--segmenter-path", str(tmp_path / "nowhere"), "--no-progress"])
    assert missing.exit_code == 2 and "--segmenter-path" in missing.output
    assert len(missing.output.strip().splitlines()) == 1
