"""The download path against a local HTTP server on 127.0.0.1: success, checksum mismatch, interrupted transfer."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from data_helpers import tar_bytes, tiny_files

from rnnlab.data import DataError, download_imdb, load_imdb
from rnnlab.data import imdb as imdb_mod

ARCHIVE = tar_bytes(tiny_files())
SHA = hashlib.sha256(ARCHIVE).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.server.hits += 1  # type: ignore[attr-defined]
        if self.path == "/missing":
            self.send_error(404)
            return
        body = ARCHIVE
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path == "/cut":  # announce the full size, send half, hang up
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[http.server.HTTPServer]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.hits = 0  # type: ignore[attr-defined]
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _url(srv: http.server.HTTPServer, path: str) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}{path}"


def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name != "fingerprints.json") if cache.exists() else []


def test_download_success_then_reuse(server, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    path = download_imdb(cache, url=_url(server, "/aclImdb_v1.tar.gz"), sha256=SHA, progress=False)
    assert path == cache / "aclImdb_v1.tar.gz" and path.read_bytes() == ARCHIVE
    assert _leftovers(cache) == ["aclImdb_v1.tar.gz"]
    assert download_imdb(cache, url=_url(server, "/aclImdb_v1.tar.gz"), sha256=SHA, progress=False) == path
    assert server.hits == 1  # the verified file is reused, not fetched again


def test_load_imdb_without_path_downloads(server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RNNLAB_DATA", raising=False)
    monkeypatch.setenv("RNNLAB_CACHE", str(tmp_path / "envcache"))
    monkeypatch.setattr(imdb_mod, "IMDB_URL", _url(server, "/aclImdb_v1.tar.gz"))
    monkeypatch.setattr(imdb_mod, "IMDB_SHA256", SHA)
    ds = load_imdb(progress=False)
    assert (len(ds.train), len(ds.test)) == (6, 4)
    assert (tmp_path / "envcache" / "aclImdb_v1.tar.gz").read_bytes() == ARCHIVE


def test_checksum_mismatch_leaves_nothing(server, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=rf"is corrupt: sha256 {SHA}, expected {'0' * 64}"):
        download_imdb(cache, url=_url(server, "/a.tar.gz"), sha256="0" * 64, progress=False)
    assert _leftovers(cache) == []


def test_interrupted_transfer_leaves_nothing(server, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=rf"interrupted.*{len(ARCHIVE) // 2}.* of {len(ARCHIVE)}"):
        download_imdb(cache, url=_url(server, "/cut"), sha256=SHA, progress=False)
    assert _leftovers(cache) == []


def test_http_error_and_corrupt_existing_file(server, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"download of http://127.0.0.1:\d+/missing failed: HTTP Error 404"):
        download_imdb(cache, url=_url(server, "/missing"), sha256=SHA, progress=False)
    cache.mkdir(exist_ok=True)
    (cache / "aclImdb_v1.tar.gz").write_bytes(ARCHIVE[:100])  # e.g. damaged on disk later
    path = download_imdb(cache, url=_url(server, "/aclImdb_v1.tar.gz"), sha256=SHA, progress=False)
    assert path.read_bytes() == ARCHIVE
