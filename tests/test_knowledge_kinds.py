"""Knowledge kinds are registered modules: a new kind runs through every shared stage-1 module without editing one.

The test kind ``facts`` (two short facts and the action's main verb per class) declares its schema, features, checks,
texts, tensor layout (a pooled ``gist`` field, a scalar ``verb``), template and worked examples here, is registered as
a kind module would register it, and goes through the prompt, validation, the store, the real packaged MiniLM
encoder, the contract, the report and its filter, and ``fsar-knowledge show``. The fingerprints of the built-in kinds
are pinned to the values they had before kinds became modules, so users' caches stay valid.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import List, Value
from typer.testing import CliRunner

import _knowledge_helpers as H
from fsar.core.errors import FsarError, UnknownName
from fsar.knowledge.contract import load_text_embeddings
from fsar.knowledge.embed import _set_key, embed_knowledge, embeddings_fingerprint
from fsar.knowledge.encoders import load_encoder, resolve_encoder
from fsar.knowledge.generate import schema_hash
from fsar.knowledge.kinds import KINDS, KnowledgeKind, get_kind, parse_kinds
from fsar.knowledge.pipeline import ensure_embeddings
from fsar.knowledge.prompting import render_prompt, template_hash
from fsar.knowledge.report import Thresholds, build_report, filter_knowledge
from fsar.knowledge.schemas import Phrase, Word, fixed_list
from fsar.knowledge.store import features, load_knowledge, save_knowledge
from fsar.knowledge.validate import PHRASE_WORDS, InvalidAnswer, check_item, check_unique, validate_answer

# ---------------------------------------------------------------- the test kind, written as a kind module would be

TEMPLATE = """Fact sheets about actions in short videos: {{ counts.facts }} short facts and the main verb.
{% for ex in examples %}
Action: {{ ex.name }}
Sheet: {{ ex.answer | tojson }}
{% endfor %}
Action: {{ name }}
{%- if error %}
(Note: an earlier sheet was rejected: {{ error }})
{%- endif %}
Sheet:"""

EXAMPLES = [{"name": "juggling balls", "answer": {"facts": ["three balls circle through the air", "both hands toss and catch"],
                                                  "verb": "juggle"}}]


class Facts(KnowledgeKind):
    """``{"facts": [phrase x n], "verb": word}``; the contract gives facts [C, n, D], a pooled gist [C, 1, D], verb [C, D]."""

    name = "facts"
    paper = "a test kind"
    description = "short facts about an action and its main verb"
    default_counts = {"facts": 2}
    fields = ("facts", "verb")
    scalars = ("verb",)
    kept_fields = ("verb",)  # the filter never drops the verb

    def answer_fields(self, counts):
        return {"facts": (fixed_list(Phrase, counts["facts"]), ...), "verb": (Word, ...)}

    def features(self):
        return {"facts": List(Value("string")), "verb": Value("string")}

    def check(self, knowledge, class_name):
        for i, fact in enumerate(knowledge["facts"], 1):
            check_item(f"fact {i}", fact, class_name, self.name, PHRASE_WORDS, phrase=True)
        check_unique("fact", knowledge["facts"])

    def texts(self, knowledge):
        return {"facts": list(knowledge["facts"]), "verb": [knowledge["verb"]]}

    def pool(self, items, masks):
        m = masks["facts"].unsqueeze(-1).float()  # [C, n, 1]
        items["gist"] = F.normalize((items["facts"] * m).sum(1, keepdim=True), dim=-1)  # [C, 1, D]
        masks["gist"] = masks["facts"].any(1, keepdim=True)  # [C, 1]

    def template_source(self):
        return TEMPLATE

    def examples(self):
        return EXAMPLES


FACTS = {
    "brush_hair": (["a comb or brush in one hand", "strokes run from scalp to tips"], "brush"),
    "dribble": (["a ball bounces beside the legs", "the palm pushes the ball down"], "bounce"),
    "ride_bike": (["two wheels roll along a road", "the feet push the pedals"], "pedal"),
    "pour": (["a jug tilts over a glass", "liquid streams into the cup"], "pour"),
    "golf": (["a club swings over the shoulder", "a small white ball flies away"], "swing"),
    # push_up has no valid knowledge: its row is stored as failed
}


@pytest.fixture
def facts_kind():
    """``facts`` registered for one test, as ``@KINDS.register("facts")`` in its own module would, then removed."""
    KINDS.register("facts")(Facts)
    yield get_kind("facts")
    KINDS.unregister("facts")


def answer(key: str, name: str) -> str:
    facts, verb = FACTS[key]
    return json.dumps({"action": name, "facts": facts, "verb": verb})


def store_facts(kind: KnowledgeKind):
    """Validate each class's answer as generation does, and store the rows (push_up failed)."""
    rows = []
    for i, key, name, split in H.class_rows():
        knowledge = validate_answer(kind, kind.schema(action=name), name, answer(key, name)) if key in FACTS else None
        rows.append(H.make_row(i, key, name, split, knowledge, attempts=1 if knowledge else 3))
    return save_knowledge(H.DATASET, "facts", H.MODEL, rows)


