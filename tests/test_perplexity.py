"""`mote perplexity`: window layout, the PPL / KL / top-1 arithmetic on fake models whose answers
are worked out by hand here, the CLI contract on a tiny GGUF, and the vanilla 1M GPT against the
number Atome LM's PyTorch evaluation gives (shared/reference/vanilla-1m.json)."""

import json
import math
import subprocess
import sys
import time

import numpy as np
import pytest

from engine.tokenizer import Tokenizer
from mote.cli import main as mote
from mote.perplexity import make_windows, perplexity, text_tokens, tokens_needed
from tests.paths import REFERENCE, SHARED, shared_file
from tests.tiny_models import write_tiny

SAMPLE = SHARED / "atome" / "tinystories_sample.txt"


# ---- windows --------------------------------------------------------------------------------------


def test_windows_without_bos_drop_the_partial_tail():
    assert make_windows(list(range(10)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert make_windows(list(range(10)), 4, max_windows=1) == [[0, 1, 2, 3]]
    assert make_windows(list(range(3)), 4) == []


def test_windows_with_bos_put_bos_first_and_score_every_text_token_once():
    w = make_windows(list(range(10, 20)), 4, bos_id=1)
    assert w == [[1, 10, 11, 12], [1, 13, 14, 15], [1, 16, 17, 18]]
    scored = [t for win in w for t in win[1:]]
    assert scored == list(range(10, 19))  # each text token once, in order
    assert tokens_needed(4, True, 3) == 9 and tokens_needed(4, False, 3) == 12


def test_ctx_too_small_is_an_error():
    with pytest.raises(ValueError, match="at least 2"):
        make_windows([1, 2, 3], 1)


def test_byte_tokens_are_the_file_bytes():
    tok = Tokenizer.byte_tokenizer()
    data = "héllo\n".encode()
    assert text_tokens(tok, data) == list(data)


def test_prefix_tokenization_matches_the_full_text(tmp_path):
    path = write_tiny(tmp_path / "t.gguf", "llama")
    from engine.gguf import open_gguf

    tok = Tokenizer.from_metadata(open_gguf(path).metadata)
    data = ("".join(f"line {i}: the quick brown fox.\n" for i in range(2000))).encode()
    full = text_tokens(tok, data)
    part = text_tokens(tok, data, need=500)
    assert len(part) >= 500 and part[:500] == full[:500]


# ---- arithmetic on fake models --------------------------------------------------------------------


class BigramModel:
    """logits of the next token depend only on the current one: table[token]."""

    def __init__(self, table):
        self.table = np.asarray(table, dtype=np.float32)  # (vocab, vocab)
        self.n_ctx = 64
        self.resets = 0

    def reset(self):
        self.resets += 1

    def forward(self, tokens, all_logits=False):
        assert all_logits
        return self.table[np.asarray(tokens)]  # (n, vocab)


def _by_hand(table, windows):
    """-log p(next | current) summed with plain Python floats."""
    nll, n = 0.0, 0
    for w in windows:
        for a, b in zip(w, w[1:]):
            row = [float(v) for v in table[a]]
            z = math.log(sum(math.exp(v) for v in row))
            nll += z - row[b]
            n += 1
    return nll, n


def test_ppl_is_exp_mean_nll_over_positions_1_to_n_minus_1():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(7, 7)) * 2
    tokens = rng.integers(0, 7, size=50).tolist()
    windows = make_windows(tokens, 8)
    model = BigramModel(table)
    r = perplexity(model, windows)
    nll, n = _by_hand(table, windows)
    assert r.n_scored == n == 6 * 7 and r.n_windows == 6 and r.ctx == 8
    assert r.ppl == pytest.approx(math.exp(nll / n), rel=1e-6)
    assert model.resets == 6  # one fresh KV cache per window


def test_uniform_model_has_ppl_equal_to_vocab_size():
    r = perplexity(BigramModel(np.zeros((5, 5))), make_windows([0, 1, 2, 3, 4] * 4, 5))
    assert r.ppl == pytest.approx(5.0, rel=1e-9)


def test_kl_and_top1_against_hand_computed_values():
    rng = np.random.default_rng(1)
    base_t, model_t = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    windows = make_windows(rng.integers(0, 6, size=40).tolist(), 10)
    r = perplexity(BigramModel(model_t), windows, base=BigramModel(base_t))
    kls, agree, n = [], 0, 0
    for w in windows:
        for a in w[:-1]:
            p = np.exp(base_t[a] - np.log(np.exp(base_t[a]).sum()))
            q = np.exp(model_t[a] - np.log(np.exp(model_t[a]).sum()))
            kls.append(float(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))))
            agree += int(np.argmax(base_t[a]) == np.argmax(model_t[a]))
            n += 1
    assert r.kl_mean == pytest.approx(np.mean(kls), rel=1e-5)
    assert r.kl_median == pytest.approx(np.median(kls), rel=1e-5)
    assert r.top1_agreement == pytest.approx(agree / n)
    assert r.base_ppl == pytest.approx(math.exp(_by_hand(base_t, windows)[0] / n), rel=1e-6)
    same = perplexity(BigramModel(model_t), windows, base=BigramModel(model_t))
    assert same.kl_mean == pytest.approx(0.0, abs=1e-9) and same.top1_agreement == 1.0


