"""Atomic writes: files, new folders, replaced folders, files joining an existing folder."""

from __future__ import annotations

import pytest

from sbmoe.errors import SbmoeError
from sbmoe.io import atomic_open, atomic_write_text, staged_files, staged_folder


def test_atomic_writes_replace_the_file_and_leave_nothing_on_error(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    atomic_write_text(path, "one")
    with atomic_open(path, "wb") as handle:
        handle.write(b"two")
    assert path.read_bytes() == b"two"
    with pytest.raises(RuntimeError), atomic_open(path) as handle:
        handle.write("three")
        raise RuntimeError
    assert path.read_text() == "two" and [p.name for p in path.parent.iterdir()] == ["a.txt"]


def test_staged_folder_refuses_an_existing_folder_unless_replacing(tmp_path):
    folder = tmp_path / "model"
    with staged_folder(folder) as staging:
        (staging / "old.txt").write_text("old")
    with pytest.raises(SbmoeError, match="already exists"), staged_folder(folder):
        pass
    with pytest.raises(RuntimeError), staged_folder(folder, replace=True) as staging:
        (staging / "new.txt").write_text("new")
        raise RuntimeError
    assert [p.name for p in folder.iterdir()] == ["old.txt"]  # untouched by the failed write
    with staged_folder(folder, replace=True) as staging:
        (staging / "new.txt").write_text("new")
    assert [p.name for p in folder.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no staging or retired folder left


def test_staged_files_join_a_folder_with_the_marker_last(tmp_path, monkeypatch):
    import os

    (tmp_path / "keep.txt").write_text("kept")
    (tmp_path / "b.txt").write_text("old b")
    moved = []
    real_replace = os.replace

    def recording_replace(source, target):
        moved.append(os.path.basename(target))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", recording_replace)
    with staged_files(tmp_path, last="a.json") as staging:
        for name in ("a.json", "b.txt", "c.txt"):
            (staging / name).write_text(name)
    assert moved == ["b.txt", "c.txt", "a.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.txt", "c.txt", "keep.txt"]
    assert (tmp_path / "b.txt").read_text() == "b.txt"