def test_a_new_kind_goes_through_prompt_validation_store_embedding_and_contract(fsar_cache, facts_kind):
    kind = facts_kind
    assert "facts" in KINDS and [k.name for k in parse_kinds("dist,facts")] == ["dist", "facts"]

    # prompt: its own template and examples, the count filled in, an example of the same action never shown
    prompt = render_prompt(kind, "pour", kind.counts())
    assert prompt.startswith("Fact sheets about actions in short videos: 2 short facts") and "juggling balls" in prompt
    assert "three balls circle" not in render_prompt(kind, "juggling balls", kind.counts())
    assert len(template_hash(kind)) == 16 and template_hash(kind) == template_hash("facts")
    schema = kind.schema(action="pour", facts=3).model_json_schema()
    assert schema["title"] == "FactsKnowledge" and schema["properties"]["facts"]["minItems"] == 3
    assert kind.counts({"facts": 3, "spatial": 9}) == {"facts": 3}  # another kind's count is not its own

    # validation: the schema, then the kind's own checks
    ok = validate_answer(kind, kind.schema(action="pour"), "pour", answer("pour", "pour"))
    assert ok == {"facts": list(FACTS["pour"][0]), "verb": "pour"}
    bad = [
        ({"action": "pour", "facts": ["a jug tilts over a glass"], "verb": "pour"}, "facts"),  # one fact, two asked
        ({"action": "pour", "facts": ["a jug tilts", "a jug tilts"], "verb": "pour"}, "repeats item 1"),
        ({"action": "pour", "facts": ["three balls circle through the air", "a jug tilts"], "verb": "pour"}, "copied from an example"),
        ({"action": "pour", "facts": ["a jug tilts over the", "a glass fills"], "verb": "pour"}, "ends mid-thought"),
    ]
    for obj, reason in bad:
        with pytest.raises(InvalidAnswer, match=reason):
            validate_answer(kind, kind.schema(action="pour"), "pour", json.dumps(obj))

    # storage: typed features of its own, the knowledge read back as written
    ks = store_facts(kind)
    assert features("facts")["knowledge"] == {"facts": List(Value("string")), "verb": Value("string")}
    back = load_knowledge(H.DATASET, "facts")
    assert back.fingerprint == ks.fingerprint and len(back.ok) == 5 and [r["class_key"] for r in back.failed] == ["push_up"]
    pour = next(r for r in back.rows if r["class_key"] == "pour")
    assert pour["knowledge"] == {"facts": list(FACTS["pour"][0]), "verb": "pour"}
    assert back.texts(pour) == {"facts": list(FACTS["pour"][0]), "verb": ["pour"]}

    # embedding with the real packaged MiniLM: every class's name prompt, every valid class's facts and verb
    ensure_embeddings(H.DATASET, "facts")
    r = embed_knowledge(H.DATASET, "facts")
    assert r.cached and r.texts == 6 + 5 * 3

    # the contract: the kind's layout (facts [C, 2, D], pooled gist [C, 1, D], scalar verb [C, D]), values from MiniLM
    with pytest.raises(FsarError, match="no valid 'facts' knowledge for 1 of 6 classes.*push up"):
        load_text_embeddings(H.DATASET, "facts")
    te = load_text_embeddings(H.DATASET, "facts", allow_missing=True)
    assert list(te.items) == ["facts", "verb", "gist"]
    assert te.items["facts"].shape == (6, 2, 384) and te.items["gist"].shape == (6, 1, 384) and te.items["verb"].shape == (6, 384)
    assert te.masks["verb"].shape == (6,) and te.masks["verb"].all() and te.info["missing"] == ["push_up"]
    assert te.masks["facts"].sum(1).tolist() == [2, 2, 2, 2, 2, 1]  # push_up: its name in slot 0 only
    enc = load_encoder()
    p = te.class_keys.index("pour")
    ref = enc.model.encode([*FACTS["pour"][0], "pour"], normalize_embeddings=True, convert_to_numpy=True)
    assert np.allclose(te.items["facts"][p].numpy(), ref[:2], atol=1e-5)
    assert np.allclose(te.items["verb"][p].numpy(), ref[2], atol=1e-5)
    gist = ref[:2].sum(0) / np.linalg.norm(ref[:2].sum(0))
    assert np.allclose(te.items["gist"][p, 0].numpy(), gist, atol=1e-5)
    u = te.class_keys.index("push_up")  # no knowledge: its name vector stands in, in slot 0
    assert torch.allclose(te.items["facts"][u, 0], te.names[u]) and not te.has_knowledge[u]


