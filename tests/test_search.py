"""Search over embedded knowledge with real faiss indexes and the packaged MiniLM encoder."""
from __future__ import annotations

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

import _knowledge_helpers as H
from fsar.knowledge.embed import embed_knowledge, embeddings_root
from fsar.knowledge.encoders import load_encoder
from fsar.knowledge.search import build_index, collection_index, load_collection, recall_at_k, search


@pytest.fixture(scope="module")
def encoder():
    H.register_tiny()
    return load_encoder()


@pytest.fixture(scope="module")
def embedded(tmp_path_factory, encoder):
    """One cache with the tiny data set's dist and lga knowledge embedded, shared by the read-only tests here."""
    root = tmp_path_factory.mktemp("search-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FSAR_CACHE", str(root))
        H.save_dist()
        H.save_lga()
        embed_knowledge(H.DATASET, "dist")
        embed_knowledge(H.DATASET, "lga")
        yield root


def test_a_class_attribute_finds_its_class_first(embedded):
    col = load_collection(H.DATASET)
    assert col.rows and col.vectors.shape[1] == 384
    for key, d in H.DIST.items():
        query = d["temporal"][0]
        items, classes = search(query, H.DATASET, k=5, collection=col)
        assert classes[0].class_key == key, (query, classes[0])
        assert items[0].text == query and items[0].score > 0.999
        assert len(items) == 5 and [h.score for h in items] == sorted((h.score for h in items), reverse=True)
    # a paraphrase, not a stored text, still lands on the right class
    _, classes = search("hitting a small ball with a club on grass", H.DATASET, k=3, collection=col)
    assert classes[0].class_key == "golf"
    # the kind filter keeps only that kind's items (and names)
    items, _ = search("the ball bounces", H.DATASET, k=10, kind="lga")
    assert {h.kind for h in items} <= {"lga", "name"}


def test_flat_index_is_exact_and_large_collections_get_ivf():
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((64, 32)).astype(np.float32)
    x = centers[rng.integers(0, 64, 12_000)] + 0.35 * rng.standard_normal((12_000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[rng.choice(12_000, 50, replace=False)] + 0.05 * rng.standard_normal((50, 32)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)

    flat = build_index(x, threshold=20_000)
    assert flat.kind == "flat"
    scores, ids = flat.search(q, 10)
    brute = np.argsort(-(q @ x.T), axis=1)[:, :10]
    assert recall_at_k(ids, brute) == 1.0
    assert np.allclose(scores[:, 0], (q @ x.T).max(1), atol=1e-5)

    ivf = build_index(x, threshold=10_000)  # above the threshold: approximate
    assert ivf.kind == "ivf" and ivf.nprobe >= 1
    _, approx = ivf.search(q, 10)
    assert recall_at_k(approx, ids) >= 0.9
    ivf.nprobe = 1
    _, coarse = ivf.search(q, 10)
    assert recall_at_k(coarse, ids) < recall_at_k(approx, ids)  # nprobe really changes the search


def test_collection_index_switches_to_ivf_and_caches_it(embedded):
    col = load_collection(H.DATASET)
    index = collection_index(col, threshold=10)  # force the approximate path on a small collection
    assert index.kind == "ivf" and index.n == len(col.rows)
    cached = list((embeddings_root() / "_index").glob(f"{col.fingerprint}-*.faiss"))
    assert len(cached) == 1
    col2 = load_collection(H.DATASET)
    again = collection_index(col2, threshold=10)  # read back from disk
    assert again.kind == "ivf" and again.n == index.n
    items, classes = search(H.DIST["pour"]["spatial"][0], H.DATASET, k=3, collection=col2)
    assert classes[0].class_key == "pour"


def test_no_embeddings_names_the_command(fsar_cache, encoder):
    with pytest.raises(FileNotFoundError, match="fsar-knowledge embed --dataset tiny6 --kind dist"):
        load_collection(H.DATASET)
    with pytest.raises(FileNotFoundError, match="no embeddings for any data set"):
        load_collection("all")


def test_cli_search(embedded):
    from fsar.cli.knowledge_embed import register

    app = typer.Typer()
    register(app)
    runner = CliRunner()
    r = runner.invoke(app, ["search", "a bottle tilts and liquid streams into a glass", "--dataset", H.DATASET, "--k", "3"])
    assert r.exit_code == 0, r.output
    classes_table = r.output.split("nearest classes")[1]
    first_row = next(line for line in classes_table.splitlines() if line.strip().startswith("│ 1"))
    assert "pour" in first_row
    assert "exact IndexFlatIP" in r.output
    r = runner.invoke(app, ["search", "anything", "--dataset", "hmdb51"])
    assert r.exit_code == 2 and "fsar-knowledge embed --dataset hmdb51" in r.output
    r = runner.invoke(app, ["search", "  ", "--dataset", H.DATASET])
    assert r.exit_code == 2 and "query is empty" in r.output
