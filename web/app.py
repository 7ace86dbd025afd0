"""Dev server: the chat page, static assets and GGUF files with HTTP Range (FastAPI + uvicorn).

    app = create_app(Settings(models_dir=Path("models")))      # tests inject their own Settings
    serve("127.0.0.1", 8000, "models")                          # what `mote serve` calls

Routes
    GET /                     the chat page (web/templates/index.html)
    GET /sw.js                the service worker, served at the root so its scope is the whole app
    GET /static/...           static/ (page scripts, style, and build_wasm.py's pyodide/ and wheels/)
    GET /static/v/{version}/...  the same files under the page's shell version (ShellVersion): the page
                              loads its scripts, manifest and wheels from there, so a page never runs
                              a mix of two deployments (another version: 404 "reload the page")
    GET /static/shell.json    {"version": the current shell version}, for mote-embed.js, whose own URL
                              carries none
    GET /models               JSON list: name, file, url, size, sha256, architecture, quantization, licence,
                              kind (chat | completion, for files mote pull knows), default (offered first)
    GET|HEAD /models/{file}   one .gguf file: single Range -> 206, Accept-Ranges, strong ETag (the sha256),
                              Last-Modified, If-None-Match -> 304, no compression; X-Mote-Chunks names
    GET /models/{file}/chunks its chunk list: the sha256 of every CHUNK_BYTES chunk (also in GET /models
                              as `chunks`), so the page checks the file at the browser's native speed

Hardening (see shared/research/security.md §3.6):
  * Host header limited to loopback names (DNS rebinding); bind 127.0.0.1 by default.
  * Model files are looked up by exact name in a listing of models_dir made with os.scandir: the
    request path is never joined onto a directory, so `..`, encoded slashes, absolute paths,
    backslashes and NUL cannot name anything else. Symlinks are skipped unless follow_symlinks.
  * Range is parsed here, single range only: several ranges -> 200 with the whole file (RFC 9110
    §14.2 lets a server ignore Range), so no merging of attacker-chosen range lists at all.
  * CORS is closed unless `cors_origins` names the origins (or '*') that may embed the runtime,
    wheels and models; Content-Length, Content-Range, Accept-Ranges and ETag are exposed.
  * CSP, nosniff and no-referrer on every response; no /docs or /openapi.json.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware

ROOT = Path(__file__).resolve().parent.parent
CHUNK = 256 * 1024  # bytes per read when streaming a model

# llama.cpp's `general.file_type` (enum llama_ftype) -> the quantization name people use.
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
    10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
    16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S",
    22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M",
    28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0",
}

# Licences the page must show a notice for. Gemma's terms require passing on this notice.
LICENCES = {
    "gemma": {
        "name": "Gemma Terms of Use",
        "url": "https://ai.google.dev/gemma/terms",
        "notice": "Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms",
    },
}

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.gguf$")  # what we list and serve
SINGLE_RANGE = re.compile(r"^(\d*)-(\d*)$")


# The chunk list's chunk size: the page checks each chunk with the browser's native SHA-256 as it
# streams (static/model-source.js ChunkVerifier), holding one chunk and a few copies at a time.
CHUNK_BYTES = 4 << 20


@dataclass(frozen=True)
class Settings:
    models_dir: Path = Path("models")
    static_dir: Path = ROOT / "static"
    templates_dir: Path = Path(__file__).resolve().parent / "templates"
    allowed_hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "[::1]")
    cors_origins: tuple[str, ...] = ()  # e.g. ("http://127.0.0.1:9000",) or ("*",); empty: same origin only
    follow_symlinks: bool = False  # serve symlinked .gguf files from models_dir (they may point anywhere)
    model_cache_control: str = "no-cache"  # URLs are not content-addressed: revalidate with the ETag
    static_cache_control: str = "no-cache"
    extra_csp_sources: tuple[str, ...] = field(default=())  # e.g. a Pyodide CDN origin
    chunk_bytes: int = CHUNK_BYTES  # the chunk list's chunk size (a power of two, 64 KiB to 64 MiB)


# ---------------------------------------------------------------------------------------------
# The page's files as one versioned set
# ---------------------------------------------------------------------------------------------
class ShellVersion:
    """A hash of every file under static/ except the Pyodide runtime (the page's scripts and
    style, build-manifest.json, the wheels): the version the page's URLs carry. Recomputed when a
    file's size or mtime changes (a deployment), so a page always gets one consistent set.

    The runtime (static/pyodide/) is pinned by build-manifest.json and served under any version:
    a deployment that changes it changes the manifest, hence the version of the rest."""

    RUNTIME = "pyodide"

    def __init__(self, static_dir: Path):
        self.static_dir = static_dir
        self._stats: tuple = ()
        self._version = ""
        self._lock = threading.Lock()

    def files(self) -> list[Path]:
        out = []
        for root, dirs, names in os.walk(self.static_dir):
            dirs[:] = sorted(d for d in dirs if not (Path(root) == self.static_dir and d == self.RUNTIME))
            out += [Path(root) / n for n in sorted(names)]
        return out

    def current(self) -> str:
        found = []
        for f in self.files():
            try:
                st = f.stat()
            except OSError:  # removed while we looked: not part of this version
                continue
            found.append((str(f.relative_to(self.static_dir)), st.st_size, st.st_mtime_ns))
        stats = tuple(found)
        with self._lock:
            if stats != self._stats:
                h = hashlib.sha256()
                for rel, _, _ in stats:
                    try:
                        h.update(rel.encode() + b"\0" + (self.static_dir / rel).read_bytes() + b"\0")
                    except OSError:
                        continue
                self._stats, self._version = stats, h.hexdigest()[:16]
            return self._version


class VersionedStatic:
    """static/ under /static/v/{version}/: only the current version (the runtime under any), with a
    long cache lifetime, since a version's URLs never change content."""

    def __init__(self, files: StaticFiles, shell: ShellVersion):
        self.files, self.shell = files, shell

    async def __call__(self, scope, receive, send):
        version = scope.get("path_params", {}).get("version", "")
        rest = scope["path"][len(scope.get("root_path", "")):].lstrip("/")
        if scope["type"] == "http" and not rest.startswith(ShellVersion.RUNTIME + "/") and version != self.shell.current():
            response = Response("Mote's files were updated since this page was loaded: reload the page.\n",
                                status_code=404, media_type="text/plain", headers={"Cache-Control": "no-store"})
            await response(scope, receive, send)
            return

        async def send_immutable(message):
            if message["type"] == "http.response.start" and message["status"] == 200:
                message["headers"] = [*message["headers"], (b"cache-control", b"public, max-age=31536000, immutable")]
            await send(message)
        await self.files(scope, receive, send_immutable)


