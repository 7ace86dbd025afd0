"""Dev server (web/app.py): /models, HTTP Range, caching headers, traversal, Host check, CORS.

Two clients: Starlette's TestClient for headers and bodies, and raw sockets against a real uvicorn
server on 127.0.0.1, because httpx normalises `..` and percent-escapes before sending and so cannot
send the traversal attempts a browser or curl --path-as-is can.
"""

from __future__ import annotations

import contextlib
import json
import hashlib
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from web import app as web_app  # noqa: E402
from web.app import Settings, create_app, parse_range, serve, server_config, Unsatisfiable  # noqa: E402

SECRET = b"TOP-SECRET-NOT-A-MODEL"


def write_model(path: Path, arch: str, file_type: int, licence: str | None, n: int = 3000) -> bytes:
    """A small valid GGUF written by the gguf package (a reference writer, not ours)."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"Test {arch}")
    w.add_file_type(file_type)
    if licence:
        w.add_license(licence)
    w.add_tensor("token_embd.weight", np.arange(n, dtype=np.float32).reshape(n // 100, 100))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    models = root / "models"
    models.mkdir()
    (root / "secret.txt").write_bytes(SECRET)
    (root / "models_private").mkdir()
    (root / "models_private" / "hidden.gguf").write_bytes(SECRET)
    (models / ".hidden.gguf").write_bytes(SECRET)
    (models / "notes.txt").write_bytes(SECRET)
    (models / "link.gguf").symlink_to(root / "secret.txt")
    static = root / "static"
    static.mkdir()
    (static / "x.wasm").write_bytes(b"\0asm\1\0\0\0")
    (static / "sw.js").write_text("// sw")
    data = {
        "tiny-gemma.gguf": write_model(models / "tiny-gemma.gguf", "gemma3", 15, "gemma"),
        "tiny-llama.gguf": write_model(models / "tiny-llama.gguf", "llama", 7, "apache-2.0", n=500),
    }
    return {"root": root, "models": models, "static": static, "data": data}


@pytest.fixture(scope="module")
def settings(site):
    return Settings(models_dir=site["models"], static_dir=site["static"])


@pytest.fixture(scope="module")
def client(settings):
    return TestClient(create_app(settings), base_url="http://127.0.0.1")


@pytest.fixture(scope="module")
def server(settings):
    """A real uvicorn server on a free loopback port, configured as `mote serve` runs it."""
    with running_server(settings) as port:
        yield port


@contextlib.contextmanager
def running_server(settings):
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    srv = uvicorn.Server(server_config(create_app(settings), "127.0.0.1", port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not srv.started:
        if time.time() > deadline:
            raise RuntimeError("uvicorn did not start within 10 s")
        time.sleep(0.02)
    yield port
    srv.should_exit = True
    thread.join(5)


def raw(port: int, target: bytes, host: bytes | None = None, method: bytes = b"GET") -> tuple[int, bytes, bytes]:
    """Send one request line exactly as given; return (status, header block, body)."""
    host = host if host is not None else f"127.0.0.1:{port}".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(method + b" " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    response = b"".join(chunks)
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head, body


# ---- /models -----------------------------------------------------------------------------------

def test_models_list_reads_headers_and_hashes(client, site):
    r = client.get("/models")
    assert r.status_code == 200
    listing = {m["file"]: m for m in r.json()}
    assert set(listing) == {"tiny-gemma.gguf", "tiny-llama.gguf"}  # no dotfile, .txt, symlink
    for name, data in site["data"].items():
        m = listing[name]
        assert set(m) >= {"name", "file", "url", "size", "sha256", "architecture", "quantization", "licence"}
        assert m["size"] == len(data)
        assert m["sha256"] == hashlib.sha256(data).hexdigest()
        assert m["url"] == f"/models/{name}"
    g, ll = listing["tiny-gemma.gguf"], listing["tiny-llama.gguf"]
    assert (g["architecture"], ll["architecture"]) == ("gemma3", "llama")
    assert g["name"] == "Test gemma3"
    # quantization names agree with the gguf package's LlamaFileType enum
    assert g["quantization"] == gguf.LlamaFileType(15).name.removeprefix("MOSTLY_")
    assert ll["quantization"] == gguf.LlamaFileType(7).name.removeprefix("MOSTLY_")
    assert g["licence"]["url"] == "https://ai.google.dev/gemma/terms"
    assert "Gemma Terms of Use" in g["licence"]["notice"]
    assert ll["licence"]["id"] == "apache-2.0" and ll["licence"]["notice"] is None


def test_models_list_labels_the_files_mote_pull_knows(client, site, monkeypatch):
    """A file whose sha256 is in mote.pull's table gets its kind, title, licence notice, default
    sampling and the default flag (first in the list); unknown files get kind None."""
    import dataclasses

    from mote import pull as pull_mod

    digest = hashlib.sha256(site["data"]["tiny-llama.gguf"]).hexdigest()
    fake = dataclasses.replace(pull_mod.KNOWN_MODELS["qwen2.5-coder-0.5b-instruct"], sha256=digest,
                               licence="Test Licence notice")
    monkeypatch.setitem(pull_mod.KNOWN_MODELS, fake.name, fake)
    listing = client.get("/models").json()
    assert [m["file"] for m in listing] == ["tiny-llama.gguf", "tiny-gemma.gguf"]  # the default first
    chat, other = listing
    assert chat["kind"] == "chat" and chat["default"] is True and chat["name"] == fake.title
    assert chat["licence"]["notice"] == "Test Licence notice" and chat["sampling"]["top_k"] == 20
    assert other["kind"] is None and other["default"] is False


def test_chunk_list_names_the_sha256_of_every_chunk(settings, site):
    """GET /models and GET /models/{file}/chunks give the sha256 of every CHUNK_BYTES chunk (the
    last one shorter), which the page checks with the browser's SHA-256 as the file streams; the
    file's own responses say where the list is."""
    import dataclasses

    small = dataclasses.replace(settings, chunk_bytes=1000)   # several chunks of the small test files
    c = TestClient(create_app(small), base_url="http://127.0.0.1")
    listing = {m["file"]: m for m in c.get("/models").json()}
    for name, data in site["data"].items():
        want = [hashlib.sha256(data[i : i + 1000]).hexdigest() for i in range(0, len(data), 1000)]
        assert len(want) > 2 and len(data) % 1000  # a short last chunk
        assert listing[name]["chunks"] == {"size": 1000, "sha256": want}
        r = c.get(f"/models/{name}/chunks")
        assert r.status_code == 200 and r.json() == {"sha256": hashlib.sha256(data).hexdigest(),
                                                     "chunks": {"size": 1000, "sha256": want}}
        assert c.get(f"/models/{name}/chunks", headers={"If-None-Match": r.headers["ETag"]}).status_code == 304
        assert c.head(f"/models/{name}").headers["X-Mote-Chunks"] == f"/models/{name}/chunks"
    assert c.get("/models/nothing.gguf/chunks").status_code == 404
    assert c.get("/models/..%2Fsecret.txt/chunks").status_code == 404


