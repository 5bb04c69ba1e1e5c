"""The state file: written atomically, read back, and tolerant of damage."""

from __future__ import annotations

import json
import os

import pytest

from switchboard.client.state import FileState, MemoryState, Position


def test_a_saved_position_is_loaded_back(tmp_path):
    path = tmp_path / "deep" / "state.json"
    FileState(path).save(Position("laptop", "e1", "5-0"))
    assert FileState(path).load() == Position("laptop", "e1", "5-0")
    assert json.loads(path.read_text()) == {"device_id": "laptop", "epoch": "e1", "last_id": "5-0"}
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]  # no temporary file left


def test_a_missing_or_damaged_file_is_an_empty_position(tmp_path):
    path = tmp_path / "state.json"
    assert FileState(path).load() == Position()
    path.write_text("{not json")
    assert FileState(path).load() == Position()
    path.write_text('{"device_id": 3, "epoch": "e", "last_id": null}')
    assert FileState(path).load() == Position(None, "e", None)


def test_a_save_that_fails_midway_leaves_the_old_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    store = FileState(path, fsync=True)
    store.save(Position("laptop", "e1", "5-0"))

    def broken(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        store.save(Position("laptop", "e1", "6-0"))
    assert store.load() == Position("laptop", "e1", "5-0")
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # the temporary file was removed


def test_the_file_is_replaced_never_written_in_place(tmp_path):
    path = tmp_path / "state.json"
    store = FileState(path)
    store.save(Position("laptop", "e1", "5-0"))
    before = path.stat().st_ino
    store.save(Position("laptop", "e1", "6-0"))
    assert path.stat().st_ino != before  # a new file renamed over the old: a reader sees one or the other


def test_memory_state():
    store = MemoryState()
    assert store.load() == Position()
    store.save(Position("d", "e", "1-0").at("e2", "2-0"))
    assert store.load() == Position("d", "e2", "2-0")
