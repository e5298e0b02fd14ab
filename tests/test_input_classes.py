"""Bad input to fsar-knowledge: data set names that would leave the cache, class files that are not what they seem,
and error messages that must be printed as written (issue 10, defects 2, 8 and 10)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fsar.data.registry import load_class_file
from fsar.knowledge.encoders import EncoderError, resolve_encoder
from fsar.knowledge.generate import generate_knowledge, resolve_classes
from fsar.knowledge.store import knowledge_dir, load_knowledge, save_knowledge


def cli(*args, cache=None):
    env = dict(os.environ)
    if cache is not None:
        env["FSAR_CACHE"] = str(cache)
    return subprocess.run([sys.executable, "-m", "fsar.cli.knowledge", *args], capture_output=True, text=True, env=env)


def one_error_line(res) -> str:
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert res.returncode == 2, res.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    return lines[0]


def files_under(root) -> set:
    return {p for p in root.rglob("*") if p.is_file()}


# ------------------------------------------------------------------ defect 2: names that are paths


@pytest.mark.parametrize("name", ["../../escape", "..", "ABSOLUTE", "a/b", ".hidden", ""])
def test_dataset_names_that_are_paths_are_rejected(fsar_cache, tmp_path, name):
    if name == "ABSOLUTE":
        name = str(tmp_path / "abs")
    classes = tmp_path / "mine.txt"
    classes.write_text("juggle clubs\n")
    outside = files_under(tmp_path.parent)
    with pytest.raises(ValueError, match="is not a plain name"):
        generate_knowledge(name, "dist", classes_file=classes)  # fails before any backend is made
    with pytest.raises(ValueError, match="is not a plain name"):
        knowledge_dir(name, "dist", "m")
    with pytest.raises(ValueError, match="is not a plain name"):
        save_knowledge(name, "dist", "m", [])
    with pytest.raises(ValueError, match="is not a plain name"):
        load_knowledge("hmdb51", "dist", name or "..")  # a model folder name is a path component too
    assert files_under(tmp_path.parent) == outside  # nothing written anywhere


def test_cli_rejects_a_dataset_path_in_one_line(fsar_cache, tmp_path):
    classes = tmp_path / "mine.txt"
    classes.write_text("juggle clubs\n")
    line = one_error_line(cli("generate", "--classes", str(classes), "--dataset", "../../escape", "--dry-run", cache=fsar_cache))
    assert "--dataset '../../escape' is not a plain name" in line
    line = one_error_line(cli("show", "--dataset", str(tmp_path / "abs"), cache=fsar_cache))
    assert "is not a plain name" in line
    assert not any(fsar_cache.iterdir()) and not (tmp_path / "abs").exists()


def test_a_class_file_name_becomes_a_plain_set_name(tmp_path):
    f = tmp_path / "my classes (v2).txt"
    f.write_text("juggle clubs\n")
    assert load_class_file(f).name == "my_classes_v2"


# ------------------------------------------------------------------ defect 8: class files


def test_non_utf8_class_file_names_file_line_and_fix(tmp_path):
    f = tmp_path / "latin1.txt"
    f.write_bytes("run\nsauté\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt: line 2: not UTF-8 text \(byte 0xe9\); save the class file as UTF-8"):
        load_class_file(f)


def test_byte_order_mark_is_dropped(tmp_path):
    f = tmp_path / "bom.txt"
    f.write_bytes("\ufeffpole vault\nhigh jump\n".encode("utf-8"))
    assert [c.key for c in load_class_file(f).classes] == ["pole vault", "high jump"]
    c = tmp_path / "bom.csv"
    c.write_bytes("\ufeffname\npole vault\n".encode("utf-8"))  # the header is still recognised after a BOM
    assert [x.key for x in load_class_file(c).classes] == ["pole vault"]


@pytest.mark.parametrize("junk", ["___", "[]", "- -", "[ _ ]"])
def test_names_without_letters_or_digits_are_rejected(tmp_path, junk):
    f = tmp_path / "junk.txt"
    f.write_text(f"pole vault\n{junk}\n")
    with pytest.raises(ValueError, match=r"line 2: class '.*' has no letter or digit"):
        load_class_file(f)


@pytest.mark.parametrize("suffix,text", [
    (".txt", "Pole Vault\nhigh jump\npole_vault\nPoleVault\n"),
    (".json", '["Pole Vault", "high jump", "pole_vault"]'),
])
def test_spellings_of_one_class_are_rejected_as_duplicates(tmp_path, suffix, text):
    f = tmp_path / f"dups{suffix}"
    f.write_text(text)
    with pytest.raises(ValueError, match=r"3: class 'pole_vault' is the same class as 'Pole Vault' \(\w+ 1\) \(both read as 'pole vault'\)"):
        load_class_file(f)


def test_csv_header_picks_the_class_column(tmp_path):
    f = tmp_path / "ids.csv"
    f.write_text("id,class\n7,pole vault\n9,HighJump\n")
    assert [c.name for c in load_class_file(f).classes] == ["pole vault", "high jump"]
    g = tmp_path / "plain.csv"
    g.write_text("pole vault,7\nhigh jump,9\n")  # no header: the first column
    assert [c.key for c in load_class_file(g).classes] == ["pole vault", "high jump"]


def test_comment_lines_are_skipped_and_reported(fsar_cache, tmp_path):
    f = tmp_path / "commented.txt"
    f.write_text("# my classes\npole vault\n  # not this one\nhigh jump\n")
    info = load_class_file(f)
    assert [c.key for c in info.classes] == ["pole vault", "high jump"]
    assert info.extra["comment_lines"] == [1, 3]
    res = cli("generate", "--classes", str(f), "--kind", "dist", "--dry-run", cache=fsar_cache)
    assert res.returncode == 0, res.stderr
    assert "skipped 2 comment lines starting with '#' (lines 1, 3)" in res.stderr


def test_custom_classes_never_join_a_registered_dataset(fsar_cache, tmp_path):
    f = tmp_path / "extra.txt"
    f.write_text("pole vault\n")
    with pytest.raises(ValueError, match="'hmdb51', a registered data set"):
        resolve_classes("hmdb51", f)
    named_like_one = tmp_path / "ucf101.txt"
    named_like_one.write_text("pole vault\n")
    with pytest.raises(ValueError, match="'ucf101', a registered data set.*--dataset ucf101_custom"):
        resolve_classes(None, named_like_one)
    line = one_error_line(cli("generate", "--dataset", "hmdb51", "--classes", str(f), cache=fsar_cache))
    assert "--dataset with another name" in line
    assert not any(fsar_cache.rglob("*.parquet"))
    info, classes = resolve_classes("my_extra", f)
    assert info.name == "my_extra" and [c.key for c in classes] == ["pole vault"]


# ------------------------------------------------------------------ defect 10: messages as written, paths as they are


def test_error_text_is_not_read_as_markup(fsar_cache):
    if subprocess.run([sys.executable, "-c", "import vllm"], capture_output=True).returncode == 0:
        pytest.skip("vLLM is installed here: its missing-package message cannot be shown")
    line = one_error_line(cli("generate", "--dataset", "hmdb51", "--limit", "1", "--backend", "vllm", "--model", "m", cache=fsar_cache))
    assert "pip install 'fsar[vllm]'" in line


def test_a_folder_given_as_a_file_is_called_a_folder(fsar_cache, tmp_path):
    folder = tmp_path / "a_folder"
    folder.mkdir()
    line = one_error_line(cli("generate", "--classes", str(folder), cache=fsar_cache))
    assert f"class file {folder} is a folder, expected a file" in line
    line = one_error_line(cli("generate", "--dataset", "hmdb51", "--limit", "1", "--model", str(folder), cache=fsar_cache))
    assert f"model file {folder} is a folder, expected a file" in line
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_class_file(tmp_path / "missing.txt")
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"\0")
    with pytest.raises(EncoderError, match=f"encoder {weights} is a file, expected a folder"):
        resolve_encoder(str(weights))
