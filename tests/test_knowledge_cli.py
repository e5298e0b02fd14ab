"""fsar-knowledge on bad input: one clear line, a non-zero exit, and nothing written. Also dry runs and export."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fsar.knowledge.store import save_knowledge


def cli(*args, cache=None):
    env = dict(os.environ)
    if cache is not None:
        env["FSAR_CACHE"] = str(cache)
    return subprocess.run([sys.executable, "-m", "fsar.cli.knowledge", *args], capture_output=True, text=True, env=env)


def _one_error_line(res) -> str:
    lines = [l for l in res.stderr.strip().splitlines() if l.strip()]
    assert res.returncode == 2, res.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    return lines[0]


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--dataset", "hmdb52"], "unknown dataset 'hmdb52'; choose one of: hmdb51"),
        (["--dataset", "hmdb51", "--kind", "dist,colour"], "unknown knowledge kind 'colour'; known kinds: dist, lga, star"),
        (["--dataset", "hmdb51", "--split", "dev"], "unknown split 'dev'"),
        (["--dataset", "hmdb51", "--backend", "gpt"], "unknown backend 'gpt'"),
        (["--dataset", "hmdb51", "--limit", "0"], "--limit must be at least 1"),
    ],
)
def test_bad_arguments(fsar_cache, args, expected):
    line = _one_error_line(cli("generate", *args, cache=fsar_cache))
    assert expected in line
    assert not any(fsar_cache.rglob("*.parquet"))


def test_model_file_that_is_not_gguf(fsar_cache, tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not a model")
    line = _one_error_line(cli("generate", "--dataset", "hmdb51", "--model", str(fake), cache=fsar_cache))
    assert "is not a GGUF file" in line
    missing = _one_error_line(cli("generate", "--dataset", "hmdb51", "--model", str(tmp_path / "nope.gguf"), cache=fsar_cache))
    assert "does not exist" in missing


def test_malformed_class_file_names_the_line(fsar_cache, tmp_path):
    f = tmp_path / "classes.txt"
    f.write_text("juggle clubs\nfold towel\njuggle clubs\n")
    line = _one_error_line(cli("generate", "--classes", str(f), cache=fsar_cache))
    assert "line 3" in line and "repeats line 1" in line
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    assert "empty" in _one_error_line(cli("generate", "--classes", str(empty), cache=fsar_cache))


def test_unwritable_cache(tmp_path):
    if os.geteuid() == 0:
        blocker = tmp_path / "file"  # root can write anywhere: make the cache path a regular file instead
        blocker.write_text("")
        cache = blocker / "cache"
    else:
        cache = tmp_path / "ro"
        cache.mkdir(mode=0o500)
    line = _one_error_line(cli("generate", "--dataset", "hmdb51", "--limit", "1", cache=cache))
    assert "cache folder" in line and "FSAR_CACHE" in line


def test_dry_run_prints_prompts_and_writes_nothing(fsar_cache, tmp_path):
    f = tmp_path / "mine.csv"
    f.write_text("name\nTieShoelaces\n")
    res = cli("generate", "--classes", str(f), "--kind", "all", "--dry-run", cache=fsar_cache)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("Action: tie shoelaces") == 3
    assert '"action": "peeling a potato"' in res.stdout  # a worked example
    assert not any(fsar_cache.iterdir())


def test_show_export_list(fsar_cache, tmp_path):
    row = {
        "class_key": "brush_hair", "class_name": "brush hair", "split": "train", "index": 0, "status": "ok",
        "knowledge": {"spatial": ["a comb", "a mirror"], "temporal": ["strokes down", "hair smooth"]},
        "raw_outputs": ["{}"], "errors": [], "provenance": {"backend": "llamacpp", "model": "m.gguf", "attempts": 1},
    }
    save_knowledge("hmdb51", "dist", "m", [row])
    shown = json.loads(cli("show", "-d", "hmdb51", "-k", "dist", "--class", "brush hair", cache=fsar_cache).stdout)
    assert shown["knowledge"]["spatial"] == ["a comb", "a mirror"]
    missing = cli("show", "-d", "hmdb51", "-k", "dist", "--class", "catch", cache=fsar_cache)
    assert missing.returncode == 2 and "has no 'dist' knowledge" in missing.stderr
    for fmt in ("json", "jsonl", "parquet"):
        out = tmp_path / f"k.{fmt}"
        res = cli("export", "-d", "hmdb51", "-k", "dist", "--format", fmt, "--out", str(out), cache=fsar_cache)
        assert res.returncode == 0 and out.stat().st_size > 0, res.stderr
    assert json.loads((tmp_path / "k.json").read_text())["classes"][0]["provenance"]["attempts"] == 1
    listed = cli("list", cache=fsar_cache)
    assert "hmdb51" in listed.stdout and "dist" in listed.stdout
    assert "no 'lga' knowledge" in cli("show", "-d", "hmdb51", "-k", "lga", cache=fsar_cache).stderr
