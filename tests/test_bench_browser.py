"""`mote bench --browser` (mote/bench/browser.py) on the tiny model, with fast settings.

* one cold run in headless Chromium plus --native: bench.json, bench.md and bench.png are written,
  and the correctness column is computed from real token ids (browser vs CPython engine);
* the column turns red (and the exit status 1) when the reference comes from a perturbed copy of
  the model file, i.e. when the tokens differ;
* `--workers 2` adds a `mote ×2 workers` row (static/parallel.js) whose tokens are checked the same way;
* a missing Chromium is a clear one-line error, exit status 2.
"""

from __future__ import annotations

import json

import pytest

from tests.browser_util import CHROMIUM, ensure_static_built

pytestmark = pytest.mark.browser

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("gguf")
    pytest.importorskip("playwright")
    from tests.tiny_models import write_tiny

    ensure_static_built()
    d = tmp_path_factory.mktemp("bench-models")
    return write_tiny(d / "tiny-llama.gguf", "llama", seed=7, ctx=256), write_tiny(d / "other.gguf", "llama", seed=8, ctx=256)


def args(model, out, *extra):
    return [str(model), "-n", "6", "--repeat", "1", "--bench-prompt", PROMPT, "--out", str(out),
            "--chromium", CHROMIUM, "--history", str(out / "history.jsonl"), *extra]


def test_bench_tiny_three_outputs_and_real_correctness(tiny, tmp_path, capsys):
    from engine.generate import SamplingParams, generate
    from mote.bench.browser import main
    from mote.loader import load

    model, _ = tiny
    assert main(args(model, tmp_path, "--native")) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    md = (tmp_path / "bench.md").read_text()
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert md == capsys.readouterr().out.split("wrote ")[0].rstrip("\n") + "\n"

    rows = {r["engine"]: r for r in report["rows"]}
    assert set(rows) == {"mote", "cpython"}
    mote = rows["mote"]
    # the CPython engine's greedy tokens, computed here independently of mote/bench/browser.py
    loaded = load(model)
    want = [ev.token_id for ev in generate(loaded.model, loaded.tokenizer, loaded.tokenizer.encode(PROMPT),
                                           SamplingParams(temperature=0, max_tokens=6, stop=loaded.template.stop))
            if ev.kind == "token"]
    assert len(want) == 6
    assert mote["runs"][0]["token_ids"] == [want] and mote["greedy_ok"] is True
    run = mote["runs"][0]
    for key in ("download_s", "init_s", "ttft_s", "prefill_tok_s", "decode_tok_s", "wasm_mb", "peak_rss_mb"):
        assert run[key] is not None and run[key] > 0, key
    # the rate tokens reached the page: all six counted; no rate when they came within one tick of its clock
    assert run["page_tokens"] == 6
    if run["page_span_s"] > 0:
        assert run["page_tok_s"] == pytest.approx(5 / run["page_span_s"])
    else:
        assert run["page_tok_s"] is None
    assert run["wasm_mb"] < run["peak_rss_mb"]  # the tab holds the worker's WASM memory and more
    assert rows["cpython"]["greedy_ok"] is True and rows["cpython"]["stats"]["decode_tok_s"]["median"] > 0
    line = next(ln for ln in md.splitlines() if "| mote |" in ln)
    assert line.startswith("| tiny-llama | F32 | mote | 1 |") and line.endswith("✅ yes |")


def _engine_tokens(model, prompt, n):
    """The CPython engine's greedy tokens, computed here independently of mote/bench/browser.py."""
    from engine.generate import SamplingParams, generate
    from mote.loader import load

    loaded = load(model)
    return [ev.token_id for ev in generate(loaded.model, loaded.tokenizer, loaded.tokenizer.encode(prompt),
                                           SamplingParams(temperature=0, max_tokens=n, stop=loaded.template.stop))
            if ev.kind == "token"]