def test_sha256_is_computed_once_per_file_version(settings, site, monkeypatch):
    import web.app as app_mod

    calls = []
    real = app_mod._sha256
    monkeypatch.setattr(app_mod, "_sha256", lambda p, size: calls.append(p) or real(p, size))
    c = TestClient(create_app(settings), base_url="http://127.0.0.1")
    for _ in range(3):
        c.get("/models")
        c.get("/models/tiny-llama.gguf", headers={"Range": "bytes=0-0"})
    assert len(calls) == 2  # one per file, not per request


# ---- GET /models/{file} ------------------------------------------------------------------------

def test_full_download_headers(client, site):
    data = site["data"]["tiny-gemma.gguf"]
    r = client.get("/models/tiny-gemma.gguf")
    assert r.status_code == 200
    assert r.content == data
    h = r.headers
    assert h["accept-ranges"] == "bytes"
    assert h["content-type"] == "application/octet-stream"
    assert h["content-length"] == str(len(data))
    assert h["etag"] == f'"{hashlib.sha256(data).hexdigest()}"'  # strong, content-derived
    assert "last-modified" in h and "cache-control" in h
    assert "content-encoding" not in h
    assert h["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("spec, span", [
    ("bytes=0-9", (0, 9)),
    ("bytes=10-19", (10, 19)),
    ("bytes=-16", (-16, -1)),                     # suffix
    ("bytes=100-", (100, -1)),                    # open-ended
    ("bytes=0-99999999999999999999", (0, -1)),    # end past EOF is clamped
    ("bytes=-99999999", (0, -1)),                 # suffix longer than the file
    ("BYTES=5-5", (5, 5)),                        # unit is case-insensitive
])
def test_single_range(client, site, spec, span):
    data = site["data"]["tiny-gemma.gguf"]
    size = len(data)
    start, end = (s % size for s in span)
    r = client.get("/models/tiny-gemma.gguf", headers={"Range": spec})
    assert r.status_code == 206
    assert r.headers["content-range"] == f"bytes {start}-{end}/{size}"
    assert r.headers["content-length"] == str(end - start + 1)
    assert r.content == data[start:end + 1]


