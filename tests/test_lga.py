"""The LGA head: AB-MHM and fusion on hand cases, geometric-mean fusion, backbones, switches, training, errors."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from fsar.model.backbones import build_backbone
from fsar.model.batch import EpisodeBatch
from fsar.model.fewshot import FewShotModel
from fsar.model.heads.lga import LGAHead, ab_mhm_distance
from fsar.model.matching import bimhm_distance
from fsar.model.registry import build_method, get_method
from fsar.model.segment import cluster_segment, pool_stages, stage_weights, uniform_segment
from fsar.model.trainer import Trainer

from _model_helpers import fast_config, one_thread, small_backbones, synth_root  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

E, N, K, Q, T, D, DT = 2, 5, 2, 3, 8, 32, 12


def _frames(seed: int = 0, e: int = E, k: int = K) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(e, N, k, T, D, generator=g), torch.randn(e, Q, T, D, generator=g)


def _text(seed: int = 1, e: int = E) -> dict[str, torch.Tensor]:
    """Random unit text vectors in the contract's layout; class 0's completion stage is padding (mask False)."""
    g = torch.Generator().manual_seed(seed)
    unit = lambda *s: F.normalize(torch.randn(*s, DT, generator=g), dim=-1)  # noqa: E731
    text = {"names": unit(e, N)}
    for item in ("stages", "triplets", "sentences"):
        text[item] = unit(e, N, 3)
        text[f"{item}_mask"] = torch.ones(e, N, 3, dtype=torch.bool)
    text["stages_mask"][:, 0, 2] = False
    return text


def _labels(e: int = E) -> torch.Tensor:
    return torch.arange(Q).remainder(N).expand(e, Q).clone()


def _head(seed: int = 0, train: bool = False, **options) -> LGAHead:
    torch.manual_seed(seed)
    head = build_method("lga", dim=D, num_frames=T, text_dim=DT, **options)
    return head.train() if train else head.eval()


def _changed(a: torch.Tensor, b: torch.Tensor) -> bool:
    return not torch.allclose(a, b, atol=1e-6)


# ------------------------------------------------------------------ AB-MHM and the fusion module on hand cases


def test_ab_mhm_identity_and_reversed_order():
    a, b, c = torch.eye(3)
    video = torch.stack([a, b, c])
    reverse = torch.stack([c, b, a])
    dist = lambda x, y: 1.0 - x @ y.T  # noqa: E731  (unit vectors: cosine distance)
    for window in (0, 1, 2):
        assert ab_mhm_distance(dist(video, video), window) == 0.0  # identity
    # reversed: Bi-MHM sees the same set (0); aligned stages see that onset and completion swapped
    assert bimhm_distance(dist(video, reverse)) == 0.0
    # window 0: stage i only against stage i: rows a-c, b-b, c-a -> 2/3 per direction
    assert torch.isclose(ab_mhm_distance(dist(video, reverse), 0), torch.tensor(4 / 3))
    # window 1: a may match c or b (1), b anything (0), c may match b or a (1) -> still 2/3 per direction
    assert torch.isclose(ab_mhm_distance(dist(video, reverse), 1), torch.tensor(4 / 3))
    # window 2 covers every pair: plain Bi-MHM
    assert ab_mhm_distance(dist(video, reverse), 2) == 0.0
    # a boundary found one stage late (a a b against a b c) costs less with window 1 than with strict alignment
    late = torch.stack([a, a, b])
    assert ab_mhm_distance(dist(late, video), 1) < ab_mhm_distance(dist(late, video), 0)
    # batched over leading axes, symmetric in the two videos
    many = torch.randn(4, 5, 3, 3).abs()
    assert ab_mhm_distance(many).shape == (4, 5)
    assert torch.allclose(ab_mhm_distance(many), ab_mhm_distance(many.transpose(-1, -2)))
    with pytest.raises(ValueError, match="window must be >= 0"):
        ab_mhm_distance(many, -1)


def test_fusion_is_multihead_cross_attention_with_text_plus_visual_queries():
    """StageFusion against a plain per-head loop: Q_i = t_i + LN(f_i + p_i), K = V = LN(f + p), fused = f + W_o(attn)."""
    head = _head(heads=4)
    fusion = head.fusion
    g = torch.Generator().manual_seed(2)
    stages, text = torch.randn(3, D, generator=g), torch.randn(3, D, generator=g)

    def reference(f: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        x = f + fusion.pos
        q_in = fusion.norm_q(x) + (t if t is not None else 0.0)
        q, k, v = fusion.q(q_in), fusion.k(fusion.norm_kv(x)), fusion.v(fusion.norm_kv(x))
        d = D // 4
        heads = []
        for h in range(4):
            sl = slice(h * d, (h + 1) * d)
            attn = torch.softmax(q[:, sl] @ k[:, sl].T / d**0.5, dim=-1)
            heads.append(attn @ v[:, sl])
        return f + fusion.o(torch.cat(heads, dim=-1))

    with torch.no_grad():
        parts = fusion.visual(stages[None])
        with_text = fusion.fuse(stages[None], parts, fusion.text_query(text)[None])[0]
        without = fusion.fuse(stages[None], parts, None)[0]
        # several class texts at once ([A, N, ...]) give each class's fusion
        texts = torch.stack([text, -text, torch.zeros_like(text)])
        per_class = fusion.fuse(stages[None], parts, fusion.text_query(texts)[None])[0]
    assert torch.allclose(with_text, reference(stages, text), atol=1e-5)
    assert torch.allclose(without, reference(stages, None), atol=1e-5)
    assert torch.allclose(per_class[0], with_text, atol=1e-5) and torch.allclose(per_class[2], without, atol=1e-5)
    assert _changed(per_class[1], with_text)


# ------------------------------------------------------------------ training vs evaluation, geometric-mean fusion


def test_geometric_mean_fusion_equals_vv_at_alpha_1_and_vt_at_alpha_0():
    support, query = _frames()
    text = _text()
    parts = _head().scores(support, query, text)
    vv, vt = parts["vv"], parts["vt"]
    assert vv.shape == vt.shape == (E, Q, N)
    one, zero, mid = (_head(alpha=a)(EpisodeBatch(support, query, text=text)).logits for a in (1.0, 0.0, 0.3))
    assert torch.allclose(one, vv.log_softmax(-1), atol=1e-6)
    assert torch.allclose(zero, vt.log_softmax(-1), atol=1e-6)
    # in between: softmax of the returned logits is p_vv^0.3 * p_vt^0.7, renormalised
    p = vv.softmax(-1) ** 0.3 * vt.softmax(-1) ** 0.7
    assert torch.allclose(mid.softmax(-1), p / p.sum(-1, keepdim=True), atol=1e-6)
    # the V-V only and V-T only heads return exactly those logits
    assert torch.allclose(_head(match="vv")(EpisodeBatch(support, query, text=text)).logits, vv, atol=1e-6)
    assert torch.allclose(_head(match="vt")(EpisodeBatch(support, query, text=text)).logits, vt, atol=1e-6)


def test_training_classifies_with_video_video_only_plus_a_contrastive_loss():
    support, query = _frames()
    text, labels = _text(), _labels()
    head = _head(train=True, dropout=0.0)
    batch = EpisodeBatch(support, query, query_labels=labels, text=text)
    out = head(batch)
    parts = head.scores(support, query, text)
    assert torch.allclose(out.logits, parts["vv"], atol=1e-6)  # the classification logits: V-V only
    assert set(out.aux_losses) == {"contrastive"}
    # the loss the trainer minimises: cross-entropy of the V-V logits plus the contrastive loss
    ce = F.cross_entropy(parts["vv"].flatten(0, 1), labels.flatten())
    assert torch.isclose(head.loss(out, batch), ce + out.aux_losses["contrastive"], atol=1e-6)
    # the contrastive loss: every labelled video (supports, then queries) against the episode's class texts
    videos = torch.cat([parts["support_stages"].flatten(1, 2), parts["query_stages"]], dim=1)
    own = torch.cat([torch.arange(N).repeat_interleave(K).expand(E, -1), labels], dim=1)
    expected = F.cross_entropy(head.video_text(videos, parts["texts"]).flatten(0, 1), own.flatten())
    assert torch.isclose(out.aux_losses["contrastive"], expected, atol=1e-6)
    assert torch.isclose(_head(train=True, dropout=0.0, contrastive=0.5)(batch).aux_losses["contrastive"], 0.5 * expected, atol=1e-6)
    assert _head(train=True, contrastive=0.0)(batch).aux_losses == {}
    assert head(EpisodeBatch(support, query, text=text)).aux_losses == {}  # no labels, no loss
    head.eval()
    evaluated = head(EpisodeBatch(support, query, text=text))
    assert _changed(evaluated.logits, out.logits) and evaluated.aux_losses == {}  # evaluation: the fused decision


# ------------------------------------------------------------------ shapes on real backbones, shots, batching


def _backbones():
    return [b[:3] for b in small_backbones()]


@pytest.mark.parametrize("name,config,size", _backbones(), ids=["tiny", "clip", "resnet50"])
def test_shapes_and_gradients_through_each_backbone(name, config, size):
    backbone = build_backbone(name, config=config, tune="full")
    torch.manual_seed(0)
    model = FewShotModel(backbone, build_method("lga", dim=backbone.dim, num_frames=T, text_dim=DT))
    assert not model.head.needs_tokens and get_method("lga") is LGAHead
    g = torch.Generator().manual_seed(0)
    support = torch.randn(1, N, 1, T, 3, size, size, generator=g)
    query = torch.randn(1, Q, T, 3, size, size, generator=g)
    out = model(EpisodeBatch(support, query, query_labels=_labels(1), text=_text(e=1)))
    assert out.logits.shape == (1, Q, N) and torch.isfinite(out.logits).all()
    loss = F.cross_entropy(out.logits[0], _labels(1)[0]) + sum(out.aux_losses.values())
    loss.backward()
    grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert grads and sum(gr.abs().sum() for gr in grads if gr is not None) > 0
    assert model.head.text_proj[0].weight.grad.abs().sum() > 0  # the text path learns (contrastive loss, fusion)
    assert model.head.fusion.q.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        assert model(EpisodeBatch(support, query, text=_text(e=1))).logits.shape == (1, Q, N)


def test_shots_and_batched_episodes_score_independently():
    """5-shot works, and a batch of episodes scores exactly as the episodes one by one (the evaluator relies on it)."""
    for options in ({}, {"query_text": "episode"}, {"knowledge": "none", "match": "vv"}):
        head = _head(**options)
        support, query = _frames(k=5, e=3)
        text = _text(e=3)
        together = head(EpisodeBatch(support, query, text=text)).logits
        assert together.shape == (3, Q, N)
        for i in range(3):
            one = head(EpisodeBatch(support[i : i + 1], query[i : i + 1], text={k: v[i : i + 1] for k, v in text.items()})).logits
            assert torch.allclose(together[i : i + 1], one, atol=1e-5)


# ------------------------------------------------------------------ ablation switches change what is computed


def test_segment_switch_cluster_follows_the_video_uniform_does_not():
    support, query = _frames()
    text = _text()
    cluster, uniform = _head(), _head(segment="uniform")
    assert _changed(cluster(EpisodeBatch(support, query, text=text)).logits, uniform(EpisodeBatch(support, query, text=text)).logits)
    # stages: CLUSTER pools each clip's own segments (with the 1-frame overlap), uniform always the same thirds
    bounds = cluster_segment(F.normalize(query, dim=-1), 3)
    assert torch.allclose(cluster.stages(query), pool_stages(query, stage_weights(bounds, T, 1)), atol=1e-6)
    assert torch.allclose(uniform.stages(query), pool_stages(query, stage_weights(uniform_segment(T, 3), T, 1)), atol=1e-6)
    # a clip of three constant blocks (1, 5, 2 frames): CLUSTER's stages are the blocks themselves (overlap 0)
    a, b, c = torch.randn(3, D, generator=torch.Generator().manual_seed(4))
    blocks = torch.stack([a] + [b] * 5 + [c] * 2)
    assert torch.allclose(_head(overlap=0).stages(blocks), torch.stack([a, b, c]), atol=1e-5)
    assert not torch.allclose(_head(overlap=0, segment="uniform").stages(blocks), torch.stack([a, b, c]), atol=1e-3)
    # overlap widens the stages
    assert _changed(_head(overlap=0)(EpisodeBatch(support, query, text=text)).logits, cluster(EpisodeBatch(support, query, text=text)).logits)


def test_knowledge_switch_changes_text_need_parameters_and_what_the_logits_read():
    support, query = _frames()
    text, other = _text(), _text(seed=9)
    assert [LGAHead.text_need({"knowledge": k}) for k in ("llm", "name", "none")] == ["lga", "names", None]
    assert LGAHead.text_need({}) == "lga"
    llm, name, none = _head(), _head(knowledge="name"), _head(knowledge="none", match="vv")
    outs = {k: h(EpisodeBatch(support, query, text=text)).logits for k, h in (("llm", llm), ("name", name), ("none", none))}
    assert _changed(outs["llm"], outs["name"]) and _changed(outs["llm"], outs["none"]) and _changed(outs["name"], outs["none"])

    def swap(h, *keys):
        t = dict(text)
        for key in keys:
            t[key] = other[key]
        return h(EpisodeBatch(support, query, text=t)).logits

    # llm (textual anatomy) reads the stage vectors; the names only where a stage is padding (class 0's completion)
    assert _changed(outs["llm"], swap(llm, "stages"))
    assert torch.allclose(outs["llm"], swap(llm, "triplets", "sentences"))
    assert _changed(outs["llm"], swap(llm, "names"))
    filled = dict(text, stages=text["stages"].clone(), stages_mask=torch.ones(E, N, 3, dtype=torch.bool))
    filled["stages"][:, 0, 2] = text["names"][:, 0]
    assert torch.allclose(outs["llm"], llm(EpisodeBatch(support, query, text=filled)).logits, atol=1e-6)
    padded = dict(text, stages=text["stages"].clone())
    padded["stages"][:, 0, 2] = 5.0  # the padded slot's content is never read
    assert torch.allclose(outs["llm"], llm(EpisodeBatch(support, query, text=padded)).logits, atol=1e-6)
    # name (textual anatomy off): the class name for every stage; none: no text at all, no text parameters
    assert _changed(outs["name"], swap(name, "names")) and torch.allclose(outs["name"], swap(name, "stages", "triplets", "sentences"))
    assert torch.allclose(outs["none"], none(EpisodeBatch(support, query)).logits)
    assert none.text_proj is None and not any(n.startswith("text_proj") for n, _ in none.named_parameters())
    # text_item picks which of the contract's vectors the stages are
    trip = _head(text_item="triplets")
    assert _changed(trip(EpisodeBatch(support, query, text=text)).logits, outs["llm"]) and _changed(trip(EpisodeBatch(support, query, text=text)).logits, swap(trip, "triplets"))
    assert torch.allclose(trip(EpisodeBatch(support, query, text=text)).logits, swap(trip, "stages", "sentences"))


def test_match_switch_vv_vt_both():
    support, query = _frames()
    text = _text()
    vv, vt, both = (_head(match=m)(EpisodeBatch(support, query, text=text)).logits for m in ("vv", "vt", "both"))
    assert _changed(vv, vt) and _changed(vv, both) and _changed(vt, both)
    # V-T reads the pooled stages and the texts only: the fusion module does not enter it; V-V depends on it
    head_vt, head_vv = _head(match="vt"), _head(match="vv")
    with torch.no_grad():
        bump = torch.randn(D, D, generator=torch.Generator().manual_seed(6))
        head_vt.fusion.q.weight.add_(bump)
        head_vv.fusion.q.weight.add_(bump)
    assert torch.allclose(head_vt(EpisodeBatch(support, query, text=text)).logits, vt) and _changed(head_vv(EpisodeBatch(support, query, text=text)).logits, vv)
    # training with V-T only classifies with V-T logits
    train_vt = _head(train=True, match="vt", dropout=0.0)
    assert torch.allclose(train_vt(EpisodeBatch(support, query, query_labels=_labels(), text=text)).logits, vt, atol=1e-6)


def test_query_text_window_and_contrastive_form_switches():
    support, query = _frames()
    text, labels = _text(), _labels()
    base = _head()(EpisodeBatch(support, query, text=text)).logits
    assert _changed(base, _head(query_text="episode")(EpisodeBatch(support, query, text=text)).logits)
    windows = [_head(window=w, match="vv")(EpisodeBatch(support, query, text=text)).logits for w in (0, 1, 2)]
    assert _changed(windows[0], windows[1]) and _changed(windows[1], windows[2])
    video = _head(train=True, dropout=0.0)(EpisodeBatch(support, query, query_labels=labels, text=text)).aux_losses["contrastive"]
    stage = _head(train=True, dropout=0.0, contrastive_form="stage")(EpisodeBatch(support, query, query_labels=labels, text=text)).aux_losses["contrastive"]
    assert not torch.isclose(video, stage)


def test_knowledge_none_implies_video_video_matching():
    """fsar-train --method lga --knowledge none (options {"knowledge": "none"}) builds a text-free V-V head; asking
    for video-text matching without text is an error naming the fix."""
    from fsar.core.errors import FsarError

    assert LGAHead.text_need({"knowledge": "none"}) is None and LGAHead.text_need({}) == "lga"
    head = build_method("lga", dim=D, num_frames=T, text_dim=None, knowledge="none")  # builds without text
    assert head.match == "vv" and head.text_proj is None
    assert _head().match == "both"
    for match in ("vt", "both"):
        with pytest.raises(ValueError, match="use match=vv"):
            build_method("lga", dim=D, num_frames=T, text_dim=None, knowledge="none", match=match)
    with pytest.raises(FsarError, match="--knowledge must be one of llm, name, none, got 'gpt'"):
        LGAHead.text_need({"knowledge": "gpt"})
    with pytest.raises(ValueError, match="unknown option.*skc for method 'lga'"):  # another method's switch
        build_method("lga", dim=D, num_frames=T, text_dim=DT, skc=False)


def test_bad_options_and_inputs_are_one_line_errors():
    for options, message in (({"knowledge": "bogus"}, "knowledge must be one of"), ({"segment": "hard"}, "segment must be one of"),
                             ({"match": "vtv"}, "match must be one of"), ({"alpha": 1.5}, r"alpha must lie in \[0, 1\]"),
                             ({"knowledge": "none", "match": "vt"}, "use match=vv"), ({"overlap": -1}, "must be >= 0"),
                             ({"query_text": "label"}, "query_text must be one of")):
        with pytest.raises(ValueError, match=message):
            _head(**options)
    with pytest.raises(ValueError, match="needs text embeddings"):
        build_method("lga", dim=D, num_frames=T, text_dim=None)
    with pytest.raises(ValueError, match="at least 3 frames"):
        build_method("lga", dim=D, num_frames=2, text_dim=DT)
    support, query = _frames()
    with pytest.raises(ValueError, match=r"frame features \[E, N, K, T, D\]"):
        _head()(EpisodeBatch(support[..., None, :], query[..., None, :], text=_text()))


# ------------------------------------------------------------------ missing knowledge


def test_missing_knowledge_is_one_line_naming_the_command(synth_root, fsar_cache, tmp_path):
    cfg = fast_config(synth_root, tmp_path / "run", method="lga", create_text=False)
    with pytest.raises(FileNotFoundError) as err:
        Trainer(cfg)
    message = str(err.value)
    assert "\n" not in message and "fsar-knowledge generate --dataset synthetic --kind lga" in message
    support, query = _frames()
    with pytest.raises(ValueError) as err:
        _head()(EpisodeBatch(support, query, text={"names": _text()["names"]}))
    assert "\n" not in str(err.value) and "fsar-knowledge generate" in str(err.value) and "--kind lga" in str(err.value)
    assert "knowledge=name|none" in str(err.value)


# ------------------------------------------------------------------ the loss falls


def _staged_episode(g: torch.Generator, protos: torch.Tensor, text: torch.Tensor, k: int = 1, q: int = 2):
    """One episode: each clip is its class's 3 stage vectors held for random lengths (2 random cuts), plus noise;
    text = each class's 3 stage texts [C, 3, DT]."""
    classes = torch.randperm(protos.shape[0], generator=g)[:N]

    def clip(c: int) -> torch.Tensor:
        cuts = sorted(torch.randperm(T - 1, generator=g)[:2].add(1).tolist())
        lengths = [cuts[0], cuts[1] - cuts[0], T - cuts[1]]
        frames = torch.cat([protos[c, i].expand(n, D) for i, n in enumerate(lengths)])
        return frames + 1.2 * torch.randn(T, D, generator=g)

    support = torch.stack([torch.stack([clip(int(c)) for _ in range(k)]) for c in classes])[None]
    labels = torch.arange(N).repeat(q)
    query = torch.stack([clip(int(classes[i])) for i in labels])[None]
    names = F.normalize(text[classes].mean(dim=1), dim=-1)[None]
    return support, query, {"names": names, "stages": text[classes][None]}, labels[None]


