"""The DiST head: shapes on every backbone kind, training with real MiniLM knowledge, ablation switches, errors."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from fsar.model.backbones import build_backbone
from fsar.model.batch import EpisodeBatch
from fsar.model.fewshot import FewShotModel
from fsar.model.heads.dist import DiSTHead
from fsar.model.registry import build_method, get_method
from fsar.model.trainer import Trainer

from _model_helpers import fast_config, one_thread, small_backbones, synth_root  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

E, N, K, Q, T, P, D, DT = 2, 5, 2, 3, 4, 4, 32, 12


def _tokens(seed: int = 0, e: int = E, k: int = K):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(e, N, k, T, 1 + P, D, generator=g), torch.randn(e, Q, T, 1 + P, D, generator=g)


def _text(seed: int = 1, e: int = E) -> dict[str, torch.Tensor]:
    """Random unit text vectors in the contract's layout; class 0 of each episode has one padded spatial slot."""
    g = torch.Generator().manual_seed(seed)
    unit = lambda *s: F.normalize(torch.randn(*s, DT, generator=g), dim=-1)  # noqa: E731
    text = {"names": unit(e, N), "spatial": unit(e, N, 4), "temporal": unit(e, N, 3),
            "spatial_mask": torch.ones(e, N, 4, dtype=torch.bool), "temporal_mask": torch.ones(e, N, 3, dtype=torch.bool)}
    text["spatial_mask"][:, 0, 3] = False
    return text


def _head(seed: int = 0, **options) -> DiSTHead:
    torch.manual_seed(seed)
    return build_method("dist", dim=D, num_frames=T, text_dim=DT, **options).eval()


# ------------------------------------------------------------------ shapes on real backbones


def _backbones():
    return small_backbones()


@pytest.mark.parametrize("name,config,size,tokens", _backbones(), ids=["tiny", "clip", "resnet50"])
def test_shapes_and_gradients_through_each_backbone(name, config, size, tokens):
    backbone = build_backbone(name, config=config, tune="full")
    torch.manual_seed(0)
    model = FewShotModel(backbone, build_method("dist", dim=backbone.dim, num_frames=T, text_dim=DT))
    assert model.head.needs_tokens and get_method("dist") is DiSTHead
    g = torch.Generator().manual_seed(0)
    support = torch.randn(1, N, 1, T, 3, size, size, generator=g)
    query = torch.randn(1, Q, T, 3, size, size, generator=g)
    out = model(EpisodeBatch(support, query, query_labels=torch.tensor([[0, 1, 2]]), text=_text(e=1)))
    assert out.logits.shape == (1, Q, N) and torch.isfinite(out.logits).all()
    F.cross_entropy(out.logits[0], torch.tensor([0, 1, 2])).backward()
    grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert grads and all(gr is not None for gr in grads[-2:]) and sum(gr.abs().sum() for gr in grads if gr is not None) > 0
    assert model.head.spatial_text.proj[0].weight.grad.abs().sum() > 0  # the knowledge path learns
    assert model.head.temporal_text.proj[0].weight.grad.abs().sum() > 0
    tok = model.encode(query[0])  # clips [B, T, 3, H, W] -> tokens [B, T, 1 + P, D]
    assert tok.shape == (Q, T, tokens, backbone.dim)


def test_shots_and_batched_episodes_score_independently():
    """5-shot works, and a batch of episodes scores exactly as the episodes one by one (the evaluator relies on it)."""
    head = _head()
    support, query = _tokens(k=5, e=3)
    text = _text(e=3)
    together = head(EpisodeBatch(support, query, text=text)).logits
    assert together.shape == (3, Q, N)
    for i in range(3):
        one = head(EpisodeBatch(support[i : i + 1], query[i : i + 1], text={k: v[i : i + 1] for k, v in text.items()})).logits
        assert torch.allclose(together[i : i + 1], one, atol=1e-5)


# ------------------------------------------------------------------ ablation switches change what is computed


def _changed(a: torch.Tensor, b: torch.Tensor) -> bool:
    return not torch.allclose(a, b, atol=1e-6)


