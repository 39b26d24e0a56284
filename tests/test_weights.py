"""helpers.weights against a loopback HTTP server: download, cache, checksum and error paths.

Nothing here contacts a non-loopback address: every outgoing TCP connection is checked.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import threading
from pathlib import Path

import pytest

from helpers import weights
from helpers.weights import WeightsUnavailableError, gpt2_small_path

PAYLOAD = bytes(range(256)) * 1000 + b"end"  # 256,003 bytes
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
PAYLOAD_SIZE = len(PAYLOAD)
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        route = self.server.routes.get(self.path)  # type: ignore[attr-defined]
        self.server.hits.append(self.path)  # type: ignore[attr-defined]
        if route is None:
            self.send_error(404, "Not Found")
            return
        body, announced = route
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(announced))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:  # keep stderr clean
        pass


class LoopbackServer:
    def __init__(self) -> None:
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.routes = {}  # type: ignore[attr-defined]
        self.httpd.hits = []  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.running = True

    def serve(self, path: str, body: bytes, announced: int | None = None) -> str:
        self.httpd.routes[path] = (body, len(body) if announced is None else announced)  # type: ignore[attr-defined]
        return self.url(path)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    @property
    def hits(self) -> list[str]:
        return self.httpd.hits  # type: ignore[attr-defined]

    def stop(self) -> None:
        if self.running:
            self.running = False
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(timeout=5)


@pytest.fixture
def server():
    srv = LoopbackServer()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """Fresh cache, no user overrides, no proxies, and a guard against non-loopback connections."""
    monkeypatch.setenv("RLHF_COURSE_CACHE", str(tmp_path / "cache"))
    for var in ("GPT2_WEIGHTS", "GPT2_WEIGHTS_URL", "http_proxy", "HTTP_PROXY", "https_proxy",
                "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("COURSE_NO_PROGRESS", "1")

    real = socket.create_connection

    def loopback_only(address, *args, **kwargs):
        assert address[0] in LOOPBACK, f"test tried to contact {address!r}"
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", loopback_only)
    return tmp_path / "cache" / "gpt2"


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def fetch(url: str | None = None, **kw):
    kw.setdefault("sha256", PAYLOAD_SHA)
    kw.setdefault("size", PAYLOAD_SIZE)
    kw.setdefault("timeout", 5.0)
    return gpt2_small_path(url=url, **kw)


def test_sha256_file(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(PAYLOAD)
    assert weights.sha256_file(f) == PAYLOAD_SHA
    assert weights.sha256_file(f, chunk_size=1000) == PAYLOAD_SHA


def test_constants():
    assert weights.GPT2_SMALL_URL.startswith("https://huggingface.co/")
    assert len(weights.GPT2_SMALL_SHA256) == 64 and int(weights.GPT2_SMALL_SHA256, 16) >= 0
    assert weights.GPT2_SMALL_SIZE == 548105171


def test_cache_dir(monkeypatch, tmp_path):
    assert weights.cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("RLHF_COURSE_CACHE")
    assert weights.cache_dir() == Path.home() / ".cache" / "rlhf-course"


def test_download_then_cache_without_network(server, isolated):
    url = server.serve("/model.safetensors", PAYLOAD)
    path = fetch(url)
    assert path == isolated / "model.safetensors"
    assert path.read_bytes() == PAYLOAD
    assert server.hits == ["/model.safetensors"]
    marker = isolated / "model.safetensors.verified"
    assert marker.read_text().split()[0] == PAYLOAD_SHA
    assert _leftovers(isolated) == ["model.safetensors", "model.safetensors.verified"]

    server.stop()
    assert fetch(url) == path  # from the cache: the server is gone


def test_verified_marker_skips_rehash(server, isolated, monkeypatch):
    path = fetch(server.serve("/m", PAYLOAD))
    server.stop()

    def no_hashing(*a, **k):
        raise AssertionError("the verified cache must not be hashed again")

    monkeypatch.setattr(weights, "sha256_file", no_hashing)
    assert fetch(server.url("/m")) == path


def test_cached_file_is_verified_once_without_marker(isolated, monkeypatch):
    isolated.mkdir(parents=True)
    (isolated / "model.safetensors").write_bytes(PAYLOAD)  # placed by hand, e.g. copied from elsewhere
    path = fetch(f"http://127.0.0.1:{_closed_port()}/m")  # would fail if it tried to download
    assert path.read_bytes() == PAYLOAD
    assert (isolated / "model.safetensors.verified").read_text().split()[0] == PAYLOAD_SHA


def test_corrupt_cache_is_replaced(server, isolated):
    url = server.serve("/m", PAYLOAD)
    path = fetch(url)
    # Same size, different bytes, newer mtime: the marker no longer vouches for it.
    path.write_bytes(bytes(reversed(PAYLOAD)))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert fetch(url).read_bytes() == PAYLOAD
    assert server.hits == ["/m", "/m"]


def test_wrong_size_cache_is_replaced(server, isolated):
    isolated.mkdir(parents=True)
    (isolated / "model.safetensors").write_bytes(PAYLOAD[:-1])
    assert fetch(server.serve("/m", PAYLOAD)).read_bytes() == PAYLOAD


def test_checksum_mismatch_leaves_no_file(server, isolated):
    url = server.serve("/m", PAYLOAD)
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(WeightsUnavailableError) as info:
        fetch(url, sha256=wrong)
    msg = str(info.value)
    assert "mismatch" in msg.lower() and wrong in msg and PAYLOAD_SHA in msg and "deleted" in msg
    assert _leftovers(isolated) == []


@pytest.mark.parametrize("checks", [{}, {"size": None, "sha256": None}], ids=["checked", "unchecked"])
def test_truncated_download_leaves_no_file(server, isolated, checks):
    url = server.serve("/m", PAYLOAD[:1000], announced=PAYLOAD_SIZE)  # connection ends early
    with pytest.raises(WeightsUnavailableError, match="gave 1000 bytes"):
        fetch(url, **checks)  # even without size/sha256, the announced Content-Length is enforced
    assert _leftovers(isolated) == []


def test_announced_size_mismatch(server, isolated):
    url = server.serve("/m", PAYLOAD)
    with pytest.raises(WeightsUnavailableError, match=str(PAYLOAD_SIZE + 1)):
        fetch(url, size=PAYLOAD_SIZE + 1)
    assert _leftovers(isolated) == []


def test_http_404_is_explained(server, isolated):
    url = server.url("/missing.safetensors")
    with pytest.raises(WeightsUnavailableError) as info:
        fetch(url)
    msg = str(info.value)
    assert "404" in msg and url in msg
    assert "GPT2_WEIGHTS" in msg and PAYLOAD_SHA in msg
    assert str(isolated / "model.safetensors") in msg  # the cache path, the second way out
    assert _leftovers(isolated) == []


def test_unreachable_host_is_explained(isolated):
    url = f"http://127.0.0.1:{_closed_port()}/model.safetensors"
    with pytest.raises(WeightsUnavailableError) as info:
        fetch(url)
    msg = str(info.value)
    assert "could not be reached" in msg and url in msg
    assert "GPT2_WEIGHTS" in msg and str(isolated / "model.safetensors") in msg
    assert _leftovers(isolated) == []


def test_silent_server_times_out(isolated):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)  # the kernel completes the handshake; nobody ever answers
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/m"
        with pytest.raises(WeightsUnavailableError, match="GPT2_WEIGHTS"):
            fetch(url, timeout=0.3)
    assert _leftovers(isolated) == []


def test_url_from_environment(server, isolated, monkeypatch):
    monkeypatch.setenv("GPT2_WEIGHTS_URL", server.serve("/mirror/model.safetensors", PAYLOAD))
    assert fetch().read_bytes() == PAYLOAD
    assert server.hits == ["/mirror/model.safetensors"]


def test_no_download_means_error(isolated):
    with pytest.raises(WeightsUnavailableError, match="GPT2_WEIGHTS"):
        gpt2_small_path(download=False)


def test_env_weights_missing_file(monkeypatch, tmp_path):
    missing = tmp_path / "nowhere" / "model.safetensors"
    monkeypatch.setenv("GPT2_WEIGHTS", str(missing))
    with pytest.raises(WeightsUnavailableError) as info:
        gpt2_small_path()
    assert "GPT2_WEIGHTS" in str(info.value) and str(missing) in str(info.value)
    assert "does not exist" in str(info.value)


def test_env_weights_existing_file_is_used_as_is(monkeypatch, tmp_path, isolated):
    given = tmp_path / "my_model.safetensors"
    given.write_bytes(b"not checked")
    monkeypatch.setenv("GPT2_WEIGHTS", str(given))
    assert gpt2_small_path() == given
    monkeypatch.setenv("GPT2_WEIGHTS", str(tmp_path))  # a folder holding model.safetensors
    (tmp_path / "model.safetensors").write_bytes(b"x")
    assert gpt2_small_path() == tmp_path / "model.safetensors"
    assert _leftovers(isolated) == []  # nothing downloaded