def test_loss_falls_when_training_the_head():
    """Classes whose stages come from a pool of 6 vectors (so they share stages, in other orders): both the V-V
    classification loss and the contrastive loss fall on held-out episodes after 60 training episodes."""
    g = torch.Generator().manual_seed(0)
    pool = torch.randn(6, D, generator=g)
    protos = pool[torch.stack([torch.randperm(6, generator=g)[:3] for _ in range(20)])]  # [20 classes, 3, D]
    text = F.normalize(torch.randn(20, 3, DT, generator=g), dim=-1)
    held = [_staged_episode(torch.Generator().manual_seed(1000 + i), protos, text) for i in range(8)]
    head = _head(train=True, scale=5.0, dropout=0.0)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)

    def loss_on(episodes) -> tuple[float, float]:
        """(V-V classification loss, contrastive loss), averaged over the held-out episodes."""
        with torch.no_grad():
            ce = con = 0.0
            for s, q, t, y in episodes:
                out = head(EpisodeBatch(s, q, query_labels=y, text=t))
                ce += float(F.cross_entropy(out.logits[0], y[0]))
                con += float(out.aux_losses["contrastive"])
        return ce / len(episodes), con / len(episodes)

    before = loss_on(held)
    for step in range(60):
        s, q, t, y = _staged_episode(g, protos, text)
        batch = EpisodeBatch(s, q, query_labels=y, text=t)
        loss = head.loss(head(batch), batch)  # what the trainer minimises
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = loss_on(held)
    assert after[0] < 0.85 * before[0] and after[1] < 0.85 * before[1], (before, after)