@pytest.mark.parametrize("spec", ["bytes=SIZE-", "bytes=5-4", "bytes=-0", "bytes=abc", "bytes=1-2-3",
                                  "bytes= ", "bytes=SIZE-SIZE"])
def test_unsatisfiable_range_is_416(client, site, spec):
    size = len(site["data"]["tiny-gemma.gguf"])
    r = client.get("/models/tiny-gemma.gguf", headers={"Range": spec.replace("SIZE", str(size))})
    assert r.status_code == 416
    assert r.headers["content-range"] == f"bytes */{size}"
    assert r.content == b""


@pytest.mark.parametrize("spec", ["bytes=0-1,5-6", "bytes=" + ",".join(["0-"] * 5000), "items=0-1", "bytes"])
def test_multi_range_and_other_units_get_the_whole_file(client, site, spec):
    data = site["data"]["tiny-gemma.gguf"]
    r = client.get("/models/tiny-gemma.gguf", headers={"Range": spec})
    assert r.status_code == 200 and r.content == data and "content-range" not in r.headers


def test_conditional_requests(client, site):
    etag = client.get("/models/tiny-llama.gguf", headers={"Range": "bytes=0-0"}).headers["etag"]
    r = client.get("/models/tiny-llama.gguf", headers={"If-None-Match": etag})
    assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == etag
    assert client.get("/models/tiny-llama.gguf", headers={"If-None-Match": f'"x", W/{etag}'}).status_code == 304
    assert client.get("/models/tiny-llama.gguf", headers={"If-None-Match": '"other"'}).status_code == 200
    # If-Range with a stale ETag: the Range is ignored and the whole file comes back
    r = client.get("/models/tiny-llama.gguf", headers={"Range": "bytes=0-3", "If-Range": '"stale"'})
    assert r.status_code == 200 and len(r.content) == len(site["data"]["tiny-llama.gguf"])
    r = client.get("/models/tiny-llama.gguf", headers={"Range": "bytes=0-3", "If-Range": etag})
    assert r.status_code == 206 and len(r.content) == 4


def test_head(client, site):
    r = client.head("/models/tiny-llama.gguf", headers={"Range": "bytes=4-7"})
    assert r.status_code == 206 and r.content == b""
    assert r.headers["content-length"] == "4"
    assert r.headers["content-range"] == f"bytes 4-7/{len(site['data']['tiny-llama.gguf'])}"


def test_parse_range_edges():
    assert parse_range(None, 10) is None
    assert parse_range("bytes=0-0", 10) == (0, 0)
    assert parse_range("bytes=9-", 10) == (9, 9)
    assert parse_range("bytes=-1", 10) == (9, 9)
    for bad in ("bytes=10-", "bytes=0-", "bytes=-1"):
        with pytest.raises(Unsatisfiable):
            parse_range(bad, 0)  # nothing is satisfiable in an empty file


