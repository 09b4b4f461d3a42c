"""Atomic writes: a complete file or folder appears at once, a failed write leaves the old one and no debris."""

import json

import pytest

from forgetting.io import atomic_path, atomic_write_text, file_sha256, replace_dir, temp_dir, write_json


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_a_text_that_cannot_be_written_leaves_the_old_file_whole(tmp_path):
    target = tmp_path / "summary.txt"
    atomic_write_text(target, "old")
    with pytest.raises(UnicodeEncodeError):
        atomic_write_text(target, "half written, then \ud800")  # a lone surrogate fails half-way through encoding
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.txt"]


def test_the_temporary_keeps_the_suffix_so_writers_guess_the_format(tmp_path):
    with atomic_path(tmp_path / "sub" / "figure.png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path / "sub" and tmp.name != "figure.png"
        tmp.write_bytes(b"png")
    assert (tmp_path / "sub" / "figure.png").read_bytes() == b"png"


def test_write_json_is_sorted_and_readable(tmp_path):
    write_json(tmp_path / "a" / "m.json", {"b": 1, "a": "ü"})
    text = (tmp_path / "a" / "m.json").read_text(encoding="utf-8")
    assert text == '{\n  "a": "ü",\n  "b": 1\n}\n' and json.loads(text) == {"a": "ü", "b": 1}


def test_a_folder_is_replaced_whole(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "stale.bin").write_text("x")
    tmp = temp_dir(out)
    assert tmp.name == "model.tmp" and list(tmp.iterdir()) == []
    (tmp / "model.safetensors").write_text("w")
    replace_dir(tmp, out)
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors"] and not tmp.exists()


def test_file_sha256(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    assert file_sha256(tmp_path / "f") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
