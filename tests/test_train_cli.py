"""fsar-train / fsar-eval front ends: a real short run, one-line errors, the two-process DDP run."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from fsar.cli.train import eval_app, train_app

from _model_helpers import SIZE, one_thread, synth_root  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
FAST = ["--backbone", "tiny", "--size", str(SIZE), "--query", "1", "--val-episodes", "10", "--test-episodes", "20", "--no-progress"]


def _one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_train_then_eval_from_the_command_line(synth_root, fsar_cache):
    res = runner.invoke(train_app, ["--method", "prototype", "--root", str(synth_root), "--episodes", "4",
                                    "--val-every", "4", *FAST])
    assert res.exit_code == 0, res.output
    assert "prototype on synthetic test classes, 5-way 1-shot, 20 episodes (seed 0):" in res.output
    assert "% (95% CI)" in res.output
    runs = list((fsar_cache / "runs").iterdir())  # default run folder under the cache root
    assert len(runs) == 1 and runs[0].name.startswith("prototype-synthetic-5w1s-tiny-seed0-")
    result = json.loads((runs[0] / "result.json").read_text())
    assert result["knowledge"] is None and result["backbone"]["tune"] == "full"

    res = runner.invoke(eval_app, ["--checkpoint", str(runs[0] / "best.pt"), "--episodes", "20", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert f"{result['accuracy']:.2f} ± {result['ci95']:.2f}%" in res.output
    _one_line_error(runner.invoke(eval_app, ["--checkpoint", str(runs[0]), "--method", "otam"]),
                    "checkpoint of method 'prototype', not 'otam'")
    junk = fsar_cache / "junk.pt"
    junk.write_text("not a checkpoint")
    _one_line_error(runner.invoke(eval_app, ["--checkpoint", str(junk)]), "not a readable checkpoint")


def test_bad_input_gives_one_line_errors(synth_root, fsar_cache, tmp_path):
    root = ["--root", str(synth_root)]
    _one_line_error(runner.invoke(train_app, ["--method", "nope"]), "unknown method 'nope'", "otam", "trx")
    _one_line_error(runner.invoke(train_app, ["--method", "otam", "--backbone", "vgg"]), "unknown backbone 'vgg'", "clip, resnet50, tiny")
    _one_line_error(runner.invoke(train_app, ["--method", "otam", "--dataset", "mnist"]), "unknown dataset 'mnist'", "hmdb51")
    _one_line_error(runner.invoke(train_app, ["--method", "otam", "--dataset", "hmdb51"]), "needs --root", "root/<class>/<video>")
    _one_line_error(runner.invoke(train_app, ["--method", "otam", "--dataset", "hmdb51", "--root", str(tmp_path / "none")]),
                    "does not exist", "root/<class>/<video>")
    _one_line_error(runner.invoke(train_app, ["--method", "otam", *root, "--shot", "3", "--query", "4"]),
                    "--shot 3 + 4 queries = 7 videos per class", "has 6")
    _one_line_error(runner.invoke(train_app, ["--method", "otam", *root, "--opt", "bogus=1"]),
                    "unknown option(s) bogus for method 'otam'")
    _one_line_error(runner.invoke(train_app, ["--method", "otam", *root, "--no-skc"]), "--no-skc: switches of methods with knowledge")


@pytest.mark.slow
def test_two_process_ddp_run_ends_with_identical_weights(synth_root, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "FSAR_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "fsar.cli.train",
           "--method", "bimhm", "--root", str(synth_root), "--episodes", "8", "--val-every", "4", "--out", str(out),
           "--no-test", *FAST]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    check = json.loads((out / "ddp_check.json").read_text())
    assert check["world_size"] == 2 and check["identical"] and len(set(check["weights"])) == 1
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["episode"] for r in rows if r["kind"] == "train"][-1] == 8  # 2 ranks x 1 episode per step
