"""Generation loop: events, stop rules, UTF-8 streaming, timing, on a scripted fake model; and a
greedy run of the real Gemma 3 270M against the Hugging Face float32 reference (slow)."""

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.generate import SamplingParams, StopStringFilter, TokenEvent, generate

BOS, EOS, EOT = 256, 257, 258          # byte tokens are ids 0..255
WORD = 259                             # one multi-byte token: "hello"
VOCAB = 260
GREEDY = SamplingParams(temperature=0, max_tokens=100)


class ByteTokenizer:
    """Fake tokenizer: one token per byte, plus BOS/EOS/<end_of_turn> and one word token."""
    bos_id, eos_id, add_bos = BOS, EOS, True
    stop_ids = frozenset({EOS, EOT})
    vocab_size = VOCAB

    def token_bytes(self, token_id):
        if token_id < 256:
            return bytes([token_id])
        return {BOS: b"<bos>", EOS: b"<eos>", EOT: b"<end_of_turn>", WORD: b"hello"}[token_id]

    def encode(self, text, add_bos=None, parse_special=False):
        ids = list(text.encode("utf-8"))
        return [BOS] + ids if (self.add_bos if add_bos is None else add_bos) else ids

    def decode(self, ids):
        return b"".join(self.token_bytes(i) for i in ids if i not in (BOS, EOS)).decode(
            "utf-8", errors="replace")


class ScriptedModel:
    """Fake model: after its k-th forward call since reset the logits peak at script[k]
    (the runner-up, 1 lower, is script[k] + 1). Records every call."""

    def __init__(self, script, n_ctx=None):
        self.script = list(script)
        self.calls: list[list[int]] = []
        self.resets = 0
        self.pos = 0
        self.k = 0
        if n_ctx is not None:
            self.n_ctx = n_ctx

    def reset(self):
        self.resets += 1
        self.pos = 0
        self.k = 0

    def forward(self, tokens):
        self.calls.append(list(tokens))
        self.pos += len(tokens)
        logits = np.zeros(VOCAB, np.float32)
        tok = self.script[min(self.k, len(self.script) - 1)]
        logits[(tok + 1) % VOCAB] = 9.0
        logits[tok] = 10.0
        self.k += 1
        return logits


def script_for(text, end=(EOS,)):
    return list(text.encode("utf-8")) + list(end)


def run(model, params=GREEDY, prompt=(BOS, 65), **kw):
    return list(generate(model, ByteTokenizer(), list(prompt), params, **kw))


def test_events_greedy_utf8_and_eos():
    text = "Hi é€😀!"                              # 2-, 3- and 4-byte characters, split per byte
    model = ScriptedModel(script_for(text))
    events = run(model)
    assert [e.kind for e in events] == ["prefill"] + ["token"] * len(text.encode()) + ["done"]
    done = events[-1]
    assert done.reason == "eos" and done.full_text == text
    assert "".join(e.text for e in events) == text
    assert all("\ufffd" not in e.text for e in events)            # no garbage mid-character
    assert [e.token_id for e in events[1:-1]] == list(text.encode())
    assert done.n_prompt == 2 and done.n_generated == len(text.encode()) + 1   # EOS counted
    # the first token event of "é" (0xC3) prints nothing, the second prints the character
    i = 1 + len("Hi ")
    assert (events[i].text, events[i + 1].text) == ("", "é")


def test_prefill_is_one_call_then_one_token_per_call():
    model = ScriptedModel(script_for("abc"))
    prompt = [BOS, 10, 20, 30]
    events = run(model, prompt=prompt)
    assert model.resets == 1
    assert model.calls[0] == prompt
    assert model.calls[1:] == [[ord("a")], [ord("b")], [ord("c")]]   # EOS is never fed back
    assert events[0].kind == "prefill" and events[0].n_prompt == 4
    assert events[-1].n_generated == 4


def test_reset_false_continues_the_cache():
    model = ScriptedModel(script_for("xy"))
    model.pos = 7
    run(model, reset=False, prompt=[1, 2])
    assert model.resets == 0 and model.pos == 7 + 2 + 2


def test_stop_id_other_than_eos_is_not_shown():
    events = run(ScriptedModel(script_for("ok", end=(EOT,))))
    assert events[-1].reason == "eos" and events[-1].full_text == "ok"


