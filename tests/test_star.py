"""The STAR head: shapes on every backbone kind, learning, the reversal mirror of its bidirectional refiner, every
ablation switch, knowledge modes and the one-line message for missing knowledge."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from fsar.model.backbones import build_backbone
from fsar.model.batch import EpisodeBatch
from fsar.model.fewshot import FewShotModel
from fsar.model.heads.star import GEN_HINT, STARHead, SemanticTemporalRefiner, order_positions
from fsar.model.registry import build_method, get_method
from fsar.model.trainer import Trainer

from _model_helpers import fast_config, one_thread, small_backbones, synth_root  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

E, N, K, Q, T, D, DT, L = 2, 5, 2, 3, 8, 32, 12, 4
SWITCHES = ("tsa", "stpr", "bidirectional", "multi_frequency", "sgf", "asd", "acu")


def _frames(seed: int = 0, e: int = E, k: int = K):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(e, N, k, T, D, generator=g), torch.randn(e, Q, T, D, generator=g)


def _text(seed: int = 1, e: int = E) -> dict[str, torch.Tensor]:
    """Random unit text vectors in the contract's layout; class 0 of each episode has one padded descriptor slot."""
    g = torch.Generator().manual_seed(seed)
    unit = lambda *s: F.normalize(torch.randn(*s, DT, generator=g), dim=-1)  # noqa: E731
    text = {"names": unit(e, N), "descriptors": unit(e, N, L), "summary": unit(e, N),
            "descriptors_mask": torch.ones(e, N, L, dtype=torch.bool), "summary_mask": torch.ones(e, N, dtype=torch.bool)}
    text["descriptors_mask"][:, 0, L - 1] = False
    return text


def _head(seed: int = 0, **options) -> STARHead:
    torch.manual_seed(seed)
    return build_method("star", dim=D, num_frames=T, text_dim=DT, inner=16, state=4, **options).eval()


def _changed(a: torch.Tensor, b: torch.Tensor) -> bool:
    return not torch.allclose(a, b, atol=1e-6)


# ------------------------------------------------------------------ shapes on real backbones


def _backbones():
    return [b[:3] for b in small_backbones()]


@pytest.mark.parametrize("name,config,size", _backbones(), ids=["tiny", "clip", "resnet50"])
def test_shapes_and_gradients_through_each_backbone(name, config, size):
    backbone = build_backbone(name, config=config, tune="full")
    torch.manual_seed(0)
    model = FewShotModel(backbone, build_method("star", dim=backbone.dim, num_frames=T, text_dim=DT))
    assert not model.head.needs_tokens and get_method("star") is STARHead
    g = torch.Generator().manual_seed(0)
    support = torch.randn(1, N, 1, T, 3, size, size, generator=g)
    query = torch.randn(1, Q, T, 3, size, size, generator=g)
    out = model(EpisodeBatch(support, query, query_labels=torch.tensor([[0, 1, 2]]), text=_text(e=1)))
    assert out.logits.shape == (1, Q, N) and torch.isfinite(out.logits).all()
    F.cross_entropy(out.logits[0], torch.tensor([0, 1, 2])).backward()
    grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert grads and sum(gr.abs().sum() for gr in grads if gr is not None) > 0
    head = model.head
    for module in (head.descriptor_text, head.summary_text, head.tsa.q, head.stpr.in_proj, head.stpr.sgf):
        assert module is not None and next(module.parameters()).grad.abs().sum() > 0  # text, TSA and STPR all learn
    for pair in head.stpr.branches:
        for branch in pair:
            assert branch.A_log.grad.abs().sum() > 0 and branch.score.grad.abs().sum() > 0
    assert model.encode(query[0]).shape == (Q, T, backbone.dim)


def test_shots_and_batched_episodes_score_independently():
    """5-shot works, and a batch of episodes scores exactly as the episodes one by one (the evaluator relies on it)."""
    head = _head()
    support, query = _frames(k=5, e=3)
    text = _text(e=3)
    together = head(EpisodeBatch(support, query, text=text)).logits
    assert together.shape == (3, Q, N)
    for i in range(3):
        one = head(EpisodeBatch(support[i : i + 1], query[i : i + 1], text={k: v[i : i + 1] for k, v in text.items()})).logits
        assert torch.allclose(together[i : i + 1], one, atol=1e-5)


# ------------------------------------------------------------------ the refiner's reversal mirror


