"""The knowledge store under kills and concurrent writers (issue 10, defects 4 and 6)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fsar.knowledge.store import MANIFEST, knowledge_dir, list_knowledge, load_knowledge, save_knowledge


def row(index: int, key: str, ok: bool = True) -> dict:
    return {
        "class_key": key, "class_name": key.replace("_", " "), "split": "train", "index": index,
        "status": "ok" if ok else "failed",
        "knowledge": {"spatial": [f"a {key} thing"], "temporal": [f"the {key} moves"]} if ok else None,
        "raw_outputs": ["{}"], "errors": [] if ok else ["bad"], "provenance": {"backend": "handwritten", "model": "m", "attempts": 1},
    }


def cli(*args, cache):
    return subprocess.run([sys.executable, "-m", "fsar.cli.knowledge", *args], capture_output=True, text=True,
                          env={**os.environ, "FSAR_CACHE": str(cache)})


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_list_and_show_agree_after_a_kill_between_parquet_and_manifest(fsar_cache):
    save_knowledge("hmdb51", "dist", "m", [row(0, "brush_hair"), row(1, "catch")])
    folder = knowledge_dir("hmdb51", "dist", "m")
    old_manifest = (folder / MANIFEST).read_text()
    save_knowledge("hmdb51", "dist", "m", [row(0, "brush_hair"), row(1, "catch"), row(2, "chew", ok=False)])
    (folder / MANIFEST).write_text(old_manifest)  # what a kill right after the Parquet rename leaves

    ks = load_knowledge("hmdb51", "dist", "m")
    [listed] = list_knowledge()
    assert (listed["classes"], listed["ok"], listed["failed"]) == (len(ks.rows), len(ks.ok), len(ks.failed)) == (3, 2, 1)
    assert listed["fingerprint"] == ks.fingerprint
    assert json.loads((folder / MANIFEST).read_text())["classes"] == 3  # the stale copy was repaired

    res = cli("list", cache=fsar_cache)
    assert res.returncode == 0 and " 3 " in res.stdout and " 2 " in res.stdout, res.stdout
    shown = json.loads(cli("show", "-d", "hmdb51", "-k", "dist", "--model", "m", cache=fsar_cache).stdout)
    assert len(shown) == 3


def test_temp_files_of_dead_writers_are_removed(fsar_cache):
    save_knowledge("hmdb51", "dist", "m", [row(0, "brush_hair")])
    folder = knowledge_dir("hmdb51", "dist", "m")
    dead = folder / f".knowledge.parquet.{dead_pid()}.tmp"
    dead_manifest = folder / f".manifest.json.{dead_pid()}.tmp"
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = folder / f".knowledge.parquet.{alive.pid}.tmp"  # a writer still at work: left alone
        for p in (dead, dead_manifest, live):
            p.write_bytes(b"half a file")
        save_knowledge("hmdb51", "dist", "m", [row(0, "brush_hair"), row(1, "catch")])
        assert not dead.exists() and not dead_manifest.exists()
        assert live.exists()
    finally:
        alive.kill()
        alive.wait()
    assert len(load_knowledge("hmdb51", "dist", "m").rows) == 2


def test_merge_rereads_the_store_and_keeps_other_writers_rows(fsar_cache):
    from fsar.knowledge.store import merge_knowledge

    save_knowledge("hmdb51", "dist", "m", [row(0, "brush_hair")])
    # another writer stored "catch" after this one read the store: merging "chew" must keep both
    merge_knowledge("hmdb51", "dist", "m", [row(1, "catch")])
    ks = merge_knowledge("hmdb51", "dist", "m", [row(2, "chew"), row(0, "brush_hair", ok=False)],
                         keep_stored=lambda stored, new: stored["status"] == "ok" and new["status"] != "ok")
    assert [(r["class_key"], r["status"]) for r in ks.rows] == [("brush_hair", "ok"), ("catch", "ok"), ("chew", "ok")]


@pytest.mark.slow
def test_two_generate_runs_at_once_lose_no_row(fsar_cache):
    """Two real processes generate different classes into one set at the same time: all 8 rows are stored."""
    args = ["generate", "--dataset", "hmdb51", "--kind", "star", "--limit", "4", "--max-tokens", "4", "--max-attempts", "1"]
    env = {**os.environ, "FSAR_CACHE": str(fsar_cache), "FSAR_LLM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "fsar.cli.knowledge", *args, "--split", split], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for split in ("train", "test")]
    try:
        errs = [p.communicate(timeout=600)[1] for p in procs]
    finally:  # never leave a writer running when the test fails
        for p in procs:
            p.kill()
            p.wait()
    assert [p.returncode for p in procs] == [1, 1], errs  # 4 tokens never make a valid answer: stored as failed
    ks = load_knowledge("hmdb51", "star")
    assert len(ks.rows) == 8, [r["class_key"] for r in ks.rows]
    assert [r["split"] for r in ks.rows] == ["train"] * 4 + ["test"] * 4
    [listed] = list_knowledge()
    assert listed["classes"] == 8