def test_knowledge_switch_changes_text_need_parameters_and_what_the_logits_read():
    support, query = _tokens()
    text = _text()
    other = _text(seed=9)  # every text tensor replaced
    assert [DiSTHead.text_need({"knowledge": k}) for k in ("llm", "name", "none")] == ["dist", "names", None]
    assert DiSTHead.text_need({}) == "dist"

    llm, name, none = _head(knowledge="llm"), _head(knowledge="name"), _head(knowledge="none")
    outs = {k: h(EpisodeBatch(support, query, text=text)).logits for k, h in (("llm", llm), ("name", name), ("none", none))}
    assert _changed(outs["llm"], outs["name"]) and _changed(outs["llm"], outs["none"]) and _changed(outs["name"], outs["none"])

    def swap(h, *keys):
        t = dict(text)
        for key in keys:
            t[key] = other[key]
        return h(EpisodeBatch(support, query, text=t)).logits

    # llm reads spatial attributes (SKC) and temporal attributes (TKC), not the names
    assert _changed(outs["llm"], swap(llm, "spatial")) and _changed(outs["llm"], swap(llm, "temporal"))
    assert torch.allclose(outs["llm"], swap(llm, "names"))
    # masked-out attribute slots are ignored
    t = dict(text)
    t["spatial"] = text["spatial"].clone()
    t["spatial"][:, 0, 3] = 5.0
    assert torch.allclose(outs["llm"], llm(EpisodeBatch(support, query, text=t)).logits, atol=1e-6)
    # name reads only the names; none reads no text at all (and runs without any)
    assert _changed(outs["name"], swap(name, "names"))
    assert torch.allclose(outs["name"], swap(name, "spatial", "temporal"))
    assert torch.allclose(outs["none"], none(EpisodeBatch(support, query)).logits)
    # parameters: only text-guided heads project text; only none keeps a learned temporal bank
    keys = {k: {n for n, _ in h.named_parameters()} for k, h in (("llm", llm), ("name", name), ("none", none))}
    assert any(n.startswith("spatial_text") for n in keys["llm"]) and not any("_text" in n for n in keys["none"])
    assert "tkc.bank" in keys["none"] and "tkc.bank" not in keys["llm"]
    assert not any(n.startswith("skc.guide") for n in keys["none"]) and any(n.startswith("skc.guide") for n in keys["llm"])


def test_skc_and_tkc_switches_drop_their_path():
    support, query = _tokens()
    text = _text()
    g = torch.Generator().manual_seed(5)
    new_patches, new_global = support.clone(), support.clone()
    new_patches[..., 1:, :] = torch.randn(new_patches[..., 1:, :].shape, generator=g)
    new_global[..., 0, :] = torch.randn(new_global[..., 0, :].shape, generator=g)

    full, no_skc, no_tkc = _head(), _head(skc=False), _head(tkc=False)
    base = {k: h(EpisodeBatch(support, query, text=text)).logits for k, h in (("full", full), ("no_skc", no_skc), ("no_tkc", no_tkc))}
    assert _changed(base["full"], base["no_skc"]) and _changed(base["full"], base["no_tkc"])
    # full DiST reads both the patch tokens (SKC) and the frames' global tokens (TKC)
    assert _changed(base["full"], full(EpisodeBatch(new_patches, query, text=text)).logits)
    assert _changed(base["full"], full(EpisodeBatch(new_global, query, text=text)).logits)
    # without SKC the patch tokens and the spatial attributes are ignored; without TKC the global tokens and temporal ones
    assert torch.allclose(base["no_skc"], no_skc(EpisodeBatch(new_patches, query, text=text)).logits)
    assert _changed(base["no_skc"], no_skc(EpisodeBatch(new_global, query, text=text)).logits)
    assert torch.allclose(base["no_tkc"], no_tkc(EpisodeBatch(new_global, query, text=text)).logits)
    assert _changed(base["no_tkc"], no_tkc(EpisodeBatch(new_patches, query, text=text)).logits)
    assert no_skc.skc is None and no_skc.spatial_text is None and no_tkc.tkc is None and no_tkc.temporal_text is None
    with pytest.raises(ValueError, match="at least one compensator"):
        _head(skc=False, tkc=False)