def test_bidirectional_refiner_mirrors_under_time_reversal():
    """Reversing the sequence and swapping the forward and backward scans' weights gives the reversed output."""
    torch.manual_seed(0)
    kw = dict(inner=16, state=4, conv=3, strides=(1, 2, 4), sgf=True, asd=True, acu=True, dropout=0.0, scan="torch")
    stpr = SemanticTemporalRefiner(D, bidirectional=True, **kw).eval()
    mirror = SemanticTemporalRefiner(D, bidirectional=True, **kw).eval()
    mirror.load_state_dict(stpr.state_dict())
    for src, dst in zip(stpr.branches, mirror.branches):
        dst[0].load_state_dict(src[1].state_dict())
        dst[1].load_state_dict(src[0].state_dict())
    g = torch.Generator().manual_seed(1)
    z, sem = torch.randn(6, T, D, generator=g), torch.randn(6, D, generator=g)
    out = stpr(z, sem)
    assert torch.allclose(mirror(z.flip(1), sem), out.flip(1), atol=1e-5)
    assert _changed(stpr(z.flip(1), sem), out.flip(1))  # the two directions' weights differ: order matters
    one_way = SemanticTemporalRefiner(D, bidirectional=False, **kw).eval()
    assert _changed(one_way(z.flip(1), sem).flip(1), one_way(z, sem))  # a single causal scan is not symmetric


# ------------------------------------------------------------------ learning


