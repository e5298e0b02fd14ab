"""Heads, registry and backbones: shapes, order awareness, tuning, one-line errors."""
from __future__ import annotations

import pytest
import torch

from fsar.model.batch import EpisodeBatch
from fsar.model.backbones import BackboneUnavailable, build_backbone, parse_tune
from fsar.model.fewshot import FewShotModel
from fsar.model.registry import Head, HeadOutput, build_method, get_method, list_methods, register_method

from _model_helpers import one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

BASELINES = ["prototype", "otam", "bimhm", "trx", "clipfsar"]


def _episode(e=2, n=5, k=2, q=3, t=8, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(e, n, k, t, d, generator=g), torch.randn(e, q, t, d, generator=g)


def test_registry_lists_baselines_and_rejects_unknown():
    assert set(BASELINES) <= set(list_methods())
    with pytest.raises(KeyError, match="unknown method 'nope'; choose one of: .*otam"):
        get_method("nope")
    with pytest.raises(ValueError, match="unknown option.*wrong.*accepts: lam, scale"):
        build_method("otam", dim=8, num_frames=8, wrong=1)


@pytest.mark.parametrize("name", BASELINES)
def test_head_shapes_and_gradients(name):
    head = build_method(name, dim=16, num_frames=8, text_dim=12)
    support, query = _episode()
    support.requires_grad_(True)
    text = {"names": torch.nn.functional.normalize(torch.randn(2, 5, 12), dim=-1)}
    labels = torch.randint(0, 5, (2, 3))
    out = head(EpisodeBatch(support, query, labels, text if head.needs_text else None))
    assert out.logits.shape == (2, 3, 5) and torch.isfinite(out.logits).all()
    loss = head.loss(out, EpisodeBatch(support, query, labels))
    expected = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), labels.flatten()) + sum(out.aux_losses.values())
    assert torch.allclose(loss, expected)  # the default loss: cross-entropy plus the head's aux losses
    loss.backward()
    assert support.grad is not None and support.grad.abs().sum() > 0
    if name == "clipfsar":
        assert set(out.aux_losses) == {"video_text"}
        assert head.text_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", BASELINES)
def test_heads_score_episodes_independently(name):
    """Scoring a batch of episodes equals scoring them one by one (the cached evaluator relies on it)."""
    head = build_method(name, dim=16, num_frames=8, text_dim=12).eval()
    support, query = _episode(e=3)
    text = {"names": torch.randn(3, 5, 12)} if head.needs_text else None
    together = head(EpisodeBatch(support, query, text=text)).logits
    for i in range(3):
        one = head(EpisodeBatch(support[i : i + 1], query[i : i + 1],
                                text={"names": text["names"][i : i + 1]} if text else None)).logits
        assert torch.allclose(together[i : i + 1], one, atol=1e-5)


def test_order_aware_heads_separate_a_reversed_pair_and_prototype_cannot():
    """Class 0 is a frame sequence, class 1 the same frames reversed; the query is class 0 with a little noise."""
    g = torch.Generator().manual_seed(3)
    seq = torch.randn(8, 32, generator=g)
    support = torch.stack([seq, seq.flip(0)])[None, :, None]  # [1, 2, 1, 8, 32]
    query = (seq + 0.05 * torch.randn(8, 32, generator=g))[None, None]
    torch.manual_seed(0)
    for name in ["otam", "bimhm", "trx"]:
        logits = build_method(name, dim=32, num_frames=8).eval()(EpisodeBatch(support, query)).logits[0, 0]
        assert logits[0] > logits[1], name
    proto = build_method("prototype", dim=32, num_frames=8)(EpisodeBatch(support, query)).logits[0, 0]
    assert torch.allclose(proto[0], proto[1])  # same frames, same mean: order-blind


@pytest.mark.slow  # importing the CLIP modelling code of transformers takes 10-20 s on a busy CPU
def test_register_custom_token_head_gets_tokens_with_global_first():
    @register_method("test_tokens")
    class TokenHead(Head):
        needs_tokens = True

        def __init__(self, dim, num_frames, text_dim=None):
            super().__init__(dim, num_frames, text_dim)
            self.w = torch.nn.Linear(dim, 1)

        def forward(self, batch):
            support, query = batch.support, batch.query
            self.seen = (support.shape, query.shape)
            s = support[..., 0, :].mean(dim=(2, 3))  # global tokens -> [E, N, D]
            return HeadOutput(query[..., 1:, :].mean(dim=(2, 3)) @ s.transpose(-1, -2) + self.w(s).squeeze(-1)[:, None])

    from transformers import CLIPVisionConfig

    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
    model = FewShotModel(build_backbone("clip", config=cfg, tune="frozen"), build_method("test_tokens", 32, 4))
    out = model(EpisodeBatch(torch.randn(1, 3, 2, 4, 3, 32, 32), torch.randn(1, 3, 4, 3, 32, 32)))
    assert out.logits.shape == (1, 3, 3)
    assert model.head.seen == ((1, 3, 2, 4, 17, 32), (1, 3, 4, 17, 32))  # 1 class token + 4 x 4 patches


def test_backbone_tokens_and_tuning():
    tiny = build_backbone("tiny", tune="full")
    x = tiny(torch.rand(2, 3, 64, 64))
    assert x.shape == (2, 1 + 16, 128)  # 4 x 4 map at 64 px
    assert torch.allclose(x[:, 0], x[:, 1:].mean(dim=1), atol=1e-6)  # global token = pooled map
    assert torch.equal(build_backbone("tiny", seed=1).layers[0][0].weight, build_backbone("tiny", seed=1).layers[0][0].weight)
    last = build_backbone("tiny", tune=2)
    trainable = {n.split(".")[1] for n, p in last.named_parameters() if p.requires_grad and n.startswith("layers.")}
    assert trainable == {"2", "3"} and last.out_norm.weight.requires_grad  # last 2 blocks + the final norm
    frozen = build_backbone("tiny", tune="frozen").train()
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())

    from transformers import ResNetConfig

    cfg = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1], layer_type="basic")
    res = build_backbone("resnet50", config=cfg, tune=1).train()
    assert res(torch.rand(2, 3, 64, 64)).shape == (2, 1 + 4, 32)  # 2 x 2 map of the last stage
    assert all(not m.training for m in res.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert {n for n, p in res.named_parameters() if p.requires_grad} and not res.model.embedder.embedder.convolution.weight.requires_grad
    with pytest.raises(ValueError, match="bad --tune 'some'"):
        parse_tune("some", 4)


def test_pretrained_backbone_offline_names_backbone_path(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneUnavailable, match="--backbone-path"):
        build_backbone("resnet50", path=str(tmp_path / "nothing-here"))
    with pytest.raises(KeyError, match="unknown backbone 'vgg'; choose one of: clip, .*resnet50, tiny"):
        build_backbone("vgg")