# ---------------------------------------------------------------------------------------------
# Model listing: header facts and sha256, computed once per (path, size, mtime)
# ---------------------------------------------------------------------------------------------
class ModelIndex:
    """The .gguf files directly in models_dir, with facts read from their GGUF headers."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._facts: dict[tuple[str, int, int], dict] = {}
        self._lock = threading.Lock()                              # guards the two dicts only
        self._file_locks: dict[tuple[str, int, int], threading.Lock] = {}  # one per file version

    def warm(self) -> threading.Thread:
        """Hash every file now, in a background thread, so requests rarely wait for a hash."""
        def run():
            for path in self.files().values():
                try:
                    self.facts(path, path.stat())
                except OSError:
                    continue   # gone or unreadable: a request for it will say so
        thread = threading.Thread(target=run, name="mote-model-index", daemon=True)
        thread.start()
        return thread

    def files(self) -> dict[str, Path]:
        """Name -> path for every servable model file (regular files with a plain .gguf name)."""
        out: dict[str, Path] = {}
        try:
            entries = list(os.scandir(self.settings.models_dir))
        except FileNotFoundError:
            return out
        for e in entries:
            if not MODEL_NAME.match(e.name):
                continue
            if e.is_symlink() and not self.settings.follow_symlinks:
                continue
            if e.is_file(follow_symlinks=self.settings.follow_symlinks):
                out[e.name] = Path(e.path)
        return dict(sorted(out.items()))

    def facts(self, path: Path, st: os.stat_result) -> dict:
        """sha256 and header facts of one file; cached on (path, size, mtime_ns)."""
        key = (str(path), st.st_size, st.st_mtime_ns)
        with self._lock:
            if key in self._facts:
                return self._facts[key]
            file_lock = self._file_locks.setdefault(key, threading.Lock())
        with file_lock:   # one hash per file version; other files are served meanwhile
            with self._lock:
                if key in self._facts:
                    return self._facts[key]
            size = self.settings.chunk_bytes
            whole, chunks = _sha256(path, size)
            facts = {"sha256": whole, "chunks": {"size": size, "sha256": chunks}, **_header_facts(path)}
            with self._lock:
                self._facts[key] = facts
                self._file_locks.pop(key, None)
            return facts

    def describe(self, name: str, path: Path) -> dict:
        from mote.pull import DEFAULT_MODEL, known_by_sha256

        st = path.stat()
        facts = dict(self.facts(path, st))  # a copy: the cached dict stays whole
        known = known_by_sha256(facts.get("sha256") or "")
        out = {
            "name": facts.pop("display_name", None) or path.stem,
            "file": name,
            "url": f"/models/{name}",
            "size": st.st_size,
            **facts,
            "kind": None,      # "chat" (answers) | "completion" (continues text) | None (not a known file)
            "default": False,  # the model the page offers first
        }
        if known is not None:  # a file `mote pull` knows: the table's facts (mote/pull.py KNOWN_MODELS)
            out.update(name=known.title or out["name"], kind=known.kind, source=known.source,
                       sampling=dict(known.sampling), default=known.name == DEFAULT_MODEL)
            if out.get("licence") is None or not out["licence"].get("notice"):
                out["licence"] = {**(out.get("licence") or {"id": None, "name": None, "url": None}),
                                  "notice": known.licence}
        return out


def _sha256(path: Path, chunk_bytes: int = CHUNK_BYTES) -> tuple[str, list[str]]:
    """The file's sha256 and the sha256 of each chunk_bytes chunk (the last one shorter), one read."""
    whole, chunks = hashlib.sha256(), []
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_bytes), b""):
            whole.update(chunk)
            chunks.append(hashlib.sha256(chunk).hexdigest())
    return whole.hexdigest(), chunks


