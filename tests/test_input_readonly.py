"""A cache that cannot be written: every fsar-knowledge command says so in one line, never with a traceback
(issue 10, defect 7). A real bug (any other OSError) keeps its traceback."""
from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from fsar.knowledge.embed import embed_knowledge
from fsar.knowledge.store import save_knowledge

ROW = {
    "class_key": "brush_hair", "class_name": "brush hair", "split": "train", "index": 0, "status": "ok",
    "knowledge": {"spatial": ["a hairbrush in one hand", "long hair"], "temporal": ["the brush strokes down", "the hair gets smooth"]},
    "raw_outputs": ["{}"], "errors": [], "provenance": {"backend": "handwritten", "model": "m", "attempts": 1},
}


def knowledge_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "fsar.cli.knowledge", *args]


def one_error_line(res) -> str:
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert res.returncode == 2, res.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert "Traceback" not in res.stderr
    return lines[0]


def _ro_mount_works(folder: Path) -> bool:
    cmd = ["unshare", "-m", "sh", "-c", 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && ! touch "$0/probe"', str(folder)]
    try:
        return shutil.which("unshare") is not None and subprocess.run(cmd, capture_output=True).returncode == 0
    except OSError:
        return False


@pytest.fixture
def read_only(fsar_cache):
    """Run a command with the cache read-only: a read-only bind mount (root, which ignores permissions) or the
    write permission taken away (any other user)."""
    if os.geteuid() != 0:
        modes = {}
        for p in [fsar_cache, *fsar_cache.rglob("*")]:
            if p.is_dir():
                modes[p] = p.stat().st_mode
                p.chmod(modes[p] & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        yield lambda cmd: subprocess.run(cmd, capture_output=True, text=True)
        for p, mode in modes.items():
            p.chmod(mode)
        return
    if not _ro_mount_works(fsar_cache):
        pytest.skip("running as root without mount namespaces: no way to make a folder read-only here")
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"'
    yield lambda cmd: subprocess.run(["unshare", "-m", "sh", "-c", script, str(fsar_cache), *cmd], capture_output=True, text=True)


def test_embed_report_export_on_a_read_only_cache(fsar_cache, read_only):
    save_knowledge("hmdb51", "dist", "m", [ROW])
    embed_knowledge("hmdb51", "dist", "m")  # embeddings exist: report only has to write its own files
    for cmd in (["export", "-d", "hmdb51", "-k", "dist"], ["report", "-d", "hmdb51", "-k", "dist"],
                ["embed", "-d", "hmdb51", "-k", "dist", "--force"], ["generate", "-d", "hmdb51", "--limit", "1"]):
        line = one_error_line(read_only(knowledge_cmd(*cmd)))
        assert str(fsar_cache) in line and "FSAR_CACHE" in line, (cmd, line)
        assert "read-only" in line or "permission denied" in line or "cannot write to cache folder" in line, (cmd, line)
    # reading still works
    assert read_only(knowledge_cmd("show", "-d", "hmdb51", "-k", "dist")).returncode == 0
    assert read_only(knowledge_cmd("list")).returncode == 0


@pytest.mark.parametrize("cmd", [
    ["list"], ["show", "-d", "hmdb51"], ["export", "-d", "hmdb51"], ["embed", "-d", "hmdb51"], ["report", "-d", "hmdb51"],
    ["search", "golf"], ["generate", "-d", "hmdb51", "--limit", "1"],
])
def test_fsar_cache_that_is_a_file(tmp_path, cmd):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    res = subprocess.run(knowledge_cmd(*cmd), capture_output=True, text=True, env={**os.environ, "FSAR_CACHE": str(blocker)})
    line = one_error_line(res)
    assert line == f"error: cannot use cache folder {blocker}: {blocker} is a file, expected a folder; set FSAR_CACHE to a folder"


def test_a_file_inside_the_cache_where_a_folder_belongs(fsar_cache):
    save_knowledge("hmdb51", "dist", "m", [ROW])
    (fsar_cache / "embeddings").write_text("")  # e.g. left by a script
    res = subprocess.run(knowledge_cmd("embed", "-d", "hmdb51", "-k", "dist"), capture_output=True, text=True,
                         env={**os.environ, "FSAR_CACHE": str(fsar_cache)})
    line = one_error_line(res)
    assert f"{fsar_cache / 'embeddings'} is a file, expected a folder; remove or move {fsar_cache / 'embeddings'}" in line


def test_export_to_a_folder_or_an_unwritable_place(fsar_cache, tmp_path):
    save_knowledge("hmdb51", "dist", "m", [ROW])
    env = {**os.environ, "FSAR_CACHE": str(fsar_cache)}
    res = subprocess.run(knowledge_cmd("export", "-d", "hmdb51", "--out", str(tmp_path)), capture_output=True, text=True, env=env)
    assert f"--out {tmp_path} is a folder, expected a file" in one_error_line(res)
    blocker = tmp_path / "file"
    blocker.write_text("")
    res = subprocess.run(knowledge_cmd("export", "-d", "hmdb51", "--out", str(blocker / "k.json")), capture_output=True, text=True, env=env)
    assert f"{blocker} is a file, expected a folder" in one_error_line(res)


def test_only_user_caused_errors_on_known_paths_become_one_line(fsar_cache, tmp_path):
    from fsar.cli.common import error_message, os_error_line

    cached = fsar_cache / "knowledge" / "x"
    assert "read-only" in os_error_line(OSError(errno.EROFS, "Read-only file system", str(cached)))
    assert "permission denied" in os_error_line(PermissionError(errno.EACCES, "Permission denied", str(cached)))
    # a path outside the cache that the command was not told about: a bug, keep the traceback
    assert os_error_line(PermissionError(errno.EACCES, "Permission denied", "/usr/lib/x")) is None
    assert os_error_line(PermissionError(errno.EACCES, "Permission denied", "/usr/lib/x"), user_paths=["/usr/lib"]) is not None
    # other errors: never mapped
    assert os_error_line(OSError(errno.EIO, "I/O error", str(cached))) is None
    assert os_error_line(ValueError("x")) is None
    # never a bare errno
    assert error_message(FileExistsError(17, "File exists")) == "[Errno 17] File exists"