def test_options_are_checked_by_text_need_and_the_head():
    """What fsar-train's --knowledge / --opt give (a dict of options) is checked where the head is asked about it."""
    from fsar.core.errors import FsarError

    assert DiSTHead.text_need({"knowledge": "none", "tkc": False}) is None
    assert DiSTHead.text_need({"knowledge": "name", "skc": False}) == "names"
    with pytest.raises(FsarError, match="--knowledge must be one of llm, name, none, got 'gpt'"):
        DiSTHead.text_need({"knowledge": "gpt"})
    with pytest.raises(ValueError, match="knowledge must be one of llm, name, none"):
        _head(knowledge="bogus")
    build_method("dist", dim=D, num_frames=T, text_dim=None, knowledge="none", skc=False)  # no text, TKC only


# ------------------------------------------------------------------ missing knowledge


def test_missing_knowledge_is_one_line_naming_the_command(synth_root, fsar_cache, tmp_path):
    cfg = fast_config(synth_root, tmp_path / "run", method="dist", create_text=False)
    with pytest.raises(FileNotFoundError) as err:
        Trainer(cfg)
    message = str(err.value)
    assert "\n" not in message and "fsar-knowledge generate --dataset synthetic --kind dist" in message
    head = _head()
    support, query = _tokens()
    with pytest.raises(ValueError) as err:
        head(EpisodeBatch(support, query, text={"names": _text()["names"]}))
    assert "\n" not in str(err.value) and "fsar-knowledge generate" in str(err.value) and "knowledge=name|none" in str(err.value)
    with pytest.raises(ValueError, match="needs text embeddings"):
        build_method("dist", dim=D, num_frames=T, text_dim=None)
    assert build_method("dist", dim=D, num_frames=T, text_dim=None, knowledge="none") is not None


# ------------------------------------------------------------------ training with real MiniLM knowledge


def _save_synthetic_knowledge(classes) -> None:
    """A hand-written dist knowledge set for the small benchmark's classes (model folder 'handwritten')."""
    from _knowledge_helpers import make_row
    from fsar.knowledge.store import save_knowledge

    rows = []
    for c in classes:
        words = c.name.split()
        obj = words[words.index("a") + 1] if "a" in words else "object"
        spatial = [f"a {obj}", "a hand", "a plain table top"] + (["a box"] if "box" in words else [])
        temporal = [f"the hand starts {words[0]} the {obj}", f"the {obj} keeps {' '.join(words[:1] + words[3:]) or 'moving'}",
                    "the motion comes to rest"]
        rows.append(make_row(c.index, c.key, c.name, c.split, {"spatial": spatial, "temporal": temporal}))
    save_knowledge("synthetic", "dist", "handwritten", rows)


@torch.no_grad()
def _loss_on(trainer: Trainer, episodes: range) -> float:
    trainer.model.eval()
    total = 0.0
    for i in episodes:
        batch = trainer.source.batch(trainer.source.episodes(i, 1))
        out = trainer.model(batch, features=trainer.use_cache)
        total += float(F.cross_entropy(out.logits.flatten(0, 1), batch.query_labels.flatten()))
    trainer.model.train()
    return total / len(episodes)


@pytest.mark.slow
def test_trains_end_to_end_on_real_minilm_knowledge_and_records_it(synth_root, fsar_cache, tmp_path):
    from fsar.data.registry import get_dataset

    _save_synthetic_knowledge(get_dataset("synthetic").classes)
    cfg = fast_config(synth_root, tmp_path / "run", method="dist", episodes=24, batch=2, query=2, lr=2e-3, val_every=24,
                      warmup=0.0, test_episodes=20, create_text=True, opts={"objects": 4})
    trainer = Trainer(cfg)  # create_text: embeds the stored knowledge with the packaged MiniLM
    assert set(trainer.bank.tensors) >= {"names", "spatial", "temporal", "spatial_mask", "temporal_mask"}
    assert trainer.bank.dim == 384 and trainer.model.head.text_dim == 384
    assert trainer.bank.tensors["spatial_mask"].sum(-1).max() == 4 and trainer.bank.tensors["spatial_mask"].sum(-1).min() == 3
    before = _loss_on(trainer, range(8))
    result = trainer.run()
    after = _loss_on(trainer, range(8))
    assert after < before - 0.02, (before, after)
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["knowledge"]["fingerprint"] == trainer.bank.fingerprint
    assert saved["knowledge"]["info"]["knowledge_model"] == "handwritten" and saved["knowledge"]["info"]["kind"] == "dist"
    assert saved["config"]["opts"] == {"objects": 4} and 0 <= result["accuracy"] <= 100 and result["ci95"] > 0