def test_a_new_kind_is_reported_filtered_and_shown(fsar_cache, facts_kind):
    store_facts(facts_kind)
    rep = build_report(H.DATASET, "facts", thresholds=Thresholds(min_relevance=0.99, drop_generic=False))
    items = rep.data["items"]
    assert {it["field"] for it in items} == {"facts", "verb"} and rep.data["overall"]["items"] == 5 * 3
    assert all(it["drop"] == (it["field"] == "facts") for it in items)  # the verb is scored, never dropped
    fk = filter_knowledge(rep)
    # every fact of every class fell below the threshold: the classes become failed, never silently emptied
    assert fk.model == f"{H.MODEL}.filtered" and len(fk.ok) == 0
    assert all("filter: all 2 items fell below the thresholds" in r["errors"][-1] for r in fk.rows if r["class_key"] != "push_up")

    from fsar.cli.knowledge import app

    r = CliRunner().invoke(app, ["show", "--dataset", H.DATASET, "--kind", "facts", "--model", H.MODEL, "--class", "golf"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["knowledge"] == {"facts": list(FACTS["golf"][0]), "verb": "swing"}


def test_an_unregistered_kind_is_unknown(facts_kind):
    KINDS.unregister("facts")
    with pytest.raises(UnknownName, match="unknown knowledge kind 'facts'; known kinds: dist, lga, star"):
        get_kind("facts")
    KINDS.register("facts")(Facts)  # the fixture removes it again


def test_the_built_in_kinds_keep_their_fingerprints(fsar_cache):
    """The values these had before kinds became modules: a change here would invalidate users' caches (the dist
    template hash changed on purpose on 2026-12-06, when the template began to ask for phrases of 2 to 8 words; the
    dist and lga schema hashes on 2026-12-06, when the phrase bound rose from 10 to 12 words and the triplet field
    bound from 4 to 6)."""
    H.register_tiny()
    sets = {"dist": H.save_dist(failed=("golf",)), "lga": H.save_lga(), "star": H.save_star()}
    spec = resolve_encoder(None)
    pinned = {
        "dist": ("a538121e36619854", "8f11836a27163f86", "151befae5cd610a6", "a4fd08a8b2f9e12e", "59f2afa553bb864a", "cc3b91c5512ecca9"),
        "lga": ("0c9cef642049f5bf", "0ace9834686a247a", "0ace9834686a247a", "b616af7b4ed62123", "89eb0cbae044fa3b", "8752390828099ea6"),
        "star": ("19052c0217e93aca", "fc712a510aec5229", "89109bd0029e8f15", "658538b134fe94a0", "8bb38b4643c3ecb3", "ab551023e0e83f46"),
    }
    for name, ks in sets.items():
        kind = get_kind(name)
        got = (ks.fingerprint, schema_hash(kind, {}), schema_hash(kind, {"spatial": 3, "temporal": 2, "descriptors": 5}),
               template_hash(name), embeddings_fingerprint(ks.fingerprint, spec.id), _set_key(ks, spec, "a video of a person {name}"))
        assert got == pinned[name], name


# ---------------------------------------------------------------- the stage boundary: the contract only reads


def test_the_contract_only_reads_and_ensure_knowledge_makes_what_is_missing(fsar_cache, capfd):
    from fsar.knowledge.errors import KnowledgeNotFoundError
    from fsar.knowledge.pipeline import ensure_knowledge, needs_generation

    H.register_tiny()
    with pytest.raises(KnowledgeNotFoundError, match="run: fsar-knowledge generate --dataset tiny6 --kind dist"):
        load_text_embeddings(H.DATASET, "dist")
    H.save_dist()
    with pytest.raises(FsarError, match="no embeddings of tiny6/dist/handwritten.*run: fsar-knowledge embed"):
        load_text_embeddings(H.DATASET, "dist")
    assert not (fsar_cache / "embeddings").exists()  # reading wrote nothing

    # every class has knowledge: nothing to generate (no LLM), the set is embedded, and the contract reads it
    assert not needs_generation(H.DATASET, "dist")
    capfd.readouterr()
    ensure_knowledge(H.DATASET, "dist", progress=False)
    err = capfd.readouterr().err
    assert "embedding the knowledge of 'handwritten'" in err and "generating" not in err
    te = load_text_embeddings(H.DATASET, "dist")
    assert te.items["spatial"].shape == (6, 4, 384)
    ensure_knowledge(H.DATASET, "dist", progress=False)  # current: nothing to do, nothing printed
    assert capfd.readouterr().err == ""

    # a failed class is what generation would retry; a named set is used as it is, never generated into
    H.save_dist(failed=("golf",))
    assert needs_generation(H.DATASET, "dist") and needs_generation(H.DATASET, "dist", split="test")
    assert not needs_generation(H.DATASET, "dist", split="train")
    ensure_knowledge(H.DATASET, "dist", split="train", progress=False)  # the train classes are complete: embeds only
    assert "generating" not in capfd.readouterr().err
    ensure_knowledge(H.DATASET, "dist", model=H.MODEL, progress=False)
    assert "generating" not in capfd.readouterr().err
    assert load_text_embeddings(H.DATASET, "dist", allow_missing=True).info["missing"] == ["golf"]


@pytest.mark.slow
def test_ensure_knowledge_generates_with_the_report_the_cli_prints(fsar_cache, capfd):
    """The real embedded LLM (Gemma 3 270M) makes the one val class's knowledge; the report is the CLI's."""
    from fsar.cli.knowledge import app
    from fsar.knowledge.pipeline import ensure_knowledge

    H.register_tiny()
    ensure_knowledge(H.DATASET, "dist", split="val", progress=False)
    err = " ".join(capfd.readouterr().err.split())  # rich wraps long lines
    assert "tiny6 · dist: knowledge missing for split 'val'; generating it" in err
    # (1 to 3 calls: a first answer that fails validation is asked again)
    assert re.search(r"tiny6 · dist: 1/1 valid \(0 kept, [123] LLM calls, 0 cached answers", err), err
    assert "embedding the knowledge of 'gemma-3-270m-q4_k_m'" in err
    te = load_text_embeddings(H.DATASET, "dist", split="val")
    assert te.class_keys == ["pour"] and te.has_knowledge.all()

    r = CliRunner().invoke(app, ["generate", "--dataset", H.DATASET, "--kind", "dist", "--split", "val"])
    assert r.exit_code == 0, r.output
    assert "tiny6 · dist: 1/1 valid (1 kept, 0 LLM calls, 0 cached answers" in " ".join(r.output.split())
