"""engine/tokenizer.py against llama.cpp's token ids.

Oracles:
  - tests/data/shared/reference/gemma3-270m.json: llama.cpp's ids for a few prompts (MOTE_SHARED
    overrides the folder; skipped when absent).
  - tests/data/tokenizer_golden_gemma.json: llama.cpp's ids, end-of-generation ids and token
    pieces for Gemma 3's vocabulary on the strings in scripts/make_tokenizer_golden.py (which
    regenerates it), plus the same vocabulary with add_space_prefix=true.
  - tests/data/tokenizer_golden_bpe.json: a small byte-level BPE vocabulary (stored in the file)
    and llama.cpp's ids for it under the gpt-2, llama-bpe, qwen2, default and starcoder
    pre-tokenizers.
  - the Atome / vanilla byte-model references (prompt_tokens) for the byte tokenizer.
The Gemma tests need the GGUF (MOTE_GEMMA_PATH, default /tmp/gemma/gemma-3-270m-q4_k_m.gguf).
"""

from __future__ import annotations

import json
import os
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.tokenizer import (_GPT2, _LLAMA3, _QWEN2, StreamDecoder, Tokenizer, TokenizerError,
                              _pattern, _split_words)

DATA = Path(__file__).parent / "data"
from tests.paths import REFERENCE  # noqa: E402

GEMMA_PATH = Path(os.environ.get("MOTE_GEMMA_PATH", "/tmp/gemma/gemma-3-270m-q4_k_m.gguf"))
REFERENCE_DIR = REFERENCE  # vendored in tests/data/shared (tests/paths.py)


def _load_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))  # vendored: missing is a failure


@pytest.fixture(scope="module")
def gemma_metadata() -> dict:
    if not GEMMA_PATH.exists():
        pytest.skip(f"Gemma GGUF not found at {GEMMA_PATH} (set MOTE_GEMMA_PATH)")
    from engine.gguf import open_gguf
    return open_gguf(GEMMA_PATH).metadata


@pytest.fixture(scope="module")
def gemma(gemma_metadata) -> Tokenizer:
    return Tokenizer.from_metadata(gemma_metadata)


@pytest.fixture(scope="module")
def gemma_golden() -> dict:
    return _load_json(DATA / "tokenizer_golden_gemma.json")


@pytest.fixture(scope="module")
def bpe_golden() -> dict:
    return _load_json(DATA / "tokenizer_golden_bpe.json")


def _bpe(bpe_golden: dict, pre: str) -> Tokenizer:
    md = dict(bpe_golden["metadata"])
    md["tokenizer.ggml.token_type"] = np.array(md["tokenizer.ggml.token_type"], np.int32)
    md["tokenizer.ggml.pre"] = pre
    return Tokenizer.from_metadata(md)


def _check_cases(tok: Tokenizer, cases: list[dict]) -> None:
    """Every golden string, special tokens parsed and not, and with the model's BOS/EOS policy

    (llama.cpp's add_special=True is our add_bos=None)."""
    bad = []
    for c in cases:
        s = c["text"]
        for key, kwargs in (("ids", dict(add_bos=False)),
                            ("ids_special", dict(add_bos=False, parse_special=True)),
                            ("ids_add_special", dict())):          # the model's BOS/EOS policy
            got = tok.encode(s, **kwargs)
            if got != c[key]:
                bad.append(f"{s!r} {key}: got {got}, llama.cpp {c[key]}")
    assert not bad, "\n".join(bad)


# --------------------------------------------------------------------------------------------
# Gemma 3 (SentencePiece-style "llama" vocabulary, 262144 tokens)
# --------------------------------------------------------------------------------------------

def test_gemma_metadata_fields(gemma):
    assert gemma.kind == "llama" and gemma.vocab_size == 262144
    assert (gemma.bos_id, gemma.eos_id, gemma.add_bos, gemma.add_space_prefix) == (2, 1, True, False)


