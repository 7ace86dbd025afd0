"""build_wasm.py: hash checks, never a half-built static/, the wheels it writes.

The full build runs only when every download is already in .cache/wasm/ (or MOTE_BUILD_WASM_NETWORK=1
allows downloading), so the fast suite never needs the network.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import build_wasm as bw

# The CPython-only tools (mote/): the browser never imports them, so the wheel must not carry them.
TOOL_MODULES = {"cli", "convert", "safetensors", "quantize", "perplexity", "pull", "progress", "loader",
                "encoders", "bench", "kernels", "native", "browser"}


def tree(path: Path) -> dict[str, bytes]:
    """Every file under `path` with its bytes (what 'left as it was' compares)."""
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def old_static(tmp_path):
    """A static/ from an earlier build plus the hand-written files that live beside it."""
    static = tmp_path / "static"
    (static / "pyodide").mkdir(parents=True)
    (static / "wheels").mkdir()
    (static / "pyodide" / "pyodide.mjs").write_text("old runtime")
    (static / "wheels" / "old-0.1-py3-none-any.whl").write_bytes(b"old wheel")
    (static / "build-manifest.json").write_text('{"old": true}')
    (static / "main.js").write_text("// page script")
    return static


def cache_complete(cache: Path) -> bool:
    names = [f"pyodide-{bw.PYODIDE_VERSION}.tgz", bw.NUMPY_CARRIER_FILE, bw.JINJA2_FILE, bw.MARKUPSAFE_SDIST]
    return all((cache / n).is_file() for n in names)


# ---- verification ------------------------------------------------------------------------------

def test_sri_digest_matches_npm_format(tmp_path):
    f = tmp_path / "x.tgz"
    f.write_bytes(b"hello npm")
    expected = "sha512-" + base64.b64encode(hashlib.sha512(b"hello npm").digest()).decode()
    assert bw.sri_digest(f) == expected


def test_tampered_cached_file_is_rejected_and_deleted(tmp_path):
    f = tmp_path / "pkg.whl"
    f.write_bytes(b"good bytes")
    good = hashlib.sha256(b"good bytes").hexdigest()
    bw.verify(f, good)  # passes
    f.write_bytes(b"evil bytes")
    with pytest.raises(bw.BuildError, match=r"pkg\.whl: hash mismatch .*expected " + good):
        bw.verify(f, good)
    assert not f.exists()  # the next run downloads a fresh copy


def test_tampered_npm_tarball_leaves_static_untouched(tmp_path, old_static):
    cache = tmp_path / "cache"
    cache.mkdir()
    tgz = cache / f"pyodide-{bw.PYODIDE_VERSION}.tgz"
    with tarfile.open(tgz, "w:gz") as tf:  # a well-formed tarball with the wrong contents
        data = b"console.log('evil')"
        info = tarfile.TarInfo("package/pyodide.mjs")
        info.size = len(data)
        import io
        tf.addfile(info, io.BytesIO(data))
    before = tree(old_static)
    with pytest.raises(bw.BuildError, match="hash mismatch"):
        bw.build(old_static, cache)
    assert tree(old_static) == before
    assert not any(p.name.startswith((".build-", ".old-")) for p in old_static.iterdir())


def test_failed_download_leaves_static_untouched(tmp_path, old_static, monkeypatch, capsys):
    def fail(cmd):
        raise bw.BuildError(f"download failed: {' '.join(cmd)} exited with 1")
    monkeypatch.setattr(bw, "run", fail)
    before = tree(old_static)
    rc = bw.main(["--static", str(old_static), "--cache", str(tmp_path / "cache")])
    assert rc == 1
    assert "download failed" in capsys.readouterr().err
    assert tree(old_static) == before


def test_swap_replaces_only_build_outputs(tmp_path, old_static):
    staged = tmp_path / "staged"
    (staged / "pyodide").mkdir(parents=True)
    (staged / "wheels").mkdir()
    (staged / "pyodide" / "pyodide.mjs").write_text("new runtime")
    (staged / "build-manifest.json").write_text('{"new": true}')
    bw.swap_into(old_static, staged)
    assert tree(old_static) == {
        "build-manifest.json": b'{"new": true}',
        "main.js": b"// page script",               # hand-written files are never touched
        "pyodide/pyodide.mjs": b"new runtime",      # old wheel gone with the old wheels/ folder
    }


# ---- wheels written by build_wasm.py -----------------------------------------------------------

def test_engine_wheel_is_pure_reproducible_and_importable(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    wa, wb = bw.build_engine_wheel(a), bw.build_engine_wheel(b)
    assert wa.name.endswith("-py3-none-any.whl")
    assert wa.read_bytes() == wb.read_bytes()  # same sources, same bytes
    with zipfile.ZipFile(wa) as zf:
        names = zf.namelist()
        meta = zf.read(next(n for n in names if n.endswith("/METADATA"))).decode()
        record = zf.read(next(n for n in names if n.endswith("/RECORD"))).decode()
        for line in record.splitlines():  # every RECORD hash matches the member's bytes
            name, digest, _ = line.rsplit(",", 2)
            if digest:
                raw = hashlib.sha256(zf.read(name)).digest()
                assert digest == "sha256=" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode(), name
    assert "engine/__init__.py" in names and "engine/bridge.py" in names
    assert not any(n.startswith(("web/", "tests/", "mote/")) or "__pycache__" in n for n in names)
    tools = [n for n in names if n.rsplit("/", 1)[-1].removesuffix(".py") in TOOL_MODULES]
    assert tools == [], "CPython-only tools belong in mote/, not in the browser wheel"
    assert [l for l in meta.splitlines() if l.startswith("Requires-Dist")] == ["Requires-Dist: numpy>=2.0"]
    out = subprocess.run([sys.executable, "-c", "import engine, engine.bridge; print(engine.__file__)"],
                         env={"PYTHONPATH": str(wa)}, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert str(wa) in out.stdout  # imported from inside the wheel, not from the checkout


def test_markupsafe_wheel_is_pure_python(tmp_path):
    sdist = bw.CACHE_DIR / bw.MARKUPSAFE_SDIST
    if not sdist.is_file():
        pytest.skip(f"{sdist} not downloaded (run python build_wasm.py once)")
    bw.verify(sdist, bw.MARKUPSAFE_SDIST_SHA256, cached=False)
    whl = bw.build_markupsafe_wheel(sdist, tmp_path)
    with zipfile.ZipFile(whl) as zf:
        names = zf.namelist()
    assert not any(n.endswith((".c", ".so", ".pyd")) for n in names)
    code = ("import markupsafe, markupsafe._native as n; "
            "assert markupsafe.escape('<a href=\"x\">') == '&lt;a href=&#34;x&#34;&gt;'; "
            "assert markupsafe._escape_inner is n._escape_inner; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(whl)},
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# ---- the whole build ---------------------------------------------------------------------------

def test_full_build_from_cache(tmp_path, old_static):
    import os

    if not cache_complete(bw.CACHE_DIR) and os.environ.get("MOTE_BUILD_WASM_NETWORK") != "1":
        pytest.skip("downloads not in .cache/wasm/ (run python build_wasm.py, or set MOTE_BUILD_WASM_NETWORK=1)")
    manifest = bw.build(old_static, bw.CACHE_DIR)
    assert (old_static / "main.js").read_text() == "// page script"
    assert not (old_static / "wheels" / "old-0.1-py3-none-any.whl").exists()
    on_disk = json.loads((old_static / "build-manifest.json").read_text())
    assert on_disk == manifest
    for entry in manifest["runtime"]["files"] + manifest["wheels"] + [manifest["snapshot"]]:
        data = (old_static / entry["file"]).read_bytes()
        assert len(data) == entry["size"] and hashlib.sha256(data).hexdigest() == entry["sha256"]
    # the runtime snapshot a first visit starts from (tests/test_snapshot.py restores it and checks its checksum)
    assert manifest["snapshot"]["file"] == f"wheels/{bw.SNAPSHOT}" and len(manifest["snapshot"]["checksum"]) == 32
    assert f"wheels/{bw.SNAPSHOT}" not in {w["file"] for w in manifest["wheels"]}
    lock = json.loads((old_static / "pyodide" / "pyodide-lock.json").read_text())
    numpy = old_static / "pyodide" / lock["packages"]["numpy"]["file_name"]
    assert hashlib.sha256(numpy.read_bytes()).hexdigest() == lock["packages"]["numpy"]["sha256"]
    assert {Path(w["file"]).name.split("-")[0] for w in manifest["wheels"]} == {"jinja2", "markupsafe", "mote_engine",
                                                                                 "bytecode.zip"}
    bytecode = next(w for w in manifest["wheels"] if w["file"].endswith(bw.BYTECODE_ZIP))
    assert bytecode["extract_dir"] == "/"
    with zipfile.ZipFile(old_static / bytecode["file"]) as zf:
        names = zf.namelist()
    assert "home/pyodide/engine/__pycache__/bridge.cpython-312.pyc" in names
    assert "lib/python3.12/site-packages/numpy/__pycache__/__init__.cpython-312.pyc" in names


def test_cdn_build_references_the_cdn_and_the_server_allows_it(tmp_path):
    if not ((bw.CACHE_DIR / bw.JINJA2_FILE).is_file() and (bw.CACHE_DIR / bw.MARKUPSAFE_SDIST).is_file()):
        pytest.skip("jinja2/markupsafe downloads not in .cache/wasm/")
    cdn = "https://cdn.jsdelivr.net/pyodide/v0.27.7/full"
    static = tmp_path / "static"
    manifest = bw.build(static, bw.CACHE_DIR, pyodide_cdn=cdn)
    assert manifest["runtime"] == {"base_url": cdn + "/", "files": []}
    assert not (static / "pyodide").exists() and (static / "wheels").is_dir()
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from web.app import Settings, create_app

    client = TestClient(create_app(Settings(models_dir=tmp_path, static_dir=static)), base_url="http://127.0.0.1")
    csp = client.get("/").headers["content-security-policy"]
    assert "script-src 'self' 'wasm-unsafe-eval' https://cdn.jsdelivr.net;" in csp


def test_bytecode_without_node_is_skipped_with_a_note(tmp_path, monkeypatch, capsys):
    """No Node on PATH: no bytecode.zip (workers then compile at import) and no runtime snapshot (a
    first visit starts Python itself), and the build says so."""
    monkeypatch.setattr(bw.shutil, "which", lambda name: None)
    assert bw.build_bytecode_zip(tmp_path, tmp_path, tmp_path) is None
    assert "node not found" in capsys.readouterr().out
    assert not (tmp_path / bw.BYTECODE_ZIP).exists()
    assert bw.build_snapshot(tmp_path, tmp_path / bw.SNAPSHOT) is None
    assert "no runtime snapshot" in capsys.readouterr().out
    assert not (tmp_path / bw.SNAPSHOT).exists()


def test_a_failed_snapshot_build_names_the_problem(tmp_path):
    """scripts/build_snapshot.mjs failing (here: no build-manifest.json in the staged folder) stops the
    build with Node's error, before anything is swapped into static/."""
    with pytest.raises(bw.BuildError, match="runtime snapshot.*failed"):
        bw.build_snapshot(tmp_path, tmp_path / bw.SNAPSHOT)
