"""The registry reproduces the standard few-shot splits exactly, and class files are read strictly."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from fsar.data.registry import get_dataset, known_datasets, load_class_file, prompt_name

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "splits"
BENCHMARKS = ["hmdb51", "ucf101", "kinetics100", "ssv2_small", "ssv2_full"]


def _reference() -> Path:
    if not REFERENCE.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"reference splits not found at {REFERENCE}")
        pytest.skip("the reference splits (../shared/reference) are only present in the development checkout")
    return REFERENCE


@pytest.mark.parametrize("name", BENCHMARKS)
@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_split_lists_equal_reference(name, split):
    ref = [l.strip() for l in (_reference() / f"{name}_{split}.txt").read_text().splitlines() if l.strip()]
    assert [c.key for c in get_dataset(name).split(split)] == ref


@pytest.mark.parametrize("name", BENCHMARKS)
def test_splits_disjoint_and_indexed(name):
    info = get_dataset(name)
    keys = [c.key for c in info.classes]
    assert len(keys) == len(set(keys))
    assert [c.index for c in info.classes] == list(range(len(keys)))
    assert {c.split for c in info.classes} == {"train", "val", "test"}


def test_split_sizes():
    sizes = {n: tuple(len(get_dataset(n).split(s)) for s in ("train", "val", "test")) for n in BENCHMARKS}
    assert sizes == {
        "hmdb51": (31, 10, 10),
        "ucf101": (70, 10, 21),
        "kinetics100": (64, 12, 24),
        "ssv2_small": (64, 12, 24),
        "ssv2_full": (64, 12, 24),
    }


def test_prompt_names():
    assert prompt_name("ApplyEyeMakeup") == "apply eye makeup"
    assert prompt_name("brush_hair") == "brush hair"
    assert prompt_name("YoYo") == "yo yo"
    assert prompt_name("Pouring [something] into [something]") == "pouring something into something"
    assert prompt_name("air drumming") == "air drumming"


def test_ssv2_brackets_accepted():
    info = get_dataset("ssv2_small")
    assert info.by_key("Pouring [something] into [something]").key == "Pouring something into something"
    assert info.direction_matters


def test_unknown_dataset_lists_known():
    with pytest.raises(KeyError, match="unknown dataset .hmdb52.; choose one of: .*hmdb51"):
        get_dataset("hmdb52")
    assert "synthetic" in known_datasets()


def test_class_files(tmp_path):
    txt = tmp_path / "mine.txt"
    txt.write_text("ride a unicycle\n\n# a comment\nJugglingClubs\n")
    info = load_class_file(txt)
    assert [c.name for c in info.classes] == ["ride a unicycle", "juggling clubs"]
    csv = tmp_path / "mine.csv"
    csv.write_text("id,name\n1,fold_towel\n2,PourTea\n")
    assert [c.name for c in load_class_file(csv).classes] == ["fold towel", "pour tea"]
    js = tmp_path / "mine.json"
    js.write_text('["tie shoelaces", "open umbrella"]')
    assert [c.key for c in load_class_file(js).classes] == ["tie shoelaces", "open umbrella"]


@pytest.mark.parametrize(
    "name,text,match",
    [
        ("empty.txt", "\n\n", "empty"),
        ("dup.txt", "a b\nc d\na b\n", "line 3: class 'a b' repeats line 1"),
        ("bad.json", '["a", 3]', "item 2"),
        ("broken.json", '["a",', "line 1: not valid JSON"),
    ],
)
def test_bad_class_files(tmp_path, name, text, match):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_class_file(path)


def test_llm_backends_share_the_one_registry():
    """Backends are registered like methods and kinds: the names a user may pass, and a one-line unknown-name error."""
    from fsar.knowledge.backends import BACKENDS, BackendError, make_backend

    assert BACKENDS.names() == ["llamacpp", "openai", "vllm"]
    with pytest.raises(BackendError, match="unknown backend 'gpt'; choose one of: llamacpp, openai, vllm"):
        make_backend("gpt")
    with pytest.raises(ValueError, match="registered twice"):
        BACKENDS.register("openai", lambda model, base_url, concurrency: None)