def _header_facts(path: Path) -> dict:
    """architecture, quantization, licence and display name from the GGUF metadata."""
    from engine.gguf import GGUFError, open_gguf  # engine import kept out of module import time

    try:
        meta = open_gguf(path).metadata
    except (GGUFError, OSError) as e:
        # the file's name only: the server's folders are nobody's business
        message = str(e).replace(str(path.resolve()), path.name).replace(str(path), path.name)
        return {"architecture": None, "quantization": None, "licence": None, "error": message}
    arch = meta.get("general.architecture")
    file_type = meta.get("general.file_type")
    licence_id = meta.get("general.license")
    if licence_id is None and isinstance(arch, str) and arch.startswith("gemma"):
        licence_id = "gemma"  # Gemma weights are under the Gemma terms whether or not the file says so
    licence = None
    if licence_id is not None:
        licence = {"id": str(licence_id), "name": str(licence_id), "url": meta.get("general.license.link"),
                   "notice": None}
        licence.update({k: v for k, v in LICENCES.get(str(licence_id).lower(), {}).items()})
    return {
        "display_name": meta.get("general.name"),
        "architecture": arch,
        "quantization": FILE_TYPES.get(file_type, None if file_type is None else f"file_type {file_type}"),
        "licence": licence,
    }


# ---------------------------------------------------------------------------------------------
# HTTP Range (RFC 9110 §14), single range only
# ---------------------------------------------------------------------------------------------
class Unsatisfiable(Exception):
    pass


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end inclusive) for a single byte range, or None to send the whole file.

    >>> parse_range("bytes=0-99", 1000), parse_range("bytes=-100", 1000), parse_range("bytes=900-", 1000)
    ((0, 99), (900, 999), (900, 999))

    None for: no header, a unit other than bytes (ignored, RFC 9110 §14.2), several ranges (we
    choose to ignore those and send 200). Raises Unsatisfiable (-> 416) for a bytes range that is
    malformed, reversed (5-4), starts at or past the end, or is an empty suffix (-0).
    """
    if header is None:
        return None
    unit, sep, spec = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    if "," in spec:
        return None
    m = SINGLE_RANGE.match(spec.strip())
    if m is None or (m[1] == "" and m[2] == "") or len(spec) > 64:
        raise Unsatisfiable(f"malformed range {spec!r}")
    if m[1] == "":  # suffix: the last N bytes
        n = int(m[2])
        if n == 0 or size == 0:
            raise Unsatisfiable("empty suffix range")
        return max(size - n, 0), size - 1
    start = int(m[1])
    end = int(m[2]) if m[2] else size - 1
    if end < start or start >= size:
        raise Unsatisfiable(f"range {start}-{end} outside 0-{size - 1}")
    return start, min(end, size - 1)


def _etag_matches(header: str, etag: str) -> bool:
    """If-None-Match: weak comparison over a list of entity tags, or '*'."""
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or any(t.removeprefix("W/") == etag for t in tags)


class FileChanged(OSError):
    """The file changed while it was being sent: the response is cut short, never a mix of versions."""


def _read_span(path: Path, start: int, length: int, version: tuple[int, int] | None = None) -> Iterator[bytes]:
    """`length` bytes of `path` from `start`. version = (size, mtime_ns) the headers were made for:
    if the file is not (or stops being) that version, the body ends early (the client sees fewer
    bytes than Content-Length, an error, instead of bytes of two versions under one ETag).
    A file replaced by rename keeps being read from the old, consistent inode."""
    with open(path, "rb") as f:
        def same() -> bool:
            st = os.fstat(f.fileno())
            return version is None or (st.st_size, st.st_mtime_ns) == version
        if not same():
            raise FileChanged(f"{path.name} changed before it was sent")
        f.seek(start)
        while length > 0:
            chunk = f.read(min(CHUNK, length))
            if not chunk or not same():  # shrank or rewritten under us: stop rather than pad or mix
                raise FileChanged(f"{path.name} changed while it was sent")
            length -= len(chunk)
            yield chunk


# ---------------------------------------------------------------------------------------------
def _csp(settings: Settings) -> str:
    extra = " ".join(settings.extra_csp_sources)
    return (
        f"default-src 'self'; script-src 'self' 'wasm-unsafe-eval' {extra}; worker-src 'self'; "
        f"connect-src 'self' {extra}; img-src 'self' data:; style-src 'self'; object-src 'none'; "
        "base-uri 'none'; frame-ancestors 'self'"
    ).replace("  ", " ")


def _cdn_origin(static_dir: Path) -> tuple[str, ...]:
    """The Pyodide CDN origin when build_wasm.py was run with --pyodide-cdn, for the CSP."""
    try:
        base = json.loads((static_dir / "build-manifest.json").read_text())["runtime"]["base_url"]
    except (OSError, ValueError, KeyError):
        return ()
    m = re.match(r"^(https?://[^/]+)", base)
    return (m[1],) if m else ()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = FastAPI(title="Mote", docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False)
    app.state.settings = settings
    index = app.state.models = ModelIndex(settings)
    shell = app.state.shell = ShellVersion(settings.static_dir)
    templates = Jinja2Templates(directory=str(settings.templates_dir))
    csp = _csp(Settings(**{**settings.__dict__,
                           "extra_csp_sources": settings.extra_csp_sources + _cdn_origin(settings.static_dir)}))

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", csp)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if request.url.path.startswith("/static/"):
            response.headers.setdefault("Cache-Control", settings.static_cache_control)
        return response

    @app.get("/", include_in_schema=False)
    async def page(request: Request):
        manifest_path = settings.static_dir / "build-manifest.json"
        version = shell.current()
        return templates.TemplateResponse(request, "index.html", {
            "built": manifest_path.is_file(),
            "manifest": json.loads(manifest_path.read_text()) if manifest_path.is_file() else None,
            "shell": version,
        }, headers={"Cache-Control": "no-cache", "X-Mote-Shell": version})

    @app.get("/sw.js", include_in_schema=False)
    async def service_worker():
        return FileResponse(settings.static_dir / "sw.js", media_type="text/javascript",
                            headers={"Cache-Control": "no-cache", "Service-Worker-Allowed": "/"})

    @app.get("/models")
    def list_models():  # sync: hashing a new file runs in the thread pool
        models = [index.describe(name, path) for name, path in index.files().items()]
        models.sort(key=lambda m: not m["default"])  # the default first, the rest by file name
        return JSONResponse(models,
                            headers={"Cache-Control": "no-cache"})

    @app.api_route("/models/{file}", methods=["GET", "HEAD"])
    def get_model(file: str, request: Request):
        path = index.files().get(file)  # exact-name lookup: no path is built from the request
        if path is None:
            return JSONResponse({"detail": f"no model named {file!r}"}, status_code=404)
        st = path.stat()
        facts = index.facts(path, st)
        etag = f'"{facts["sha256"]}"'
        headers = {
            "Accept-Ranges": "bytes",
            "ETag": etag,
            "X-Mote-Chunks": f"/models/{file}/chunks",  # where its chunk list is (the embed script reads it)
            "Last-Modified": email.utils.formatdate(st.st_mtime, usegmt=True),
            "Cache-Control": settings.model_cache_control,
        }
        inm = request.headers.get("if-none-match")
        if inm is not None and _etag_matches(inm, etag):
            return Response(status_code=304, headers=headers)

        range_header = request.headers.get("range")
        if_range = request.headers.get("if-range")
        if if_range is not None and if_range.strip() != etag:
            range_header = None  # the client's partial copy is of another version: send it all
        try:
            span = parse_range(range_header, st.st_size)
        except Unsatisfiable:
            return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{st.st_size}"})
        if span is None:
            start, end, status = 0, st.st_size - 1, 200
        else:
            (start, end), status = span, 206
            headers["Content-Range"] = f"bytes {start}-{end}/{st.st_size}"
        length = end - start + 1
        headers["Content-Length"] = str(length)
        if request.method == "HEAD":
            return Response(status_code=status, headers=headers, media_type="application/octet-stream")
        return StreamingResponse(_read_span(path, start, length, (st.st_size, st.st_mtime_ns)),
                                 status_code=status, headers=headers,
                                 media_type="application/octet-stream")

    @app.get("/models/{file}/chunks")
    def get_chunks(file: str, request: Request):
        """The file's chunk list: {"sha256": whole file, "chunks": {"size", "sha256": [...]}}."""
        path = index.files().get(file)
        if path is None:
            return JSONResponse({"detail": f"no model named {file!r}"}, status_code=404)
        facts = index.facts(path, path.stat())
        etag = f'"{facts["sha256"]}-chunks"'
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        inm = request.headers.get("if-none-match")
        if inm is not None and _etag_matches(inm, etag):
            return Response(status_code=304, headers=headers)
        return JSONResponse({"sha256": facts["sha256"], "chunks": facts["chunks"]}, headers=headers)

    @app.get("/static/shell.json", include_in_schema=False)
    async def shell_version():
        # mote-embed.js asks once per page, beside the model's HEAD, and then loads everything from
        # /static/v/{version}/ (cached for good) instead of revalidating each file on every visit
        return JSONResponse({"version": shell.current()}, headers={"Cache-Control": "no-store"})

    static_files = StaticFiles(directory=settings.static_dir, check_dir=False)
    app.mount("/static/v/{version}", VersionedStatic(static_files, shell), name="static-versioned")
    app.mount("/static", static_files, name="static")

    # Outermost first: the Host check runs before anything else, then CORS.
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "HEAD"],
            allow_headers=["Range", "If-None-Match", "If-Range"],
            expose_headers=["Content-Length", "Content-Range", "Accept-Ranges", "ETag", "X-Mote-Chunks"],
            allow_credentials=False,
        )
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(settings.allowed_hosts))
    return app


