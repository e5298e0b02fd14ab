"""fsar-train / fsar-eval front ends: a real short run, one-line errors, the two-process DDP run."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from fsar.cli.train import eval_app, train_app
from fsar.model.registry import Head, HeadOutput, register_method

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
    _one_line_error(runner.invoke(train_app, ["--method", "otam", "--backbone", "vgg"]), "unknown backbone 'vgg'", "clip, dinov2-s, effnet-lite0")
    _one_line_error(runner.invoke(train_app, ["--method", "otam", "--dataset", "mnist"]), "unknown dataset 'mnist'", "hmdb51")
    _one_line_error(runner.invoke(train_app, ["--method", "otam", "--dataset", "hmdb51"]), "needs --root", "root/<class>/<video>")
    _one_line_error(runner.invoke(train_app, ["--method", "otam", "--dataset", "hmdb51", "--root", str(tmp_path / "none")]),
                    "does not exist", "root/<class>/<video>")
    _one_line_error(runner.invoke(train_app, ["--method", "otam", *root, "--shot", "3", "--query", "4"]),
                    "--shot 3 + 4 queries = 7 videos per class", "has 6")
    _one_line_error(runner.invoke(train_app, ["--method", "otam", *root, "--opt", "bogus=1"]),
                    "unknown option(s) bogus for method 'otam'")
    # DiST's switches are method options now, so another method refuses them by name
    _one_line_error(runner.invoke(train_app, ["--method", "otam", *root, "--opt", "skc=false"]),
                    "unknown option(s) skc for method 'otam'")
    _one_line_error(runner.invoke(train_app, ["--method", "otam", *root, "--way", "0"]), "--way must be at least 1, got 0")
    _one_line_error(runner.invoke(train_app, ["--method", "otam", *root, "--opt", "lam"]), "--opt 'lam' is not KEY=VALUE")
    _one_line_error(runner.invoke(train_app, ["--root", str(synth_root)]), "give --method")


def test_config_file_with_command_line_overrides(synth_root, fsar_cache, tmp_path):
    run = tmp_path / "run.json"
    run.write_text(json.dumps({"method": "prototype", "dataset": "synthetic", "root": str(synth_root), "backbone": "tiny",
                               "size": 32, "query": 1, "episodes": 4, "val_every": 2, "val_episodes": 10, "lr": 0.002,
                               "seed": 3, "opts": {"scale": 5.0}, "test": False, "progress": False}))
    out = tmp_path / "out"
    # --seed is typed and wins; --episodes is left at its default (800) and must not override the file's 4
    res = runner.invoke(train_app, ["--config", str(run), "--seed", "1", "--out", str(out), "--opt", "scale=7.0"])
    assert res.exit_code == 0, res.output
    saved = json.loads((out / "config.json").read_text())
    assert (saved["seed"], saved["episodes"], saved["lr"], saved["val_every"]) == (1, 4, 0.002, 2)
    assert saved["opts"] == {"scale": 7.0} and saved["test"] is False and saved["backbone"] == "tiny"
    assert [r for r in (out / "log.jsonl").read_text().splitlines() if '"val"' in r]  # validated at 2 and 4


def test_bad_config_file_is_one_line_naming_the_field(tmp_path):
    run = tmp_path / "run.json"
    run.write_text(json.dumps({"method": "otam", "wya": 5}))
    _one_line_error(runner.invoke(train_app, ["--config", str(run)]), "unknown field 'wya'", "did you mean 'way'")
    run.write_text(json.dumps({"method": "otam", "way": "five"}))
    _one_line_error(runner.invoke(train_app, ["--config", str(run)]), "field 'way' must be an integer", '"five"')
    run.write_text(json.dumps({"method": "otam", "lr": True}))
    _one_line_error(runner.invoke(train_app, ["--config", str(run)]), "field 'lr' must be a number")
    run.write_text(json.dumps({"method": "otam", "val_every": 0}))
    _one_line_error(runner.invoke(train_app, ["--config", str(run)]), "--val-every must be at least 1, got 0")
    run.write_text('{"method": "otam",')
    _one_line_error(runner.invoke(train_app, ["--config", str(run)]), "not valid JSON")
    _one_line_error(runner.invoke(train_app, ["--config", str(tmp_path / "none.json")]), "does not exist")


def test_method_switches_are_options(synth_root, fsar_cache, tmp_path):
    """DiST's former --knowledge / --no-skc flags are --opt knowledge=... / --opt skc=false (no text needed here)."""
    out = tmp_path / "dist"
    res = runner.invoke(train_app, ["--method", "dist", "--root", str(synth_root), "--episodes", "2", "--stop-at", "1",
                                    "--out", str(out), "--opt", "knowledge=none", "--opt", "skc=false", *FAST])
    assert res.exit_code == 0, res.output
    assert "stopped after 1 episodes" in res.output
    assert json.loads((out / "config.json").read_text())["opts"] == {"knowledge": "none", "skc": False}
    _one_line_error(runner.invoke(train_app, ["--method", "dist", "--root", str(synth_root), "--opt", "knowledge=gpt", *FAST]),
                    "knowledge must be one of llm, name, none")


@register_method("test_bug_in_forward")
class BugInForward(Head):
    """A head with a bug: its forward pass raises a plain ValueError."""

    def __init__(self, dim, num_frames, text_dim=None):
        super().__init__(dim, num_frames, text_dim)
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, batch) -> HeadOutput:
        raise ValueError("a bug, not a user error")


def test_a_bug_keeps_its_traceback(synth_root, fsar_cache, tmp_path):
    res = runner.invoke(train_app, ["--method", "test_bug_in_forward", "--root", str(synth_root), "--episodes", "1",
                                    "--out", str(tmp_path / "bug"), *FAST])
    assert res.exit_code == 1 and isinstance(res.exception, ValueError) and "error:" not in res.output


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
