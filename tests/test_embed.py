"""Embeddings of knowledge sets and the stage-2 contract, on the real packaged MiniLM encoder."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import _knowledge_helpers as H
from fsar.knowledge import encoders
from fsar.knowledge.contract import MissingKnowledgeError, encode_class_names, load_text_embeddings
from fsar.knowledge.embed import COMPACT_AT, NAME_TEMPLATE, TextStore, embed_knowledge, set_dir
from fsar.knowledge.pipeline import ensure_embeddings
from fsar.knowledge.encoders import EncoderError, load_encoder, resolve_encoder
import datasets
import pyarrow.parquet as pq

from fsar.knowledge.store import features, knowledge_dir, load_knowledge


@pytest.fixture(scope="module")
def encoder():
    """The packaged MiniLM, loaded once for the module (load_encoder keeps it for the process)."""
    H.register_tiny()
    return load_encoder()


def encode(enc, texts: list[str]) -> np.ndarray:
    return enc.model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)


def cos(a, b) -> float:
    return float(np.dot(np.asarray(a, np.float64), np.asarray(b, np.float64)))


def test_dist_contract_shapes_order_and_values(fsar_cache, encoder):
    H.save_dist()
    embed_knowledge(H.DATASET, "dist")
    te = load_text_embeddings(H.DATASET, "dist")
    keys = [k for _, k, _, _ in H.class_rows()]
    assert te.class_keys == keys and len(te) == 6
    assert te.names.shape == (6, 384) and te.names.dtype == torch.float32
    assert te.items["spatial"].shape == (6, 4, 384) and te.items["temporal"].shape == (6, 4, 384)
    assert te.masks["spatial"].dtype == torch.bool
    # dribble has 3 spatial attributes: its 4th slot is padding (zeros, mask False)
    d = keys.index("dribble")
    assert te.masks["spatial"].sum(1).tolist() == [4, 3, 4, 4, 4, 4]
    assert te.masks["temporal"].all()
    assert torch.count_nonzero(te.items["spatial"][d, 3]) == 0
    # every real vector has unit norm
    for f in ("spatial", "temporal"):
        norms = te.items[f][te.masks[f]].norm(dim=-1)
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    assert torch.allclose(te.names.norm(dim=-1), torch.ones(6), atol=1e-5)
    # values: row c is class c of the registry, slot j its j-th attribute, names the documented prompt
    names = [n for _, _, n, _ in H.class_rows()]
    ref_names = encode(encoder, [NAME_TEMPLATE.format(name=n) for n in names])
    assert all(cos(te.names[i], ref_names[i]) > 0.999 for i in range(6))
    g = keys.index("golf")
    ref = encode(encoder, H.DIST["golf"]["temporal"])
    assert all(cos(te.items["temporal"][g, j], ref[j]) > 0.999 for j in range(4))
    assert te.info["encoder"] == resolve_encoder().id and te.info["dim"] == 384 and te.info["knowledge_model"] == H.MODEL
    assert te.info["knowledge_fingerprint"] == load_knowledge(H.DATASET, "dist").fingerprint
    # a split keeps registry order within it
    test = load_text_embeddings(H.DATASET, "dist", split="test")
    assert test.class_keys == ["golf", "push_up"]
    assert torch.allclose(test.items["temporal"][0], te.items["temporal"][g])
    assert test.fingerprint == te.fingerprint


def test_lga_stages_and_star_descriptors(fsar_cache, encoder):
    H.save_lga()
    H.save_star(short="golf")
    ensure_embeddings(H.DATASET, "lga")  # the knowledge exists: this embeds it
    lga = load_text_embeddings(H.DATASET, "lga")
    assert {k: tuple(v.shape) for k, v in lga.items.items()} == {"triplets": (6, 3, 384), "sentences": (6, 3, 384), "stages": (6, 3, 384)}
    assert lga.masks["stages"].all()
    onset = H.LGA_STAGES["pour"][0]
    t, s = encode(encoder, [" ".join(onset[:3]), onset[3]])
    p = lga.class_keys.index("pour")
    assert cos(lga.items["triplets"][p, 0], t) > 0.999 and cos(lga.items["sentences"][p, 0], s) > 0.999
    mean = (t + s) / np.linalg.norm(t + s)
    assert cos(lga.items["stages"][p, 0], mean) > 0.999

    ensure_embeddings(H.DATASET, "star")
    star = load_text_embeddings(H.DATASET, "star")
    assert star.items["descriptors"].shape == (6, 4, 384) and star.items["summary"].shape == (6, 384)
    assert star.masks["summary"].shape == (6,) and star.masks["summary"].all()
    assert star.masks["descriptors"][star.class_keys.index("golf")].tolist() == [True, True, False, False]


def test_cache_hit_then_only_changed_texts_are_encoded(fsar_cache, encoder):
    H.save_dist()
    first = embed_knowledge(H.DATASET, "dist")
    n_texts = 6 + sum(len(v["spatial"]) + len(v["temporal"]) for v in H.DIST.values())
    assert not first.cached and first.texts == n_texts and first.encoded == n_texts
    stamp = (first.path / "embeddings.parquet").stat().st_mtime_ns

    loaded = encoders._LOADED.pop(encoder.id)  # the second run must not even load the encoder
    try:
        second = embed_knowledge(H.DATASET, "dist")
        assert second.cached and second.encoded == 0
        assert encoder.id not in encoders._LOADED
    finally:
        encoders._LOADED[encoder.id] = loaded
    assert (first.path / "embeddings.parquet").stat().st_mtime_ns == stamp

    changed = {k: {f: list(v) for f, v in d.items()} for k, d in H.DIST.items()}
    changed["pour"]["spatial"][1] = "a tall glass of orange juice"
    H.save_dist(changed)
    third = embed_knowledge(H.DATASET, "dist")
    assert not third.cached and third.encoded == 1  # exactly the one new text
    te = load_text_embeddings(H.DATASET, "dist")
    p = te.class_keys.index("pour")
    assert cos(te.items["spatial"][p, 1], encode(encoder, ["a tall glass of orange juice"])[0]) > 0.999
    assert len(TextStore(resolve_encoder())) == n_texts + 1


def test_text_store_newest_wins_and_compacts(fsar_cache):
    store = TextStore(resolve_encoder())
    rng = np.random.default_rng(0)
    first = rng.standard_normal((3, 8)).astype(np.float32)
    store.add(["a", "b", "c"], ["ta", "tb", "tc"], first)
    newer = rng.standard_normal((1, 8)).astype(np.float32)
    store.add(["b"], ["tb"], newer)
    found = store.lookup(["a", "b", "zzz"])
    assert set(found) == {"a", "b"} and np.array_equal(found["b"], newer[0]) and np.array_equal(found["a"], first[0])
    for i in range(COMPACT_AT):  # one shard per call until the store merges them
        store.add([f"k{i}"], [f"text {i}"], rng.standard_normal((1, 8)).astype(np.float32))
    assert len(store._shards()) < COMPACT_AT
    assert len(store) == 3 + COMPACT_AT
    assert np.array_equal(store.lookup(["b"])["b"], newer[0])


def test_missing_knowledge_or_embeddings_name_the_command(fsar_cache, encoder):
    with pytest.raises(FileNotFoundError, match="fsar-knowledge generate --dataset tiny6 --kind dist"):
        load_text_embeddings(H.DATASET, "dist")
    H.save_dist()
    with pytest.raises(FileNotFoundError, match="fsar-knowledge embed --dataset tiny6 --kind dist"):
        load_text_embeddings(H.DATASET, "dist")
    ensure_embeddings(H.DATASET, "dist")  # what the error named, done by the pipeline; the contract only reads
    te = load_text_embeddings(H.DATASET, "dist")
    assert te.items["spatial"].shape == (6, 4, 384)
    assert (set_dir(H.DATASET, "dist", H.MODEL, resolve_encoder()) / "embeddings.parquet").is_file()
    changed = {**H.DIST, "golf": {"spatial": ["a putter"] + H.DIST["golf"]["spatial"][1:], "temporal": H.DIST["golf"]["temporal"]}}
    H.save_dist(changed)
    with pytest.raises(FileNotFoundError, match="out of date.*fsar-knowledge embed --dataset tiny6 --kind dist"):
        load_text_embeddings(H.DATASET, "dist")


def test_failed_class_is_an_error_or_falls_back_to_its_name(fsar_cache, encoder):
    H.save_dist(failed=("golf",))
    embed_knowledge(H.DATASET, "dist")
    with pytest.raises(MissingKnowledgeError, match=r"1 of 6 classes of tiny6 \(golf\).*fsar-knowledge generate"):
        load_text_embeddings(H.DATASET, "dist")
    # a split without the failed class needs no permission
    assert load_text_embeddings(H.DATASET, "dist", split="train").has_knowledge.all()
    te = load_text_embeddings(H.DATASET, "dist", allow_missing=True)
    g = te.class_keys.index("golf")
    assert te.info["missing"] == ["golf"] and te.has_knowledge.tolist() == [True, True, True, True, False, True]
    for f in ("spatial", "temporal"):
        assert te.masks[f][g].tolist() == [True, False, False, False]
        assert torch.allclose(te.items[f][g, 0], te.names[g])
        assert te.masks[f].any(dim=1).all()  # no row without a valid key


def test_encode_class_names_is_cached_and_matches_contract(fsar_cache, encoder):
    names = ["brush hair", "dribble"]
    v = encode_class_names(names)
    assert v.shape == (2, 384)
    assert cos(v[0], encode(encoder, ["a video of a person brush hair"])[0]) > 0.999
    bare = encode_class_names(names, template="{name}")
    assert cos(bare[1], encode(encoder, ["dribble"])[0]) > 0.999
    loaded = encoders._LOADED.pop(encoder.id)
    try:
        again = encode_class_names(names)  # from the text store: no encoder load
        assert encoder.id not in encoders._LOADED
    finally:
        encoders._LOADED[encoder.id] = loaded
    assert torch.equal(v, again)
    with pytest.raises(ValueError, match="at least one"):
        encode_class_names([])


def test_unknown_encoder_errors_are_one_line_and_offline_aware(fsar_cache, tmp_path):
    with pytest.raises(EncoderError) as e:
        resolve_encoder("no-such-encoder-xyz")
    msg = str(e.value)
    assert "no-such-encoder-xyz" in msg and "HF_HUB_OFFLINE=1" in msg and "\n" not in msg
    with pytest.raises(EncoderError, match="not an existing folder"):
        resolve_encoder("./missing/model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EncoderError, match="neither modules.json nor config.json"):
        resolve_encoder(str(tmp_path / "empty"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{\"model_type\": \"bert\"}")
    with pytest.raises(EncoderError, match="could not be loaded from"):
        load_encoder(str(broken))


def test_empty_or_all_failed_knowledge_set(fsar_cache):
    H.register_tiny()
    # an empty set on disk (save_knowledge refuses zero rows, so write the Parquet file as the store would)
    folder = knowledge_dir(H.DATASET, "dist", "empty")
    folder.mkdir(parents=True)
    empty = datasets.Dataset.from_dict({k: [] for k in features("dist")}, features=features("dist"))
    pq.write_table(empty.data.table, folder / "knowledge.parquet")
    with pytest.raises(ValueError, match=r"is empty \(0 classes\).*fsar-knowledge generate"):
        embed_knowledge(H.DATASET, "dist", model="empty")
    H.save_dist(knowledge={}, failed=("golf", "pour"), model="allfailed")
    with pytest.raises(ValueError, match="has no valid class.*golf"):
        embed_knowledge(H.DATASET, "dist", model="allfailed")


def test_clip_text_tower_truncates_long_texts(fsar_cache, tmp_path):
    folder = H.build_tiny_clip(tmp_path / "tinyclip")
    enc = load_encoder(str(folder))
    assert enc.max_tokens == 77 and enc.dim == 16
    long = "the golfer swings the club " * 40
    assert len(encoders._tokenizer(enc.model)(long)["input_ids"]) > 77  # would overflow the position embeddings
    v = enc.encode(["swing a club", long])
    assert v.shape == (2, 16) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert enc.truncated == 1
    # any sentence-transformers folder drives the whole pipeline
    knowledge = {k: dict(v) for k, v in H.DIST.items()}
    knowledge["golf"] = {"spatial": [long[:99]] * 1 + H.DIST["golf"]["spatial"][1:], "temporal": H.DIST["golf"]["temporal"]}
    H.save_dist(knowledge)
    ensure_embeddings(H.DATASET, "dist", encoder=str(folder))
    te = load_text_embeddings(H.DATASET, "dist", encoder=str(folder))
    assert te.names.shape == (6, 16) and te.info["encoder"].startswith("tinyclip@")


def test_cli_embed(fsar_cache, encoder):
    import typer

    from fsar.cli.knowledge_embed import register

    app = typer.Typer()
    register(app)
    runner = CliRunner()
    r = runner.invoke(app, ["embed", "--dataset", H.DATASET])
    assert r.exit_code == 2 and "fsar-knowledge generate --dataset tiny6" in r.output
    H.save_dist()
    H.save_lga()
    r = runner.invoke(app, ["embed", "--dataset", H.DATASET])  # all kinds that exist: dist and lga
    assert r.exit_code == 0, r.output
    assert "dist" in r.output and "lga" in r.output and "miss" in r.output
    r = runner.invoke(app, ["embed", "-d", H.DATASET, "-k", "dist"])
    assert r.exit_code == 0 and "hit" in r.output
    r = runner.invoke(app, ["embed", "-d", H.DATASET, "-k", "dist", "--encoder", "no-such-encoder-xyz"])
    assert r.exit_code == 2 and "could not be loaded" in r.output
    r = runner.invoke(app, ["embed", "-d", H.DATASET, "-k", "bogus"])
    assert r.exit_code == 2 and "unknown knowledge kind" in r.output