def test_base_with_another_vocabulary_is_refused():
    windows = make_windows([0, 1, 2, 3], 4)
    with pytest.raises(ValueError, match="vocabulary"):
        perplexity(BigramModel(np.zeros((4, 4))), windows, base=BigramModel(np.zeros((4, 5))))


def test_text_shorter_than_a_window_is_an_error():
    with pytest.raises(ValueError, match="shorter than one window"):
        perplexity(BigramModel(np.zeros((4, 4))), [])


# ---- CLI on a tiny GGUF ---------------------------------------------------------------------------


def test_cli_json_contract_and_bos_windows(tmp_path, capsys):
    model = write_tiny(tmp_path / "tiny.gguf", "llama")  # SPM vocabulary: adds BOS
    text = tmp_path / "t.txt"
    text.write_text("Once upon a time there was a tiny model. " * 20)
    assert mote(["perplexity", str(model), str(text), "--ctx", "32", "--json", "--no-progress",
                 "--kl-base", str(model)]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("ppl", "n_scored", "n_windows", "ctx", "seconds", "kl_mean", "top1_agreement", "bos"):
        assert key in out
    assert out["bos"] is True and out["ctx"] == 32
    assert out["n_windows"] == out["n_text_tokens"] // 31 and out["n_scored"] == 31 * out["n_windows"]
    assert out["kl_mean"] == pytest.approx(0.0, abs=1e-9) and out["top1_agreement"] == 1.0
    assert out["base_ppl"] == pytest.approx(out["ppl"])
    assert mote(["perplexity", str(model), str(text), "--ctx", "32", "--max-windows", "2", "--no-progress"]) == 0
    assert "over 62 tokens (2 windows of 32, BOS first)" in capsys.readouterr().out


# ---- the vanilla 1M GPT vs Atome LM's PyTorch evaluation --------------------------------------------


@pytest.fixture(scope="module")
def vanilla_gguf(tmp_path_factory):
    pytest.importorskip("torch", reason="converting the .pt checkpoint needs torch (dev extra)")
    src = shared_file("atome/vanilla_1m_v1.pt")
    out = tmp_path_factory.mktemp("vanilla") / "vanilla-1m.gguf"
    assert mote(["convert", str(src), str(out), "--allow-pickle"]) == 0
    return out


@pytest.mark.slow
def test_vanilla_full_perplexity_matches_reference(vanilla_gguf, capsys):
    """The whole 256 KiB sample (1024 windows, ~2.5-5 minutes on 2 cores): within 0.1 % of 3.0541."""
    shared_file("atome/tinystories_sample.txt")
    ref = json.loads((REFERENCE / "vanilla-1m.json").read_text())["perplexity"]
    t0 = time.perf_counter()
    assert mote(["perplexity", str(vanilla_gguf), str(SAMPLE), "--ctx", "256", "--json", "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert abs(out["ppl"] / ref["ppl"] - 1) < 1e-3, (out["ppl"], ref["ppl"])
    # The reference scored 1023 windows (its loop stops one window early); we score all 1024 full ones.
    assert out["n_windows"] == 1024 and out["n_scored"] == 1024 * 255
    print(f"full vanilla perplexity: {out['ppl']:.5f} in {time.perf_counter() - t0:.0f} s")


def test_vanilla_subset_perplexity_matches_torch(vanilla_gguf, capsys):
    """First 6 windows: our PPL equals the PyTorch forward's (tests/test_convert.py's torch oracle)."""
    shared_file("atome/tinystories_sample.txt")
    from tests.test_convert import torch_vanilla_logits

    assert mote(["perplexity", str(vanilla_gguf), str(SAMPLE), "--ctx", "256", "--max-windows", "6",
                 "--json", "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    data = SAMPLE.read_bytes()
    nll, n = 0.0, 0
    for w in range(6):
        ids = list(data[256 * w : 256 * (w + 1)])
        logits = torch_vanilla_logits(ids).astype(np.float64)  # (256, 256)
        logp = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) - logits.max(1, keepdims=True)
        nll -= logp[np.arange(255), ids[1:]].sum()
        n += 255
    assert out["n_scored"] == n
    assert out["ppl"] == pytest.approx(math.exp(nll / n), rel=1e-5)
