"""Qwen2.5-Coder's tokenizer (GPT-2-style BPE, `qwen2` pre-tokenizer) against llama.cpp.

tests/data/tokenizer_golden_qwen.json, made by scripts/make_qwen_tokenizer_golden.py: llama.cpp's
ids for the 0.5B Instruct file's own vocabulary on code-heavy strings (indentation runs, tabs, CRLF,
long numbers, CJK and emoji in code, chat-template special tokens) and the general golden strings,
without and with special-token parsing. Mote's Tokenizer is rebuilt from the pulled GGUF's metadata
(scripts/test.sh pulls it; the 1.5B file carries the same vocabulary).
"""

import json

import pytest

from engine.gguf import open_gguf
from engine.tokenizer import Tokenizer
from tests.paths import ROOT, pulled_model

GOLDEN = json.loads((ROOT / "tests" / "data" / "tokenizer_golden_qwen.json").read_text(encoding="utf-8"))
NAME = "qwen2.5-coder-0.5b-instruct"


@pytest.fixture(scope="module")
def metadata() -> dict:
    from mote.pull import KNOWN_MODELS

    assert KNOWN_MODELS[NAME].sha256 == GOLDEN["file_sha256"]   # the golden belongs to this file
    return open_gguf(pulled_model(NAME)).metadata


@pytest.fixture(scope="module")
def qwen(metadata) -> Tokenizer:
    return Tokenizer.from_metadata(metadata)


def test_pre_tokenizer_is_qwen2(metadata):
    assert metadata["tokenizer.ggml.pre"] == "qwen2" and metadata["tokenizer.ggml.model"] == "gpt2"


def test_ids_match_llama_cpp(qwen):
    cases = GOLDEN["cases"]
    assert len(cases) > 300
    bad = [c["text"] for c in cases if qwen.encode(c["text"], add_bos=False) != c["ids"]]
    assert not bad, f"{len(bad)} strings differ from llama.cpp, e.g. {bad[:3]!r}"


def test_ids_with_special_tokens_match_llama_cpp(qwen):
    bad = [c["text"] for c in GOLDEN["cases"]
           if qwen.encode(c["text"], add_bos=False, parse_special=True) != c["ids_special"]]
    assert not bad, f"{len(bad)} strings differ from llama.cpp, e.g. {bad[:3]!r}"


def test_code_strings_round_trip(qwen):
    for c in GOLDEN["cases"]:
        assert qwen.decode(qwen.encode(c["text"], add_bos=False)) == c["text"]