def _save_synthetic_lga(classes) -> None:
    """A hand-written lga knowledge set for the small benchmark's classes (model folder 'handwritten')."""
    from _knowledge_helpers import make_row
    from fsar.knowledge.store import save_knowledge

    rows = []
    for c in classes:
        words = c.name.split()
        obj = words[words.index("a") + 1] if "a" in words else "object"
        stages = [
            {"stage": "onset", "subject": "hand", "motion": "reaches", "object": obj, "sentence": f"A hand reaches toward the {obj}."},
            {"stage": "progression", "subject": "hand", "motion": words[0], "object": obj, "sentence": f"The hand is {c.name} now."},
            {"stage": "completion", "subject": obj, "motion": "rests", "object": "table", "sentence": f"The {obj} rests and the hand leaves."},
        ]
        rows.append(make_row(c.index, c.key, c.name, c.split, {"stages": stages}))
    save_knowledge("synthetic", "lga", "handwritten", rows)


@pytest.mark.slow
def test_trains_end_to_end_on_real_minilm_knowledge_and_records_it(synth_root, fsar_cache, tmp_path):
    from fsar.data.registry import get_dataset

    _save_synthetic_lga(get_dataset("synthetic").classes)
    cfg = fast_config(synth_root, tmp_path / "run", method="lga", episodes=24, batch=2, query=2, lr=2e-3, val_every=24,
                      warmup=0.0, test_episodes=20, create_text=True)
    trainer = Trainer(cfg)  # create_text: embeds the stored knowledge with the packaged MiniLM
    assert set(trainer.bank.tensors) >= {"names", "stages", "triplets", "sentences", "stages_mask"}
    assert trainer.bank.tensors["stages"].shape[1:] == (3, 384) and trainer.model.head.text_dim == 384
    result = trainer.run()
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["knowledge"]["info"]["knowledge_model"] == "handwritten" and saved["knowledge"]["info"]["kind"] == "lga"
    assert saved["config"]["method"] == "lga" and 0 <= result["accuracy"] <= 100