def _toy_task(seed: int, classes: int = 16):
    """Classes are noisy trajectories in feature space; class 2i + 1 is class 2i played backwards (order matters).
    Each class has its own fixed random descriptors and summary."""
    g = torch.Generator().manual_seed(seed)
    start, end = torch.randn(classes // 2, D, generator=g), torch.randn(classes // 2, D, generator=g)
    w = torch.linspace(0, 1, T)[:, None]
    paths = start[:, None] * (1 - w) + end[:, None] * w  # [C/2, T, D]
    paths = torch.stack([paths, paths.flip(1)], dim=1).flatten(0, 1)  # [C, T, D]
    desc = F.normalize(torch.randn(classes, L, DT, generator=g), dim=-1)
    summ = F.normalize(torch.randn(classes, DT, generator=g), dim=-1)
    names = F.normalize(torch.randn(classes, DT, generator=g), dim=-1)

    def episode(i: int, e: int = 2):
        ge = torch.Generator().manual_seed(1000 * seed + i)
        cls = torch.stack([torch.randperm(classes, generator=ge)[:N] for _ in range(e)])  # [E, N]
        video = lambda shape: paths[cls].reshape(e, N, 1, T, D) + 2.0 * torch.randn(*shape, generator=ge)  # noqa: E731
        support = video((e, N, 1, T, D))
        query = video((e, N, 1, T, D))[:, :, 0]  # one query per class, in class order
        text = {"names": names[cls], "descriptors": desc[cls], "summary": summ[cls],
                "descriptors_mask": torch.ones(e, N, L, dtype=torch.bool)}
        return support, query, text, torch.arange(N).repeat(e, 1)

    return episode


def test_loss_falls_over_a_few_episodes():
    episode = _toy_task(seed=0)
    head = _head(seed=0)

    @torch.no_grad()
    def held_out_loss() -> float:
        head.eval()
        losses = [F.cross_entropy(head(EpisodeBatch(s, q, text=t)).logits.flatten(0, 1), y.flatten()) for s, q, t, y in map(episode, range(900, 908))]
        head.train()
        return float(torch.stack(losses).mean())

    before = held_out_loss()
    opt = torch.optim.AdamW(head.parameters(), lr=3e-3)
    head.train()
    for i in range(40):
        s, q, t, y = episode(i)
        loss = F.cross_entropy(head(EpisodeBatch(s, q, query_labels=y, text=t)).logits.flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = held_out_loss()
    assert after < before - 0.1, (before, after)


# ------------------------------------------------------------------ ablation switches change what is computed


@pytest.mark.parametrize("switch", SWITCHES)
def test_each_switch_changes_the_computation(switch):
    """The ablated head is the full head minus that part: loaded with the full head's weights (every weight it has
    comes from there), its logits still differ, and the dropped part's weights are gone."""
    support, query = _frames()
    text = _text()
    full, ablated = _head(), _head(**{switch: False})
    missing, unexpected = ablated.load_state_dict(full.state_dict(), strict=False)
    assert not missing and unexpected, (missing, unexpected)
    assert _changed(full(EpisodeBatch(support, query, text=text)).logits, ablated(EpisodeBatch(support, query, text=text)).logits)
    if switch == "multi_frequency":
        assert ablated.stpr.strides == (1,) and full.stpr.strides == (1, 2, 4)
    if switch == "bidirectional":
        assert {len(p) for p in ablated.stpr.branches} == {1} and {len(p) for p in full.stpr.branches} == {2}


def test_switches_drop_what_they_read():
    support, query = _frames()
    text, other = _text(), _text(seed=9)

    def swap(h, *keys):
        t = dict(text)
        for key in keys:
            t[key] = other[key]
        return h(EpisodeBatch(support, query, text=t)).logits

    full = _head()
    base = full(EpisodeBatch(support, query, text=text)).logits
    # llm reads the descriptors (TSA) and the summary (SGF, ACU), not the class names
    assert _changed(base, swap(full, "descriptors")) and _changed(base, swap(full, "summary"))
    assert torch.allclose(base, swap(full, "names"))
    # masked descriptor slots are ignored
    t = dict(text)
    t["descriptors"] = text["descriptors"].clone()
    t["descriptors"][:, 0, L - 1] = 5.0
    assert torch.allclose(base, full(EpisodeBatch(support, query, text=t)).logits, atol=1e-6)
    # without TSA the descriptors are unread; without STPR (or without SGF and ACU) the summary is unread
    no_tsa = _head(tsa=False)
    assert torch.allclose(no_tsa(EpisodeBatch(support, query, text=text)).logits, swap(no_tsa, "descriptors")) and no_tsa.descriptor_text is None
    for opts in ({"stpr": False}, {"sgf": False, "acu": False}):
        h = _head(**opts)
        assert torch.allclose(h(EpisodeBatch(support, query, text=text)).logits, swap(h, "summary")) and h.summary_text is None
        assert _changed(h(EpisodeBatch(support, query, text=text)).logits, swap(h, "descriptors"))
    # with nothing that reads class text the query is refined once, not once per class
    assert full.per_class and not _head(tsa=False, sgf=False, acu=False).per_class
    bare = _head(tsa=False, stpr=False)  # plain fused matching of the frames
    assert torch.allclose(bare(EpisodeBatch(support, query, text=text)).logits, bare(EpisodeBatch(support, query)).logits)
    # options that read no text need none: the trainer then loads none and builds the head without text_dim
    assert STARHead.text_need({"tsa": False, "stpr": False}) is None and STARHead.text_need({"tsa": False, "sgf": False, "acu": False}) is None
    assert STARHead.text_need({"tsa": False}) == "star" and STARHead.text_need({"stpr": False}) == "star"
    assert build_method("star", dim=D, num_frames=T, text_dim=None, tsa=False, stpr=False) is not None


def test_knowledge_modes_change_text_need_parameters_and_what_the_logits_read():
    support, query = _frames()
    text, other = _text(), _text(seed=9)
    assert [STARHead.text_need({"knowledge": k}) for k in ("llm", "name", "none")] == ["star", "names", None]
    assert STARHead.text_need({}) == "star"
    llm, name, none = _head(knowledge="llm"), _head(knowledge="name"), _head(knowledge="none")
    outs = {k: h(EpisodeBatch(support, query, text=text)).logits for k, h in (("llm", llm), ("name", name), ("none", none))}
    assert _changed(outs["llm"], outs["name"]) and _changed(outs["llm"], outs["none"]) and _changed(outs["name"], outs["none"])
    # name reads only the names; none reads no text at all, runs without any, and refines each query once
    swapped = {**text, "names": other["names"]}
    assert _changed(outs["name"], name(EpisodeBatch(support, query, text=swapped)).logits)
    assert torch.allclose(outs["name"], name(EpisodeBatch(support, query, text={"names": text["names"]})).logits)
    assert torch.allclose(outs["none"], none(EpisodeBatch(support, query)).logits) and not none.per_class
    keys = {k: {n for n, _ in h.named_parameters()} for k, h in (("llm", llm), ("name", name), ("none", none))}
    assert {"bank", "summary"} <= keys["none"] and not any("_text" in n for n in keys["none"])
    assert "bank" not in keys["llm"] and any(n.startswith("descriptor_text") for n in keys["llm"])


def test_order_positions_spread_real_descriptors_over_time():
    present = torch.tensor([[True, True, True, True], [True, True, True, False], [True, False, False, False]])
    assert torch.allclose(order_positions(present), torch.tensor([[0, 1 / 3, 2 / 3, 1], [0, 0.5, 1, 0], [0.5, 0, 0, 0]]))


def test_text_need_and_option_errors():
    """What fsar-train's --knowledge / --opt give (a dict of options) is checked where the head is asked about it."""
    from fsar.core.errors import FsarError

    assert STARHead.text_need({}) == "star" and STARHead.text_need({"knowledge": "none"}) is None
    assert STARHead.text_need({"knowledge": "name"}) == "names"
    with pytest.raises(FsarError, match="--knowledge must be one of llm, name, none, got 'gpt'"):
        STARHead.text_need({"knowledge": "gpt"})
    with pytest.raises(ValueError, match="unknown option.*skc for method 'star'.*tsa"):  # another method's switch
        build_method("star", dim=D, num_frames=T, text_dim=DT, skc=False)
    for bad, match in (({"knowledge": "bogus"}, "knowledge must be one of"), ({"strides": [1, 1]}, "distinct positive"),
                       ({"otam_weight": -1}, "weights must be >= 0"), ({"scan": "cuda"}, "scan must be one of"),
                       ({"tsa": "False"}, "option tsa must be true or false, got 'False'")):
        with pytest.raises(ValueError, match=match):
            _head(**bad)
    with pytest.raises(ValueError, match="built for 8 frames, got clips of 16"):
        _head()(EpisodeBatch(torch.randn(1, N, 1, 16, D), torch.randn(1, Q, 16, D), text=_text(e=1)))


# ------------------------------------------------------------------ missing knowledge


def test_missing_knowledge_is_one_line_naming_the_command(synth_root, fsar_cache, tmp_path):
    cfg = fast_config(synth_root, tmp_path / "run", method="star", create_text=False)
    with pytest.raises(FileNotFoundError) as err:
        Trainer(cfg)
    message = str(err.value)
    assert "\n" not in message and "fsar-knowledge generate --dataset synthetic --kind star" in message
    support, query = _frames()
    with pytest.raises(ValueError) as err:
        _head()(EpisodeBatch(support, query, text={"names": _text()["names"]}))
    assert "\n" not in str(err.value) and GEN_HINT in str(err.value) and "knowledge=name|none" in str(err.value)
    with pytest.raises(ValueError, match="needs text embeddings"):
        build_method("star", dim=D, num_frames=T, text_dim=None)
    assert build_method("star", dim=D, num_frames=T, text_dim=None, knowledge="none") is not None


# ------------------------------------------------------------------ training with real MiniLM knowledge


def _save_synthetic_star_knowledge(classes) -> None:
    """A hand-written star knowledge set for the small benchmark's classes (model folder 'handwritten')."""
    from _knowledge_helpers import make_row
    from fsar.knowledge.store import save_knowledge

    rows = []
    for c in classes:
        words = c.name.split()
        obj = words[words.index("a") + 1] if "a" in words else "object"
        descriptors = [f"A hand reaches towards the {obj}.", f"The hand starts {c.name}.",
                       f"The {obj} keeps moving as the hand guides it.", "The motion slows down and comes to rest."]
        rows.append(make_row(c.index, c.key, c.name, c.split, {"descriptors": descriptors, "summary": f"A person is {c.name}."}))
    save_knowledge("synthetic", "star", "handwritten", rows)


@pytest.mark.slow
def test_trains_end_to_end_on_real_minilm_knowledge_and_records_it(synth_root, fsar_cache, tmp_path):
    from fsar.data.registry import get_dataset

    _save_synthetic_star_knowledge(get_dataset("synthetic").classes)
    cfg = fast_config(synth_root, tmp_path / "run", method="star", episodes=24, batch=2, query=2, lr=2e-3, val_every=24,
                      warmup=0.0, test_episodes=20, create_text=True, opts={"inner": 32})
    trainer = Trainer(cfg)  # create_text: embeds the stored knowledge with the packaged MiniLM
    assert set(trainer.bank.tensors) >= {"names", "descriptors", "descriptors_mask", "summary"}
    assert trainer.bank.dim == 384 and trainer.model.head.text_dim == 384
    assert trainer.bank.tensors["descriptors"].shape[1:] == (4, 384)
    head = trainer.model.head
    before = {k: v.detach().clone() for k, v in head.state_dict().items()}
    result = trainer.run()
    # the trainer fed the knowledge through TSA and SGF: their text projections moved (a 24-episode run on the
    # tiny backbone from scratch stays near chance, so the loss is not the check here; test_loss_falls_... is)
    for key in ("descriptor_text.proj.0.weight", "summary_text.proj.0.weight", "stpr.sgf.weight", "tsa.order"):
        assert not torch.equal(before[key], head.state_dict()[key]), key
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    train = [r for r in rows if r.get("kind") == "train"]
    assert train and all(0 < r["loss"] < 50 for r in train)
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["knowledge"]["fingerprint"] == trainer.bank.fingerprint
    assert saved["knowledge"]["info"]["knowledge_model"] == "handwritten" and saved["knowledge"]["info"]["kind"] == "star"
    assert saved["config"]["opts"] == {"inner": 32} and 0 <= result["accuracy"] <= 100 and result["ci95"] > 0