# ---- traversal (raw requests) --------------------------------------------------------------------

TRAVERSALS = [
    b"/models/../secret.txt",
    b"/models/..%2fsecret.txt",
    b"/models/%2e%2e%2fsecret.txt",
    b"/models/%2e%2e/secret.txt",
    b"/models/%252e%252e%252fsecret.txt",
    b"/models/..%5csecret.txt",
    b"/models/..\\secret.txt",
    b"/models/%2fetc%2fpasswd",
    b"/models//etc/passwd",
    b"/models/..",
    b"/models/.",
    b"/models/",
    b"/models/.hidden.gguf",
    b"/models/notes.txt",
    b"/models/link.gguf",
    b"/models/../models_private/hidden.gguf",
    b"/models/tiny-gemma.gguf%00.txt",
    b"/models/tiny-gemma.gguf%00",
    b"/static/../secret.txt",
    b"/static/%2e%2e/secret.txt",
    b"/static/..%2fsecret.txt",
    b"/static/../models/notes.txt",
    b"http://127.0.0.1/../secret.txt",
    b"/static/v/0/../../secret.txt",
    b"/static/v/0/%2e%2e/%2e%2e/secret.txt",
    b"/static/v/0/pyodide/../../secret.txt",
]


@pytest.mark.parametrize("target", TRAVERSALS)
def test_no_path_outside_models_dir(server, target):
    status, _, body = raw(server, target)
    assert status in (400, 404), (target, status)
    assert SECRET not in body


def test_raw_request_reaches_a_model(server, site):
    status, head, body = raw(server, b"/models/tiny-llama.gguf")
    assert status == 200 and body == site["data"]["tiny-llama.gguf"]
    # proof that raw() sends the path as written: a client that normalised `..` would get the file
    status, _, body = raw(server, b"/models/../models/tiny-llama.gguf")
    assert status == 404 and body != site["data"]["tiny-llama.gguf"]


def test_symlinked_model_is_not_listed(client):
    assert "link.gguf" not in {m["file"] for m in client.get("/models").json()}
    assert client.get("/models/link.gguf").status_code == 404


# ---- Host header, CORS, page headers -----------------------------------------------------------

@pytest.mark.parametrize("host, ok", [
    (b"evil.example", False), (b"evil.example:PORT", False), (b"127.0.0.1.evil.example", False),
    (b"localhost:PORT", True), (b"127.0.0.1:PORT", True), (b"[::1]:PORT", True), (b"", False),
])
def test_host_header_limited_to_loopback(server, host, ok):
    status, _, _ = raw(server, b"/models", host=host.replace(b"PORT", str(server).encode()))
    assert status == (200 if ok else 400)


def test_cors_closed_by_default(client):
    r = client.get("/models/tiny-llama.gguf", headers={"Origin": "http://127.0.0.1:9999", "Range": "bytes=0-0"})
    assert "access-control-allow-origin" not in r.headers