def serve(host: str = "127.0.0.1", port: int = 8000, models_dir: str | os.PathLike = "models",
          *, cors_origins: tuple[str, ...] = (), allowed_hosts: tuple[str, ...] | None = None) -> None:
    """Run the dev server until interrupted (the `mote serve` entry point).

    The Host check admits the loopback names plus `host` itself when it is a specific address;
    binding 0.0.0.0 or :: needs `allowed_hosts` spelled out (a warning says so).
    """
    hosts = allowed_hosts or Settings.allowed_hosts
    if host not in ("0.0.0.0", "::") and allowed_hosts is None:
        hosts = tuple(dict.fromkeys(hosts + ((f"[{host}]" if ":" in host else host),)))
    if host in ("0.0.0.0", "::"):
        print(f"warning: binding {host} exposes the server to your network; only Host headers "
              f"{', '.join(hosts)} are accepted")
    settings = Settings(models_dir=Path(models_dir), allowed_hosts=hosts, cors_origins=cors_origins)
    shown = f"[{host}]" if ":" in host else host
    app = create_app(settings)
    app.state.models.warm()     # hash the models now, not inside the first requests
    print(f"Mote: http://{shown}:{port}/  (models from {Path(models_dir).resolve()})", flush=True)
    import uvicorn

    uvicorn.Server(server_config(app, host, port)).run()


