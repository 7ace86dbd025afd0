"""The tiny golden in CPython: the engine reproduces tests/data/tiny_golden.json token for token.

The same golden is asserted in the browser by tests/test_browser.py (habit 11c); it is made only
by scripts/make_tiny_golden.py. The model file is written into a temporary folder at test time
from the golden's vocabulary and seed; its sha256 must match the golden's, so a change to the
writer or the weight layout shows up here first (regenerate with the script if it is intended).
"""

from __future__ import annotations

from tests import tiny_golden as tg


def test_model_file_is_the_goldens(tmp_path):
    golden = tg.load_golden()
    path = tg.write_model(tmp_path / tg.FILE_NAME, golden)
    assert path.stat().st_size == golden["model"]["size"]
    assert tg.sha256_file(path) == golden["model"]["sha256"], \
        "the tiny model's bytes changed: rerun scripts/make_tiny_golden.py if that is intended"


def test_engine_reproduces_golden(tmp_path):
    golden = tg.load_golden()
    data = tg.write_model(tmp_path / tg.FILE_NAME, golden).read_bytes()
    out = tg.engine_greedy(data, golden)
    assert out["prompt_tokens"] == golden["prompt_tokens"]
    assert out["tokens"] == golden["tokens"]
    assert out["text"] == golden["text"]
    assert out["reason"] == golden["reason"] == "length"


def test_prompt_is_chatml_through_the_bpe_vocabulary(tmp_path):
    """The prompt went through the chat template and the real BPE vocabulary, not byte fallback."""
    from engine.gguf import GGUFFile
    from engine.tokenizer import Tokenizer

    golden = tg.load_golden()
    data = tg.write_model(tmp_path / tg.FILE_NAME, golden).read_bytes()
    tok = Tokenizer.from_metadata(GGUFFile(data).metadata)
    start, end = tok.tokens.index("<|im_start|>"), tok.tokens.index("<|im_end|>")
    ids = golden["prompt_tokens"]
    assert ids[0] == start and ids.count(start) == 2 and ids.count(end) == 1   # control tokens parsed
    assert tok.decode(ids) == "user\n" + golden["messages"][0]["content"] + "\nassistant\n"
    n_chars = len(golden["messages"][0]["content"])
    assert len(golden["prompt_tokens"]) < n_chars  # merges applied: fewer tokens than characters


def test_model_buffer_refuses_extra_and_missing_bytes():
    """The worker's download buffer: more bytes than announced, or too few, never reach the parser."""
    import pytest

    from engine import bridge

    buf = bridge.ModelBuffer(4)
    buf.write(b"GG")
    with pytest.raises(ValueError, match="model buffer holds 2 of 4 bytes"):
        bridge.load_model(buf)
    with pytest.raises(ValueError, match="received 5 bytes, more than the expected 4"):
        buf.write(b"UFx")
    assert buf.filled == 2 and bytes(buf.data) == b"GG\x00\x00"