def test_max_tokens_is_length():
    model = ScriptedModel([WORD] * 50)
    events = run(model, SamplingParams(temperature=0, max_tokens=5))
    done = events[-1]
    assert done.reason == "length" and done.n_generated == 5
    assert done.full_text == "hello" * 5
    assert len(model.calls) == 5                  # prefill + 4 decodes; the 5th token not fed
    assert run(ScriptedModel([WORD]), SamplingParams(temperature=0, max_tokens=0))[-1].n_generated == 0


def test_full_kv_cache_stops_with_length():
    model = ScriptedModel([WORD] * 50, n_ctx=5)
    done = run(model, prompt=[BOS, 1, 2])[-1]
    assert done.reason == "length" and model.pos == 5 and done.n_generated == 3


def test_stop_string_cut_and_not_shown():
    model = ScriptedModel(script_for("abc\n\nUser: more text"))
    events = run(model, SamplingParams(temperature=0, stop=("\n\nUser:", "zzz")))
    done = events[-1]
    assert done.reason == "stop" and done.full_text == "abc" and done.text == ""
    assert "".join(e.text for e in events) == "abc"
    assert events[-2].token_id == ord(":")        # the token completing the stop string
    assert len(model.calls) == 1 + len("abc\n\nUser")   # nothing decoded after the stop


def test_earliest_stop_string_wins():
    events = run(ScriptedModel(script_for("one STOP2 two STOP1")),
                 SamplingParams(temperature=0, stop=("STOP1", "STOP2")))
    assert events[-1].full_text == "one "


def test_possible_stop_prefix_is_held_back_then_released():
    events = run(ScriptedModel(script_for("aXYb")), SamplingParams(temperature=0, stop=("XYZ",)))
    assert [e.text for e in events if e.kind == "token"] == ["a", "", "", "XYb"]
    events = run(ScriptedModel(script_for("ab\n")), SamplingParams(temperature=0, stop=("\n\n",)))
    assert events[-2].text == "" and events[-1].text == "\n"   # released by 'done'
    assert events[-1].full_text == "ab\n" and events[-1].reason == "eos"


def test_dangling_partial_character_becomes_replacement_char():
    model = ScriptedModel([ord("a"), 0xE2, 0x82, EOS])       # "€" cut after 2 of 3 bytes
    done = run(model)[-1]
    assert done.text == "\ufffd" and done.full_text == "a\ufffd"


def test_should_stop_aborts_between_tokens():
    model = ScriptedModel([WORD] * 50)
    seen = []
    gen = generate(model, ByteTokenizer(), [BOS], GREEDY, should_stop=lambda: len(seen) >= 3)
    for e in gen:
        if e.kind == "token":
            seen.append(e)
    assert e.kind == "done" and e.reason == "abort" and e.n_generated == 3
    assert len(model.calls) == 3                  # aborted before feeding the 3rd token


def test_closing_the_generator_stops_it():
    model = ScriptedModel([WORD] * 50)
    gen = generate(model, ByteTokenizer(), [BOS], GREEDY)
    for e in gen:
        if e.kind == "token":
            break
    gen.close()
    assert len(model.calls) == 1


def test_timings_exclude_consumer_time(monkeypatch):
    """Prefill and decode are timed around the model only; a fake clock makes it exact."""
    clock = [0.0]
    monkeypatch.setattr("engine.generate.time.perf_counter", lambda: clock[0])

    class SlowModel(ScriptedModel):
        def forward(self, tokens):
            clock[0] += 0.002 * len(tokens)               # 2 ms per token of model time
            return super().forward(tokens)
    model = SlowModel([WORD] * 50)
    events = []
    for e in generate(model, ByteTokenizer(), [BOS] + [1] * 9, SamplingParams(temperature=0, max_tokens=6)):
        events.append(e)
        clock[0] += 0.03                              # a slow consumer (a browser repaint)
    done = events[-1]
    assert done.prefill_seconds == pytest.approx(0.02)  # 10 prompt tokens x 2 ms
    assert done.decode_seconds == pytest.approx(0.01)   # 5 forwards x 2 ms, not 6 x 30 ms
    assert done.prefill_tok_s == pytest.approx(10 / done.prefill_seconds)
    assert done.decode_tok_s == pytest.approx(6 / done.decode_seconds)
    assert events[0].prefill_seconds == done.prefill_seconds


