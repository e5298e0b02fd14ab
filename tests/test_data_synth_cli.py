"""``fsar-data synth`` and ``info`` when things go wrong: a killed run or worker, a cache that cannot be written,
a data root with some splits missing, names with square brackets (rich markup must not eat them)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fsar.cli.data import app
from fsar.data.registry import get_dataset

from _data_helpers import make_video_root

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds worker processes in /proc")


def _synth(out: Path, workers: int = 2, videos: int = 6) -> list[str]:
    return [sys.executable, "-m", "fsar.cli.data", "synth", "--out", str(out), "--videos-per-class", str(videos),
            "--size", "32", "--frames", "8", "--no-preview", "--workers", str(workers)]


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by whoever adopted it, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start_and_wait_for_videos(cmd: list[str], tmp_parent: Path, name: str) -> subprocess.Popen:
    """Start a synth run and return once its workers have written some videos into the temporary folder."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        temp = list(tmp_parent.glob(f".{name}.tmp-*"))
        if temp and len(list(temp[0].rglob("*.mp4"))) >= 4 and len(_children(proc.pid)) >= 2:
            return proc
        assert proc.poll() is None, f"synth ended before it could be killed: {proc.communicate()}"
        time.sleep(0.05)
    proc.kill()
    pytest.fail("synth wrote no video within 180 s")


def _wait_gone(pids: list[int], seconds: float = 15) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


@linux_only
def test_sigkill_of_synth_takes_its_workers_along_and_the_next_run_cleans_up(tmp_path):
    proc = _start_and_wait_for_videos(_synth(tmp_path / "set"), tmp_path, "set")
    workers = _children(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()  # not communicate(): orphaned workers would hold its pipes open
    proc.stdout.close()
    proc.stderr.close()
    left = _wait_gone(workers)
    for pid in left:  # (tidy up after a failure)
        os.kill(pid, signal.SIGKILL)
    assert not left, "workers outlived the killed run"
    assert len(list(tmp_path.glob(".set.tmp-*"))) == 1  # what the killed run was writing
    done = subprocess.run(_synth(tmp_path / "set", workers=1, videos=1), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert not list(tmp_path.glob(".set.tmp-*"))  # the next run removed it
    assert (tmp_path / "set" / "manifest.json").is_file()


@linux_only
def test_a_killed_worker_is_a_one_line_error(tmp_path):
    proc = _start_and_wait_for_videos(_synth(tmp_path / "set"), tmp_path, "set")
    workers = _children(proc.pid)
    os.kill(workers[0], signal.SIGKILL)
    try:
        stdout, stderr = proc.communicate(timeout=120)
    finally:  # never leave the run behind when the test fails
        proc.kill()
        proc.wait()
    assert proc.returncode == 2, stderr
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "worker process" in errors[0] and "--workers 1" in errors[0], stderr
    assert not _wait_gone(workers)
    assert not list(tmp_path.glob(".set.tmp-*")) and not (tmp_path / "set").exists()  # nothing half-written kept


def _one_error_line(res) -> str:
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), res.output
    return lines[0]


def test_synth_where_it_cannot_write_is_a_one_line_error(tmp_path, monkeypatch):
    runner = CliRunner()
    small = ["--videos-per-class", "1", "--size", "16", "--frames", "4", "--no-preview"]
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    line = _one_error_line(runner.invoke(app, ["synth", "--out", str(blocker / "set"), *small]))
    assert str(blocker) in line and "--out" in line and "FSAR_CACHE" in line
    monkeypatch.setenv("FSAR_CACHE", str(blocker))  # the default place is under a file
    line = _one_error_line(runner.invoke(app, ["synth", *small]))
    assert str(blocker) in line and "FSAR_CACHE" in line
    assert blocker.read_text() == "not a folder"
    locked = tmp_path / "read-only"
    locked.mkdir()
    args = ["synth", "--out", str(locked / "set"), *small]
    if os.geteuid() != 0:
        locked.chmod(0o555)
        try:
            line = _one_error_line(runner.invoke(app, args))
        finally:
            locked.chmod(0o755)
    else:  # root writes through permissions: mount the folder read-only in a private mount namespace instead
        res = _run_with_read_only(locked, args)
        lines = [line for line in res.stderr.splitlines() if line.strip()]
        assert res.returncode == 2 and len(lines) == 1, res.stderr
        line = lines[0]
        assert "Read-only file system" in line
    assert line.startswith(f"error: cannot write the synthetic benchmark in {locked}") and "--out" in line
    assert not any(locked.iterdir())


def _run_with_read_only(folder: Path, args: list[str]) -> subprocess.CompletedProcess:
    """``fsar-data ARGS`` with ``folder`` mounted read-only for it alone (root; skips where mounts are not allowed)."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare to mount a read-only folder")
    script = 'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" || exit 99; shift; exec "$@"'
    res = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", str(folder), sys.executable, "-m",
                          "fsar.cli.data", *args], capture_output=True, text=True, timeout=300)
    if res.returncode == 99:
        pytest.skip(f"cannot mount a read-only folder here: {res.stderr.strip()[:200]}")
    return res


def test_info_reports_every_split_and_prints_brackets(tmp_path):
    hmdb = get_dataset("hmdb51")
    val = [c.key for c in hmdb.split("val")]
    root = tmp_path / "data[v2]"
    make_video_root(root, val[:7], per_class=2)
    bad = root / val[0] / "clip[1].mp4"
    bad.write_bytes(b"not a video")
    res = CliRunner().invoke(app, ["info", "--dataset", "hmdb51", "--root", str(root), "--no-classes"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())  # rich wraps long lines
    assert "train: no folder for any of its 31 classes" in text and "test: no folder for any of its 10 classes" in text
    assert f"val: no videos for 3 of 10 classes: {', '.join(val[7:])}" in text
    assert "clip[1].mp4" in text and "data[v2]" in text  # square brackets shown as written
    assert "│ val │ 10 │ 7 │ 15 │" in text  # 7 classes with videos, 15 files (one unreadable)
    res = CliRunner().invoke(app, ["info", "--dataset", "hmdb51", "--root", str(tmp_path / "empty[x]")])
    assert _one_error_line(res).startswith(f"error: data root {tmp_path / 'empty[x]'} does not exist")