def test_gemma_matches_shared_llama_cpp_reference(gemma):
    ref = _load_json(REFERENCE_DIR / "gemma3-270m.json")
    for s, ids in ref["llama_cpp"]["tokenize"]["cases"].items():
        assert gemma.encode(s, add_bos=False) == ids, s
    for s, ids in ref["llama_cpp"]["tokenize_special"]["cases"].items():
        assert gemma.encode(s, add_bos=False, parse_special=True) == ids, s
    for s, p in ref["exact_reference"]["prompts"].items():
        assert gemma.encode(s) == p["prompt_tokens"], s                 # BOS by default
    for s, p in ref["llama_cpp"]["greedy"].items():
        assert gemma.encode(s) == p["prompt_tokens"], s


def test_gemma_matches_llama_cpp_golden(gemma, gemma_golden):
    _check_cases(gemma, gemma_golden["cases"])


def test_gemma_add_space_prefix_matches_llama_cpp(gemma_metadata, gemma_golden):
    tok = Tokenizer.from_metadata({**gemma_metadata, "tokenizer.ggml.add_space_prefix": True})
    _check_cases(tok, gemma_golden["add_space_prefix_cases"])
    n_round_trips = 0
    for c in gemma_golden["add_space_prefix_cases"]:
        plain = all(tok.token_types[i] in (1, 6) for i in c["ids"])   # normal and byte tokens
        if plain and "\u2581" not in c["text"]:
            assert tok.decode(tok.encode(c["text"])) == c["text"]
            n_round_trips += 1
    assert n_round_trips > 50


def test_gemma_stop_ids_match_llama_cpp_eog(gemma, gemma_golden):
    assert sorted(gemma.stop_ids) == gemma_golden["eog_ids"]
    assert gemma.encode("<end_of_turn>", add_bos=False, parse_special=True)[0] in gemma.stop_ids


def test_gemma_token_bytes_match_llama_cpp_pieces(gemma, gemma_golden):
    for i, (plain, special) in gemma_golden["pieces"].items():
        assert gemma.token_bytes(int(i)) == bytes.fromhex(plain), i
        assert gemma.token_bytes(int(i), special=True) == bytes.fromhex(special), i


def test_gemma_round_trip_golden_strings(gemma, gemma_golden):
    for c in gemma_golden["cases"]:
        s = c["text"]
        if "\u2581" in s:          # a literal "▁" decodes as a space in every SentencePiece model
            continue
        assert gemma.decode(gemma.encode(s)) == s
        assert gemma.decode(gemma.encode(s, parse_special=True), special=True) == "<bos>" + s


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\u2581"),
               max_size=60))
def test_gemma_round_trip_random_text(gemma, s):
    ids = gemma.encode(s, add_bos=False)
    assert all(0 <= i < gemma.vocab_size for i in ids)
    assert gemma.decode(ids) == s


def test_gemma_byte_fallback_and_stream_decoder(gemma):
    s = "\U00020000"                             # CJK Ext. B, not in the vocabulary: 4 byte tokens
    ids = gemma.encode(s, add_bos=False)
    assert [gemma.token_bytes(i) for i in ids] == [bytes([b]) for b in s.encode("utf-8")]
    d = StreamDecoder(gemma)
    assert [d.feed(i) for i in ids] == ["", "", "", s]     # nothing until the character is whole
    assert d.flush() == ""
    # a stream cut inside the character shows U+FFFD at flush, never raw bytes
    d = gemma.stream()
    assert "".join(d.feed(i) for i in ids[:2]) == "" and d.flush() == "\ufffd"
    # text of a whole sentence streams to the same string decode() gives
    ids = gemma.encode("naïve 日本語 🙂 \U00020000!", add_bos=True)
    d = gemma.stream()
    assert "".join(d.feed(i) for i in ids) + d.flush() == gemma.decode(ids)


# --------------------------------------------------------------------------------------------
# byte-level BPE ("gpt2") with the gpt-2, llama3, qwen2, default and starcoder pre-tokenizers
# --------------------------------------------------------------------------------------------

BPE_PRE = ("gpt-2", "llama-bpe", "qwen2", "default", "starcoder")