class NoisyModel(ScriptedModel):
    """Fake model with a broad, position-dependent distribution, for seeded sampling."""

    def forward(self, tokens):
        self.calls.append(list(tokens))
        self.pos += len(tokens)
        rng = np.random.default_rng(self.pos)
        return rng.standard_normal(VOCAB).astype(np.float32)


def test_seeded_sampling_is_reproducible():
    params = SamplingParams(temperature=1.0, top_k=50, seed=123, max_tokens=40)
    a = [e.token_id for e in run(NoisyModel([0]), params)]
    b = [e.token_id for e in run(NoisyModel([0]), params)]
    c = [e.token_id for e in run(NoisyModel([0]), SamplingParams(**{**params.__dict__, "seed": 124}))]
    assert a == b and a != c


def test_repeat_penalty_sees_the_prompt():
    model_logits = np.zeros(VOCAB, np.float32)
    model_logits[[ord("a"), ord("b")]] = [5.0, 4.0]

    class Fixed(ScriptedModel):
        def forward(self, tokens):
            self.pos += len(tokens)
            return model_logits

    penal = SamplingParams(temperature=0, max_tokens=1, repeat_penalty=1.5)
    assert run(Fixed([0]), penal, prompt=[BOS, ord("a")])[-1].full_text == "b"
    assert run(Fixed([0]), penal, prompt=[BOS, ord("c")])[-1].full_text == "a"


def test_bad_arguments():
    with pytest.raises(ValueError, match="prompt_tokens is empty"):
        run(ScriptedModel([EOS]), prompt=[])
    with pytest.raises(TypeError, match="tuple of strings"):
        SamplingParams(stop="\n")
    with pytest.raises(ValueError, match="non-empty"):
        SamplingParams(stop=("",))


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet="abXY\n", max_size=30),
       stops=st.lists(st.text(alphabet="abXY\n", min_size=1, max_size=4), max_size=3),
       cuts=st.lists(st.integers(0, 30), max_size=10))
def test_stop_filter_equals_cutting_the_whole_text(text, stops, cuts):
    # streaming in arbitrary chunks releases exactly the text before the first stop string
    f = StopStringFilter(stops)
    bounds = sorted({0, len(text), *[c for c in cuts if c <= len(text)]})
    out, hit = [], False
    for a, b in zip(bounds, bounds[1:]):
        piece, hit = f.feed(text[a:b])
        out.append(piece)
        if hit:
            break
    if not hit:
        piece, hit = f.flush()
        out.append(piece)
    first = min([i for i in (text.find(s) for s in stops) if i >= 0], default=None)
    assert "".join(out) == (text if first is None else text[:first])
    assert hit == (first is not None)


# -- the real model ---------------------------------------------------------------------------

GEMMA = Path(os.environ.get("MOTE_GEMMA_PATH", "/tmp/gemma/gemma-3-270m-q4_k_m.gguf"))
from tests.paths import shared_file  # noqa: E402

REFERENCE = shared_file("reference/gemma3-270m.json")


@pytest.mark.slow
def test_greedy_gemma_matches_reference_until_first_near_tie():
    if not GEMMA.is_file():
        pytest.skip(f"Gemma 3 270M not found at {GEMMA} (set MOTE_GEMMA_PATH)")
    model_mod = pytest.importorskip("engine.model")
    gguf_mod = pytest.importorskip("engine.gguf")
    tok_mod = pytest.importorskip("engine.tokenizer")
    ref = json.loads(REFERENCE.read_text())["exact_reference"]["prompts"]["The capital of France is"]
    # compare only up to the first step whose top-2 margin is small (a near tie, 0.05 logits)
    n = next(i for i, m in enumerate(ref["step_margins"]) if m < 0.05)
    gguf = gguf_mod.open_gguf(GEMMA)
    tokenizer = tok_mod.Tokenizer.from_metadata(gguf.metadata)
    model = model_mod.load_model(gguf)
    events = list(generate(model, tokenizer, ref["prompt_tokens"],
                           SamplingParams(temperature=0, max_tokens=n)))
    tokens = [e.token_id for e in events if e.kind == "token"]
    assert tokens == ref["greedy_tokens"][:n]
    done = events[-1]
    assert done.reason == "length" and done.full_text == tokenizer.decode(tokens)
    assert ref["greedy_text"].startswith(done.full_text)
    print(f"\ngemma greedy: prefill {done.prefill_tok_s:.1f} tok/s, decode {done.decode_tok_s:.2f} tok/s")
