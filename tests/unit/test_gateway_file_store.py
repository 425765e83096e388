"""The gateway's directory file store (a file is visible only once committed to disk) and
the API key setting."""
import pytest

from qinfer.config import Settings
from qinfer.gateway.file_store import DirectoryFileStore


def test_a_file_is_visible_only_once_committed_and_survives_a_new_store(tmp_path):
    store = DirectoryFileStore(tmp_path)
    writer = store.create("in.jsonl", "batch", "alice")
    writer.write(b'{"a": 1}\n')
    assert store.list("alice") == [] and store.get(writer.file_id) is None
    info = writer.commit()
    reopened = DirectoryFileStore(tmp_path)        # another replica on the same volume
    assert reopened.get(info.id).info == info and info.bytes == 9
    assert b"".join(reopened.chunks(info.id)) == b'{"a": 1}\n'
    assert [f.info.id for f in reopened.list("alice")] == [info.id] and reopened.list("bob") == []


def test_abort_leaves_nothing_and_delete_removes_both_parts(tmp_path):
    store = DirectoryFileStore(tmp_path)
    aborted = store.create("x.jsonl", "batch", "")
    aborted.write(b"partial")
    aborted.abort()
    kept = store.create("y.jsonl", "batch", "")
    kept.write(b"y")
    info = kept.commit()
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted([info.id, f"{info.id}.json"])
    assert store.delete(info.id) and store.get(info.id) is None and not store.delete(info.id)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_a_fixed_id_is_replaced_whole(tmp_path):
    store = DirectoryFileStore(tmp_path)
    for content in (b"first\n", b"second, longer\n"):
        writer = store.create("out.jsonl", "batch_output", "", file_id="file-batch_1-output")
        writer.write(content)
        writer.commit()
    assert b"".join(store.chunks("file-batch_1-output")) == b"second, longer\n"
    assert store.get("file-batch_1-output").info.bytes == 15


def test_ids_that_could_escape_the_directory_are_unknown(tmp_path):
    store = DirectoryFileStore(tmp_path)
    assert store.get("../etc/passwd") is None and store.get("file-../x") is None
    with pytest.raises(FileNotFoundError):
        list(store.chunks("../../x"))


def test_api_keys_setting(monkeypatch):
    monkeypatch.setenv("QINFER_API_KEYS", "alice:sk-1, bob:sk:2")
    assert Settings().api_keys == {"alice": "sk-1", "bob": "sk:2"}
    monkeypatch.setenv("QINFER_API_KEYS", "no-key")
    with pytest.raises(ValueError, match="name:key"):
        Settings()
