"""`sbmoe data download`, offline: a tiny BEIR zip served by an HTTP server on 127.0.0.1 (the test's own),
a wrong checksum, a corrupt archive, a malformed collection and an existing destination. After every
failure the data folder holds nothing new."""

from __future__ import annotations

import hashlib
import http.server
import threading
import zipfile
from pathlib import Path

import pytest
from tiny import make_tiny_beir

from sbmoe.data import load_dataset
from sbmoe.data.download import BEIR_MD5, download_collection, known_collections
from sbmoe.errors import DataError, SbmoeError


def zip_collection(source: Path, archive: Path, top: str = "tiny") -> bytes:
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(source.rglob("*")):
            if path.is_file():
                zipped.write(path, f"{top}/{path.relative_to(source).as_posix()}")
    return archive.read_bytes()


@pytest.fixture
def server(tmp_path):
    """Serve tmp_path/www on 127.0.0.1; yields the base URL."""
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):  # quiet
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_download_unpacks_validates_and_loads(tmp_path, server):
    base, www = server
    data = zip_collection(make_tiny_beir(tmp_path / "src"), www / "tiny.zip")
    folder = download_collection(
        "tiny", tmp_path / "data", url=f"{base}/tiny.zip", md5=md5(data), progress=False
    )
    assert folder == tmp_path / "data" / "tiny"
    dataset = load_dataset("tiny", tmp_path / "data")
    reference = load_dataset(tmp_path / "src")
    assert dataset.corpus.ids == reference.corpus.ids and dataset.queries == reference.queries
    assert dataset.qrels("test") == reference.qrels("test")
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["tiny"]  # no temporary left


def test_a_wrong_checksum_leaves_nothing(tmp_path, server):
    base, www = server
    zip_collection(make_tiny_beir(tmp_path / "src"), www / "tiny.zip")
    with pytest.raises(SbmoeError, match="does not have the published checksum md5:0{32}"):
        download_collection("tiny", tmp_path / "data", url=f"{base}/tiny.zip", md5="0" * 32, progress=False)
    assert list((tmp_path / "data").iterdir()) == []


def test_a_corrupt_archive_leaves_nothing(tmp_path, server):
    base, www = server
    data = b"PK\x03\x04 this is not a zip archive"
    (www / "bad.zip").write_bytes(data)
    with pytest.raises(SbmoeError, match="not a valid zip"):
        download_collection("bad", tmp_path / "data", url=f"{base}/bad.zip", md5=md5(data), progress=False)
    assert list((tmp_path / "data").iterdir()) == []


def test_a_missing_file_on_the_server_is_a_download_error(tmp_path, server):
    base, _ = server
    with pytest.raises(SbmoeError, match="download failed"):
        download_collection("gone", tmp_path / "data", url=f"{base}/gone.zip", md5="0" * 32, progress=False)
    assert list((tmp_path / "data").iterdir()) == []


def test_a_malformed_collection_names_the_file_and_leaves_nothing(tmp_path, server):
    base, www = server
    source = make_tiny_beir(tmp_path / "src")
    (source / "queries.jsonl").write_text('{"_id": "q1", "text": "ok"}\nnot json\n')
    data = zip_collection(source, www / "broken.zip")
    with pytest.raises(DataError, match=r"queries.jsonl, line 2"):
        download_collection(
            "broken", tmp_path / "data", url=f"{base}/broken.zip", md5=md5(data), progress=False
        )
    assert list((tmp_path / "data").iterdir()) == []


def test_an_archive_escaping_its_folder_is_refused(tmp_path, server):
    base, www = server
    with zipfile.ZipFile(www / "evil.zip", "w") as zipped:
        zipped.writestr("../../evil.txt", "x")
    data = (www / "evil.zip").read_bytes()
    with pytest.raises(SbmoeError, match="would be written outside"):
        download_collection("evil", tmp_path / "data", url=f"{base}/evil.zip", md5=md5(data), progress=False)
    assert not (tmp_path / "evil.txt").exists()


def test_existing_destination_and_unknown_name_are_refused(tmp_path):
    (tmp_path / "data" / "scifact").mkdir(parents=True)
    with pytest.raises(SbmoeError, match="already exists"):
        download_collection("scifact", tmp_path / "data", progress=False)
    with pytest.raises(SbmoeError, match="unknown collection 'nope'"):
        download_collection("nope", tmp_path / "data", progress=False)


def test_the_known_list_covers_the_papers_collections():
    known = known_collections()
    assert {"msmarco", "nq", "hotpotqa", "scifact", "nfcorpus", "arguana"} <= set(known)
    assert all(len(value) == 32 for value in BEIR_MD5.values())
    assert known["scifact"].endswith("/scifact.zip")


def test_cli_lists_and_refuses_without_a_data_dir(monkeypatch, capsys):
    from sbmoe.commands import main

    assert main(["data", "download", "--list"]) == 0
    assert "scifact" in capsys.readouterr().out
    monkeypatch.delenv("SBMOE_DATA", raising=False)
    assert main(["data", "download", "scifact"]) == 2
    assert "give --data-dir or set SBMOE_DATA" in capsys.readouterr().err