@pytest.mark.parametrize("pre", BPE_PRE)
def test_bpe_matches_llama_cpp(bpe_golden, pre):
    tok = _bpe(bpe_golden, pre)
    g = bpe_golden["pre"][pre]
    _check_cases(tok, g["cases"])
    assert sorted(tok.stop_ids) == g["eog_ids"]
    for i, (plain, special) in bpe_golden["pieces"].items():
        assert tok.token_bytes(int(i)) == bytes.fromhex(plain), i
        assert tok.token_bytes(int(i), special=True) == bytes.fromhex(special), i


def test_bpe_ignore_merges_only_for_llama3(bpe_golden):
    """llama-bpe keeps a word that is a token whole even when no merge path reaches it."""
    word = " unreachableword"
    ids = {pre: _bpe(bpe_golden, pre).encode(word, add_bos=False) for pre in BPE_PRE}
    assert len(ids["llama-bpe"]) == 1 and len(ids["gpt-2"]) > 1
    assert _bpe(bpe_golden, "llama-bpe").add_bos and not _bpe(bpe_golden, "gpt-2").add_bos


@pytest.mark.parametrize("pre", BPE_PRE)
@settings(max_examples=100, deadline=None)
@given(s=st.text(st.characters(blacklist_categories=("Cs",)), max_size=60))
def test_bpe_round_trip_random_text(bpe_golden, pre, s):
    tok = _bpe(bpe_golden, pre)
    assert tok.decode(tok.encode(s, add_bos=False)) == s


# The pre-tokenizer's Unicode classes come from collapsing the text (see engine/tokenizer.py);
# check the pieces against unicodedata directly on random text.
def _letter(c: str) -> bool:
    return unicodedata.category(c)[0] == "L"


def _number(c: str) -> bool:
    return unicodedata.category(c)[0] == "N"


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",)), max_size=80))
def test_pre_tokenizer_pieces_follow_unicode_categories(s):
    for src in (_GPT2, _LLAMA3, _QWEN2):
        pieces = _split_words(s, [_pattern(src)])
        assert "".join(pieces) == s and all(pieces)
        for p in pieces:
            # a piece with a letter is letters, after at most one leading non-letter
            if any(_letter(c) for c in p[1:]):
                assert all(_letter(c) for c in p[1:]), (src, p)
            # the next code point never continues a letter run (pieces end where letters end)
            numbers = [c for c in p if _number(c)]
            if numbers:
                assert len(numbers) == len(p) or (src == _GPT2 and p[0] == " ")
                assert len(numbers) <= {_GPT2: len(p), _LLAMA3: 3, _QWEN2: 1}[src], (src, p)
        for a, b in zip(pieces, pieces[1:]):
            if _letter(a[-1]) and _letter(b[0]) and not a.startswith("'"):
                raise AssertionError(f"letter run split: {a!r} | {b!r}")


def test_pre_tokenizer_non_ascii_examples():
    llama3 = [_pattern(_LLAMA3)]
    assert _split_words("naïve café", llama3) == ["naïve", " café"]
    assert _split_words("日本語のテキスト", llama3) == ["日本語のテキスト"]
    assert _split_words("٣٤٥٦ x²", llama3) == ["٣٤٥", "٦", " x", "²"]       # Arabic-Indic digits
    assert _split_words("a\u00a0\u3000b", llama3) == ["a", "\u00a0", "\u3000b"]
    assert _split_words("Ελληνικά!!\n\n", llama3) == ["Ελληνικά", "!!\n\n"]
    assert _split_words("x\x1cy", [_pattern(_GPT2)]) == ["x", "\x1c", "y"]   # not whitespace


# --------------------------------------------------------------------------------------------
# byte tokenizer (Atome, vanilla byte GPT)
# --------------------------------------------------------------------------------------------

def test_byte_tokenizer_matches_atome_references():
    for name in ("atome-944k.json", "vanilla-1m.json"):
        ref = _load_json(REFERENCE_DIR / name)
        tok = Tokenizer.from_metadata({"tokenizer.ggml.model": "bytes"})
        for prompt, p in ref["prompts"].items():
            assert tok.encode(prompt) == p["prompt_tokens"], (name, prompt)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 255), max_size=40), st.text(max_size=20))