def test_bench_workers_row(tiny, tmp_path, capsys):
    from mote.bench.browser import main

    model, _ = tiny
    assert main(args(model, tmp_path, "--workers", "2")) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    rows = {r["engine"]: r for r in report["rows"]}
    assert list(rows) == ["mote", "mote ×2 workers"]
    par = rows["mote ×2 workers"]
    want = _engine_tokens(model, PROMPT, 6)
    assert len(want) == 6
    assert par["error"] is None and par["compared"] == "tokens"
    assert par["runs"][0]["token_ids"] == [want] and par["greedy_ok"] is True
    run = par["runs"][0]
    for key in ("download_s", "init_s", "ttft_s", "decode_tok_s", "wasm_mb", "peak_rss_mb"):
        assert run[key] is not None and run[key] > 0, key
    # two Pyodide instances, one per worker: the sum is reported, and is more than one worker's
    assert len(run["wasm_mb_per_worker"]) == 2 and run["wasm_mb"] == pytest.approx(sum(run["wasm_mb_per_worker"]))
    assert run["wasm_mb"] > max(run["wasm_mb_per_worker"])
    md = (tmp_path / "bench.md").read_text()
    line = next(ln for ln in md.splitlines() if "| mote ×2 workers |" in ln)
    assert line.startswith("| tiny-llama | F32 | mote ×2 workers | 1 |") and line.endswith("✅ yes |")
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_preload_row(tiny, tmp_path, capsys):
    """--preload adds a row `mote, preload` (the page calls Mote.preload() as it loads), its tokens
    checked against the CPython engine's like every row's."""
    from mote.bench.browser import main

    model, _ = tiny
    assert main(args(model, tmp_path, "--preload")) == 0
    rows = {r["engine"]: r for r in json.loads((tmp_path / "bench.json").read_text())["rows"]}
    assert list(rows) == ["mote", "mote, preload"]
    pre = rows["mote, preload"]
    assert pre["error"] is None and pre["greedy_ok"] is True
    assert pre["runs"][0]["token_ids"] == [_engine_tokens(model, PROMPT, 6)]


def test_bench_correctness_turns_red_when_tokens_differ(tiny, tmp_path, monkeypatch, capsys):
    import mote.bench.browser as bench

    model, other = tiny
    real = bench.cpython_reference
    # the reference is computed on a perturbed file (other weights): the browser's tokens differ
    monkeypatch.setattr(bench, "cpython_reference", lambda path, *a, **k: real(other, *a, **k))
    assert bench.main(args(model, tmp_path)) == 1
    report = json.loads((tmp_path / "bench.json").read_text())
    (row,) = report["rows"]
    assert row["greedy_ok"] is False and row["runs"][0]["token_ids"] != [r["token_ids"] for r in row["reference"]]
    assert "❌ NO" in (tmp_path / "bench.md").read_text()