def server_config(app, host: str, port: int, log_level: str = "info"):
    """How `mote serve` runs uvicorn (the tests run the same): no concurrency limit, a deadline for
    each request head, a short keep-alive."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level=log_level, http=request_deadline_protocol(),
                          timeout_keep_alive=KEEP_ALIVE_S)


KEEP_ALIVE_S = 5         # an idle keep-alive connection is closed after this
REQUEST_HEAD_S = 10      # a connection must send a whole request head (line + headers) within this


def request_deadline_protocol():
    """uvicorn's h11 protocol plus a deadline for each request head.

    Without it, a connection that never sends a byte, or sends its headers a byte a second, is held
    forever; and with a concurrency limit, 64 such sockets answered every other client 503. Here
    there is no concurrency limit, and a connection that has not completed a request head within
    REQUEST_HEAD_S of opening (or of its last response) is closed. Only waiting connections are
    closed: a slow download of a model is a response in progress, not a waiting request.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    request_head_s = REQUEST_HEAD_S   # read once, when the server is configured

    class RequestDeadlineProtocol(H11Protocol):
        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm_deadline()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_deadline()

        def _arm_deadline(self) -> None:
            waiting_after = self.cycle                # a new request replaces self.cycle
            def expire():
                idle = self.cycle is waiting_after and (waiting_after is None or waiting_after.response_complete)
                if idle and not self.transport.is_closing():
                    self.transport.close()
            self.loop.call_later(request_head_s, expire)

    return RequestDeadlineProtocol