def test_stream_decoder_equals_decode(byte_ids, text):
    """Any byte sequence, valid UTF-8 or not, streams to exactly what decode() gives at once."""
    tok = Tokenizer.byte_tokenizer()
    ids = byte_ids + tok.encode(text)
    d = tok.stream()
    pieces = [d.feed(i) for i in ids]
    assert "".join(pieces) + d.flush() == tok.decode(ids)


def test_byte_tokenizer_selection_and_stream():
    tok = Tokenizer.from_metadata({"general.architecture": "gpt2", "gpt2.vocab_size": 256})
    assert (tok.kind, tok.vocab_size, tok.bos_id, tok.add_bos) == ("bytes", 256, None, False)
    s = "héllo 🙂"
    ids = tok.encode(s)
    assert ids == list(s.encode("utf-8")) and tok.decode(ids) == s
    d = StreamDecoder(tok)
    assert [d.feed(i) for i in "🙂".encode("utf-8")] == ["", "", "", "🙂"]
    with pytest.raises(TokenizerError, match="512 tokens"):
        Tokenizer.from_metadata({"general.architecture": "gpt2", "gpt2.vocab_size": 512})


# --------------------------------------------------------------------------------------------
# small synthetic vocabularies: behaviour no reference covers, and errors
# --------------------------------------------------------------------------------------------

def _spm(tokens, scores, types, **extra) -> Tokenizer:
    md = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
          "tokenizer.ggml.scores": np.array(scores, np.float32),
          "tokenizer.ggml.token_type": np.array(types, np.int32)}
    md.update({"tokenizer.ggml." + k: v for k, v in extra.items()})
    return Tokenizer.from_metadata(md)


def test_spm_merges_by_score_then_leftmost():
    # "abc": "ab" (-1) outscores "bc" (-2), so a+b merge first and "abc" is reached via "ab"+"c"
    toks = ["<unk>", "<s>", "</s>", "a", "b", "c", "ab", "bc", "abc", "\u2581", "aa"]
    types = [2, 3, 3] + [1] * 8
    tok = _spm(toks, [0, 0, 0, -5, -5, -5, -1, -2, -3, -4, -1], types)
    assert tok.encode("abc", add_bos=False) == [9, 8]                  # "▁" (space prefix), "abc"
    toks[8] = "xyz"                                                    # no "abc" now
    tok = _spm(toks, [0, 0, 0, -5, -5, -5, -2, -1, -3, -4, -1], types, add_space_prefix=False)
    assert tok.encode("abc", add_bos=False) == [3, 7]                  # "bc" outscores "ab"
    assert tok.encode("aaa", add_bos=False) == [10, 3]                 # equal scores: leftmost


def test_spm_unknown_character_without_byte_tokens():
    tok = _spm(["<unk>", "<s>", "</s>", "a"], [0, 0, 0, -1], [2, 3, 3, 1], add_space_prefix=False)
    assert tok.encode("aéa") == [1, 3, 0, 0, 3]                        # é is two UTF-8 bytes
    assert tok.decode([1, 3, 0, 0, 3]) == "aa"                         # unknown shows nothing


def test_errors_name_the_value():
    with pytest.raises(TokenizerError, match="'bert'"):
        Tokenizer.from_metadata({"tokenizer.ggml.model": "bert", "tokenizer.ggml.tokens": ["a"]})
    with pytest.raises(TokenizerError, match="'nonesuch'"):
        Tokenizer.from_metadata({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "nonesuch",
                                 "tokenizer.ggml.tokens": ["a"], "tokenizer.ggml.merges": []})
    with pytest.raises(TokenizerError, match="tokenizer.ggml.tokens"):
        Tokenizer.from_metadata({"tokenizer.ggml.model": "llama"})
    with pytest.raises(TokenizerError, match="token_type has 1 entries"):
        _spm(["a", "b"], [0, 0], [1])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        Tokenizer.byte_tokenizer().token_bytes(300)
