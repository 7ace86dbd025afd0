"""mote/bench/native.py: the `mote bench MODEL --json` row and `greedy_run`, on tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.generate import SamplingParams, generate
from mote.bench.native import greedy_run
from mote.cli import main as mote
from mote.loader import load

pytest.importorskip("gguf")
from tests.tiny_models import write_tiny  # noqa: E402

CONTRACT = {"load_seconds", "prefill_tok_s", "decode_tok_s", "peak_rss_mb"}  # README: `bench MODEL --json`


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny(tmp_path_factory.mktemp("bench") / "tiny.gguf", qtype="Q8_0")


def test_bench_json_row(tiny, capsys):
    assert mote(["bench", str(tiny), "-n", "4", "--repeat", "2", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert CONTRACT <= set(row)
    assert row["architecture"] == "llama" and row["n_generated"] == 4
    assert len(row["decode_tok_s_runs"]) == 2 and row["decode_tok_s"] > 0 and row["prefill_tok_s"] > 0
    assert row["peak_rss_mb"] >= row["rss_before_load_mb"] > 0
    assert "reference_prefill_tok_s" not in row  # atome models only


def test_greedy_run_is_the_engines_greedy_answer(tiny):
    loaded = load(tiny)
    ids = loaded.tokenizer.encode("abc")
    want = [ev.token_id for ev in generate(loaded.model, loaded.tokenizer, ids, SamplingParams(temperature=0, max_tokens=6))
            if ev.kind == "token"]
    row = greedy_run(tiny, "abc", 6)
    assert row["token_ids"] == want and row["n_generated"] == len(want) and row["n_prompt"] == len(ids)
    assert row["load_s"] > 0 and row["ttft_s"] > 0 and row["decode_tok_s"] > 0 and row["peak_rss_mb"] > 0
    assert set(row) == {"token_ids", "text", "stop_reason", "n_prompt", "n_generated", "ttft_s",
                        "prefill_tok_s", "decode_tok_s", "load_s", "peak_rss_mb"}
    again = greedy_run(None, "abc", 6, loaded=loaded)  # an already-loaded model: no load, same answer
    assert again["token_ids"] == want and again["load_s"] == 0.0


def test_bench_atome_adds_the_naive_reference(tmp_path, capsys):
    """What `python -m engine.atome` printed lives here now: fast forward vs reference_forward."""
    from tests.test_atome import TINY, _write_blob

    blob = tmp_path / "tiny.bin"
    blob.write_bytes(_write_blob(TINY, np.random.default_rng(7)))
    out = tmp_path / "tiny-atome.gguf"
    assert mote(["convert", str(blob), str(out), "--d-model", "24", "--n-layers", "2", "--d-head", "8",
                 "--top-k", "3", "--kernel", "4"]) == 0
    capsys.readouterr()
    assert mote(["bench", str(out), "-n", "8", "--repeat", "1", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["architecture"] == "atome" and row["n_generated"] == 8
    assert row["reference_prefill_tok_s"] > 0 and CONTRACT <= set(row)