def test_bench_missing_chromium_is_a_clear_error(tiny, tmp_path, capsys):
    from mote.bench.browser import main

    model, _ = tiny
    rc = main([str(model), "--repeat", "1", "--out", str(tmp_path), "--chromium", str(tmp_path / "no-chromium")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "Chromium not found" in err and "apt-get install -y chromium" in err
    assert not (tmp_path / "bench.json").exists()


def test_add_browser_args_fits_the_cli_bench_parser():
    """The lead's `mote bench` parser already has -n/--repeat/--ctx/--json: no clash, new flags added."""
    import argparse

    from mote.bench.browser import add_browser_args

    p = argparse.ArgumentParser()
    p.add_argument("model", nargs="+")
    p.add_argument("-n", "--n-predict", type=int, default=32)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", action="store_true")
    add_browser_args(p)
    a = p.parse_args(["m.gguf", "--browser", "--native", "--compare", "wllama", "-n", "4"])
    assert (a.browser, a.native, a.compare, a.n_predict, a.repeat, a.workers) == (True, True, ["wllama"], 4, 3, None)
    assert p.parse_args(["m.gguf", "--browser", "--workers", "2", "4"]).workers == [2, 4]
    for bad in ("1", "two", "9"):
        with pytest.raises(SystemExit):
            p.parse_args(["m.gguf", "--workers", bad])


def _fake_out(decode_tok_s: float, tokens: list[int]) -> dict:
    """What browser_run returns for one cold run (one prompt), with a chosen decode speed."""
    return {"download_s": 0.1, "init_s": 1.0, "wall_s": 2.0, "memory": {"wasm_bytes": 5e7}, "js_heap_mb": 3.0,
            "peak_rss_mb": 200.0, "runs": [{"ttft_s": 0.2, "prefill_tok_s": 10.0, "decode_tok_s": decode_tok_s,
                                            "n_generated": len(tokens), "token_ids": tokens}]}


def test_bench_engines_take_turns_and_ratios_pair_runs(tiny, tmp_path, monkeypatch, capsys):
    """Runs alternate between engines (round robin), so the r-th runs pair up; the machine here slows
    down run after run (fake numbers), and the paired ratio stays exact where medians would not."""
    import mote.bench.browser as bench

    model, _ = tiny
    want = _engine_tokens(model, PROMPT, 6)
    calls = []
    speeds = {None: [4.0, 2.0, 3.0], 2: [6.4, 3.2, 4.8]}  # 1 worker, 2 workers: 1.6x in every round

    def fake_run(base, chromium, kind, url, prompts, n, n_ctx, timeout_s, workers=None, layout=None, warm=False):
        calls.append(workers)
        return _fake_out(speeds[workers][sum(1 for c in calls if c == workers) - 1], want)

    monkeypatch.setattr(bench, "browser_run", fake_run)
    assert bench.main(args(model, tmp_path, "--workers", "2", "--repeat", "3")) == 0
    assert calls == [None, 2, None, 2, None, 2]
    rows = {r["engine"]: r for r in json.loads((tmp_path / "bench.json").read_text())["rows"]}
    par = rows["mote ×2 workers"]["paired"]["mote"]
    assert par["n"] == 3 and par["min"] == pytest.approx(1.6) and par["max"] == pytest.approx(1.6)
    assert rows["mote"]["paired"]["mote"]["median"] == pytest.approx(1.0)
    md = (tmp_path / "bench.md").read_text()
    assert "decode ÷ mote (paired)" in md and "decode ÷ wllama" not in md
    assert "| 1.60 (1.60–1.60) |" in next(ln for ln in md.splitlines() if "| mote ×2 workers |" in ln)


def test_bench_warm_adds_a_second_visit_row_per_mote_row(tiny, tmp_path, monkeypatch, capsys):
    """--warm: every Mote run is asked for a second visit (the same profile), reported as its own
    row "... (warm)" beside the cold one, with its time to the first token after navigation."""
    import mote.bench.browser as bench

    model, _ = tiny
    want = _engine_tokens(model, PROMPT, 6)
    asked = []

    def fake_run(base, chromium, kind, url, prompts, n, n_ctx, timeout_s, workers=None, layout=None, warm=False):
        asked.append((workers, warm))
        out = {**_fake_out(3.0, want), "first_token_s": 9.0}
        return {**out, "warm": {**_fake_out(3.3, want), "first_token_s": 4.0}} if warm else out

    monkeypatch.setattr(bench, "browser_run", fake_run)
    assert bench.main(args(model, tmp_path, "--workers", "2", "--repeat", "2", "--warm")) == 0
    assert asked == [(None, True), (2, True)] * 2
    rows = {r["engine"]: r for r in json.loads((tmp_path / "bench.json").read_text())["rows"]}
    assert set(rows) == {"mote", "mote ×2 workers", "mote (warm)", "mote ×2 workers (warm)"}
    assert [r["first_token_s"] for r in rows["mote (warm)"]["runs"]] == [4.0, 4.0]
    assert [r["first_token_s"] for r in rows["mote"]["runs"]] == [9.0, 9.0]
    assert rows["mote (warm)"]["greedy_ok"] is True
    assert "1st token after navigation s" in (tmp_path / "bench.md").read_text()


def test_bench_layout_rows_ask_for_their_layout_and_pair_with_mote(tiny, tmp_path, monkeypatch, capsys):
    """--int8 and --compact: a row per Mote row with that LoadRequest.layout, paired with plain Mote."""
    import mote.bench.browser as bench

    model, _ = tiny
    want = _engine_tokens(model, PROMPT, 6)
    asked = []
    speed = {None: 3.0, "int8": 2.7, "compact": 2.4}

    def fake_run(base, chromium, kind, url, prompts, n, n_ctx, timeout_s, workers=None, layout=None, warm=False):
        asked.append((workers, layout))
        return _fake_out(speed[layout], want)

    monkeypatch.setattr(bench, "browser_run", fake_run)
    assert bench.main(args(model, tmp_path, "--workers", "2", "--int8", "--compact")) == 0
    assert asked == [(None, None), (2, None), (None, "int8"), (2, "int8"), (None, "compact"), (2, "compact")]
    rows = {r["engine"]: r for r in json.loads((tmp_path / "bench.json").read_text())["rows"]}
    assert set(rows) == {"mote", "mote ×2 workers", "mote int8", "mote ×2 workers int8", "mote compact",
                         "mote ×2 workers compact"}
    assert rows["mote compact"]["paired"]["mote"]["median"] == pytest.approx(0.8)


def test_bench_failed_engine_stops_and_the_others_go_on(tiny, tmp_path, monkeypatch, capsys):
    import mote.bench.browser as bench

    model, _ = tiny
    want = _engine_tokens(model, PROMPT, 6)
    calls = []

    def fake_run(base, chromium, kind, url, prompts, n, n_ctx, timeout_s, workers=None, layout=None, warm=False):
        calls.append(workers)
        if workers == 2 and calls.count(2) == 2:
            raise bench.RunFailed("worker crashed (fake)")
        return _fake_out(5.0 if workers else 3.0, want)

    monkeypatch.setattr(bench, "browser_run", fake_run)
    assert bench.main(args(model, tmp_path, "--workers", "2", "--repeat", "3")) == 1  # a Mote row failed
    assert calls == [None, 2, None, 2, None]  # the failed engine is not run again
    rows = {r["engine"]: r for r in json.loads((tmp_path / "bench.json").read_text())["rows"]}
    assert len(rows["mote"]["runs"]) == 3 and len(rows["mote ×2 workers"]["runs"]) == 1
    assert rows["mote ×2 workers"]["error"] == "worker crashed (fake)"
    assert rows["mote ×2 workers"]["paired"]["mote"] == {"median": 5 / 3, "min": 5 / 3, "max": 5 / 3, "n": 1}
    assert "failed: worker crashed (fake)" in (tmp_path / "bench.md").read_text()


def test_paired_ratios_leave_out_cpython_and_missing_numbers():
    from mote.bench.browser import markdown, summarize

    def row(engine, decodes):
        return {"model": "m", "quant": "Q8_0", "file": "/m.gguf", "engine": engine, "greedy_ok": True, "error": None,
                "runs": [{"decode_tok_s": d} for d in decodes]}

    rows = summarize([row("mote", [4.0, None, 5.0]), row("wllama", [5.0, 6.0, 5.0]), row("cpython", [10.0, 11.0, 12.0])])
    by = {r["engine"]: r for r in rows}
    assert by["wllama"]["paired"]["mote"] == {"median": 1.125, "min": 1.0, "max": 1.25, "n": 2}  # round 2 has no Mote number
    assert by["mote"]["paired"]["wllama"]["n"] == 2
    assert by["cpython"]["paired"] == {}  # measured after the browser runs: nothing to pair with
    md = markdown({"rows": rows, "meta": {"n_predict": 8, "prompts": ["p"], "repeat": 3, "browser": "b", "platform": "p"}})
    cells = {ln.split(" | ")[2]: ln.split(" | ") for ln in md.splitlines() if ln.startswith("| m |")}
    assert cells["wllama"][-3:-1] == ["1.12 (1.00–1.25)", "–"] and cells["mote"][-3:-1] == ["–", "0.90 (0.80–1.00)"]
    assert cells["cpython"][-3:-1] == ["–", "–"]


def test_history_keeps_every_run_and_warns_outside_the_recorded_range(tiny, tmp_path, monkeypatch, capsys):
    """Each run appends its paired ratios to the history; a later run whose ratio falls outside the
    range recorded so far gets a warning naming that range and its dates."""
    import mote.bench.browser as bench

    model, _ = tiny
    want = _engine_tokens(model, PROMPT, 6)
    speed = {None: 4.0, 2: 6.0}
    monkeypatch.setattr(bench, "browser_run", lambda base, chromium, kind, url, prompts, n, n_ctx, timeout_s,
                        workers=None, layout=None, warm=False: _fake_out(speed[workers], want))
    history = tmp_path / "history.jsonl"

    def run(two_workers: float) -> str:
        speed[2] = two_workers
        assert bench.main(args(model, tmp_path, "--workers", "2")) == 0
        return capsys.readouterr().err

    assert "warning" not in run(6.0)        # ratio 1.5: the first record
    assert "1.60 today, outside the 1.50–1.50 recorded in 1 run(s)" in run(6.4)
    assert "warning" not in run(6.2)        # 1.55: inside 1.5-1.6
    err = run(4.4)                          # 1.1: outside
    assert "warning: mote ×2 workers ÷ mote on tiny-llama.gguf: 1.10 today, outside the 1.50–1.60 " \
           "recorded in 3 run(s)" in err
    records = [json.loads(line) for line in history.read_text().splitlines()]
    assert [next(r for r in rec["rows"] if r["engine"] == "mote ×2 workers")["paired"]["mote"]["median"]
            for rec in records] == [1.5, 1.6, 1.55, 1.1]
    assert {"date", "machine", "browser", "mote", "wllama", "n_predict"} <= set(records[0])


def test_latency_delays_every_response_and_is_recorded(tiny, tmp_path, monkeypatch, capsys):
    """--latency MS: the benchmark's server answers each request MS milliseconds late (a page, a
    model's HEAD), and the report says which latency it ran with."""
    import time

    from fastapi.testclient import TestClient

    import mote.bench.browser as bench

    model, _ = tiny
    client = TestClient(bench.bench_app(model.parent, latency_ms=300), base_url="http://127.0.0.1:8000")
    for method, path in (("GET", "/static/shell.json"), ("HEAD", f"/models/{model.name}")):
        t0 = time.monotonic()
        assert client.request(method, path).status_code == 200
        assert time.monotonic() - t0 >= 0.3, (method, path)
    want = _engine_tokens(model, PROMPT, 6)
    monkeypatch.setattr(bench, "browser_run", lambda *a, **k: _fake_out(3.0, want))
    assert bench.main(args(model, tmp_path, "--latency", "40")) == 0
    assert json.loads((tmp_path / "bench.json").read_text())["meta"]["latency_ms"] == 40