def test_cors_for_configured_origin(settings):
    origin = "http://127.0.0.1:9999"
    c = TestClient(create_app(Settings(**{**settings.__dict__, "cors_origins": (origin,)})),
                   base_url="http://127.0.0.1")
    for path in ("/models/tiny-llama.gguf", "/models", "/static/x.wasm"):
        r = c.get(path, headers={"Origin": origin, "Range": "bytes=0-0"})
        assert r.headers["access-control-allow-origin"] == origin, path
        exposed = {h.strip().lower() for h in r.headers["access-control-expose-headers"].split(",")}
        assert {"content-length", "content-range", "etag", "accept-ranges"} <= exposed
    pre = c.options("/models/tiny-llama.gguf", headers={
        "Origin": origin, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "range"})
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == origin
    other = c.get("/models", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_page_and_security_headers(client):
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    csp = r.headers["content-security-policy"]
    assert "'wasm-unsafe-eval'" in csp and "'unsafe-eval'" not in csp.replace("'wasm-unsafe-eval'", "")
    assert "object-src 'none'" in csp
    assert r.headers["referrer-policy"] == "no-referrer"
    assert "browser assets are not built" in r.text  # this test's static/ has no build-manifest.json
    sw = client.get("/sw.js")
    assert sw.status_code == 200 and sw.headers["service-worker-allowed"] == "/"
    assert client.get("/static/x.wasm").headers["content-type"] == "application/wasm"
    for path in ("/docs", "/openapi.json", "/redoc"):
        assert client.get(path).status_code == 404


def test_serve_binds_loopback_by_default():
    import inspect

    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"


# ---- clients that hold connections, files that change ----------------------------------------------

@pytest.fixture()
def quick_server(settings, monkeypatch):
    """The real server configuration with a 1 s deadline for a request head."""
    monkeypatch.setattr(web_app, "REQUEST_HEAD_S", 1.0)
    with running_server(settings) as port:
        yield port


def closed_by_server(sock: socket.socket, within_s: float) -> bool:
    sock.settimeout(within_s)
    try:
        return sock.recv(1) == b""
    except socket.timeout:
        return False
    except ConnectionResetError:
        return True


def test_idle_and_slow_connections_do_not_lock_out_clients(quick_server, site):
    """100 connections that send nothing and 20 that send their headers a byte at a time: other
    clients are still answered at once (no 503), and the server closes the idle and slow ones once
    the request-head deadline passes."""
    idle = [socket.create_connection(("127.0.0.1", quick_server), timeout=5) for _ in range(100)]
    slow = [socket.create_connection(("127.0.0.1", quick_server), timeout=5) for _ in range(20)]
    try:
        for s in slow:
            s.sendall(b"GET /models HTTP/1.1\r\nHo")
        for _ in range(5):     # (raw() gives up after 5 s without an answer)
            status, _, body = raw(quick_server, b"/models/tiny-llama.gguf")
            assert status == 200 and body == site["data"]["tiny-llama.gguf"]
        for s in slow:
            s.sendall(b"s")          # still trickling: a byte does not extend the deadline
        assert all(closed_by_server(s, 5) for s in idle[:5] + slow[:5])
    finally:
        for s in idle + slow:
            s.close()


def test_a_slow_download_is_not_cut_by_the_deadline(quick_server, site):
    """The deadline is for sending a request, not for reading the answer."""
    with socket.create_connection(("127.0.0.1", quick_server), timeout=10) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"GET /models/tiny-gemma.gguf HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        time.sleep(1.5)                # past the deadline with the response in progress
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.partition(b"\r\n\r\n")[2] == site["data"]["tiny-gemma.gguf"]


def test_file_rewritten_while_sent_is_cut_short_not_mixed(tmp_path):
    """A model overwritten in place during a download: the client gets a prefix of the old bytes and
    fewer than Content-Length of them (an error), never new bytes under the old ETag."""
    models = tmp_path / "models"
    models.mkdir()
    old = np.random.default_rng(0).integers(0, 256, 48 << 20, dtype=np.uint8).tobytes()
    path = models / "big.gguf"
    path.write_bytes(old)
    settings = Settings(models_dir=models, static_dir=tmp_path)
    with running_server(settings) as port, socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.sendall(b"GET /models/big.gguf HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        data = s.recv(1 << 16)
        with open(path, "r+b") as f:   # in place: same inode, same size, other bytes
            f.write(bytes(len(old)))
            f.flush()
            os.fsync(f.fileno())
        try:
            while chunk := s.recv(1 << 20):
                data += chunk
        except ConnectionResetError:
            pass
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"200" in head.split(b"\r\n")[0]
    assert len(body) < len(old) and body == old[: len(body)]


def test_hashing_one_file_does_not_block_another(settings, site, monkeypatch):
    """Facts of a file being hashed do not hold up requests for a file already known."""
    index = web_app.ModelIndex(settings)
    paths = index.files()
    known = paths["tiny-llama.gguf"]
    index.facts(known, known.stat())
    started, release = threading.Event(), threading.Event()
    real = web_app._sha256

    def slow_sha256(path, size):
        if path.name == "tiny-gemma.gguf":
            started.set()
            release.wait(10)
        return real(path, size)

    monkeypatch.setattr(web_app, "_sha256", slow_sha256)
    worker = threading.Thread(target=lambda: index.facts(paths["tiny-gemma.gguf"], paths["tiny-gemma.gguf"].stat()))
    worker.start()
    try:
        assert started.wait(5)
        got = []
        reader = threading.Thread(target=lambda: got.append(index.facts(known, known.stat())))
        reader.start()
        reader.join(5)                 # while tiny-gemma's hash is still held up
        assert not reader.is_alive() and not release.is_set()
        assert got[0]["sha256"] == hashlib.sha256(site["data"]["tiny-llama.gguf"]).hexdigest()
    finally:
        release.set()
        worker.join(10)


def test_a_broken_model_is_listed_with_an_error_that_hides_the_servers_folders(tmp_path):
    models = tmp_path / "secret-folder-name"
    models.mkdir()
    (models / "broken.gguf").write_bytes(b"GGUF" + bytes(20))
    listed = TestClient(create_app(Settings(models_dir=models, static_dir=tmp_path)),
                        base_url="http://127.0.0.1").get("/models").json()
    (entry,) = listed
    assert entry["file"] == "broken.gguf" and entry["error"]
    assert "secret-folder-name" not in json.dumps(listed) and str(tmp_path) not in json.dumps(listed)


def test_versioned_static_serves_one_version_at_a_time(tmp_path):
    """The page's files under /static/v/<version>/: the current version only (the runtime under any),
    content-addressed, so cached for good; after a change the old version is 404 "reload the page"."""
    static = tmp_path / "static"
    (static / "pyodide").mkdir(parents=True)
    (static / "main.js").write_text("// one")
    (static / "pyodide" / "pyodide.js").write_text("// runtime")
    client = TestClient(create_app(Settings(models_dir=tmp_path, static_dir=static)), base_url="http://127.0.0.1")
    page = client.get("/")
    old = page.headers["x-mote-shell"]
    assert f'src="/static/v/{old}/main.js"' in page.text
    shell = client.get("/static/shell.json")       # what mote-embed.js asks, its own URL carrying no version
    assert shell.json() == {"version": old} and shell.headers["cache-control"] == "no-store"
    r = client.get(f"/static/v/{old}/main.js")
    assert r.text == "// one" and "immutable" in r.headers["cache-control"]
    (static / "pyodide" / "pyodide.js").write_text("// runtime, same size")  # the runtime is not versioned
    assert client.get("/").headers["x-mote-shell"] == old

    (static / "main.js").write_text("// two")
    os.utime(static / "main.js", ns=(time.time_ns(), time.time_ns() + 10**9))  # a new mtime, whatever the clock
    new = client.get("/").headers["x-mote-shell"]
    assert new != old and client.get(f"/static/v/{new}/main.js").text == "// two"
    assert client.get("/static/shell.json").json() == {"version": new}
    gone = client.get(f"/static/v/{old}/main.js")
    assert gone.status_code == 404 and "reload the page" in gone.text and "no-store" in gone.headers["cache-control"]
    assert client.get(f"/static/v/{old}/pyodide/pyodide.js").status_code == 200
    assert client.get(f"/static/v/{new}/missing.js").status_code == 404


@pytest.mark.parametrize("request_bytes", [
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n",    # one huge header
    b"GET /" + b"a" * 200_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",            # a huge request line
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-A: b\r\n" * 20_000 + b"\r\n",     # very many headers
], ids=["header", "request-line", "many-headers"])
def test_oversized_requests_get_a_4xx_not_a_reset(server, request_bytes):
    with socket.create_connection(("127.0.0.1", server), timeout=5) as s:
        s.sendall(request_bytes)
        head = s.recv(1000)
    assert head.startswith(b"HTTP/1.1 4"), head[:80]
