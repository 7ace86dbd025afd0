"""engine/bridge.py in CPython: the worker's entry points, driven the way static/worker.js drives them.

Reference: engine.generate.generate() called directly on a model loaded from the same bytes. The
bridge must give the same greedy tokens step by step, survive an abort (close mid-generation) with
the model still usable, and its KV-cache reuse for a follow-up turn must give the same tokens as a
fresh session that recomputes the whole prompt.
"""

from __future__ import annotations

import pytest

pytest.importorskip("gguf")
from engine import bridge  # noqa: E402
from engine.generate import SamplingParams, generate  # noqa: E402
from engine.gguf import GGUFFile  # noqa: E402
from engine.model import load_model  # noqa: E402
from engine.tokenizer import Tokenizer  # noqa: E402
from tests.tiny_models import write_tiny  # noqa: E402

GREEDY = {"temperature": 0, "max_tokens": 12}


@pytest.fixture(scope="module")
def tiny_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "tiny.gguf"
    write_tiny(path, "llama", seed=3)
    return path.read_bytes()


def drive(gen) -> list[dict]:
    """What the worker does: step() until None."""
    events = []
    while (ev := gen.step()) is not None:
        events.append(ev)
    return events


def reference_tokens(data: bytes, prompt: str, max_tokens: int) -> list[int]:
    g = GGUFFile(data)
    model, tok = load_model(g), Tokenizer.from_metadata(g.metadata)
    events = generate(model, tok, tok.encode(prompt), SamplingParams(temperature=0, max_tokens=max_tokens))
    return [e.token_id for e in events if e.kind == "token"]


def test_steps_match_engine_generate(tiny_bytes):
    info = bridge.load_model(tiny_bytes)
    assert info["architecture"] == "llama" and info["n_bytes"] == len(tiny_bytes)
    events = drive(bridge.start_generation({"prompt": "The cat", "params": GREEDY}))
    kinds = [e["type"] for e in events]
    assert kinds[0] == "prefill" and kinds[-1] == "done" and set(kinds[1:-1]) == {"token"}
    tokens = [e["token_id"] for e in events if e["type"] == "token"]
    assert tokens == reference_tokens(tiny_bytes, "The cat", 12)
    assert events[-1]["token_ids"] == tokens
    assert [e["n"] for e in events if e["type"] == "token"] == list(range(1, len(tokens) + 1))


def test_loaded_model_is_what_the_load_returned_until_the_model_is_dropped(tiny_bytes):
    """What a worker started from a model snapshot reports (bridge.loaded_model), and what it frees
    when asked for another model (drop_model): then nothing is loaded and generation is refused."""
    info = bridge.load_model(tiny_bytes, None, "compact")
    assert bridge.loaded_model() == info and info["layout"] == "compact"
    bridge.drop_model()
    assert bridge.loaded_model() is None
    with pytest.raises(RuntimeError, match="no model loaded"):
        bridge.start_generation({"prompt": "The cat", "params": GREEDY})


def test_abort_keeps_the_model(tiny_bytes):
    bridge.load_model(tiny_bytes)
    gen = bridge.start_generation({"prompt": "The cat", "params": {**GREEDY, "max_tokens": 50}})
    seen = [gen.step() for _ in range(4)]  # prefill + 3 tokens, then the user presses Stop
    gen.close()
    assert gen.step() is None and seen[-1]["type"] == "token"
    again = drive(bridge.start_generation({"prompt": "The cat", "params": GREEDY}))
    assert [e["token_id"] for e in again if e["type"] == "token"] == reference_tokens(tiny_bytes, "The cat", 12)


def test_follow_up_turn_reuses_kv_cache_with_same_tokens(tiny_bytes):
    bridge.load_model(tiny_bytes)
    # A random model often emits bytes that are not valid UTF-8 text, and then the answer's text
    # cannot be re-encoded to the same ids; pick the first prompt whose short answer is ASCII.
    for i in range(40):
        prompt = f"The cat {i}"
        first = drive(bridge.start_generation({"prompt": prompt, "params": {**GREEDY, "max_tokens": 3}}))
        answer = "".join(e.get("text", "") for e in first)
        if answer.isascii() and len(answer.encode()) == 3:
            break
    else:
        pytest.fail("no prompt gave an ASCII answer")
    follow = prompt + answer + " and the dog"
    gen = bridge.start_generation({"prompt": follow, "params": GREEDY})
    assert gen.reused > 0  # the cached prompt + answer were not recomputed
    reused = [e["token_id"] for e in drive(gen) if e["type"] == "token"]
    assert reused == reference_tokens(tiny_bytes, follow, 12)


def test_chat_prompt_uses_the_model_template(tiny_bytes):
    bridge.load_model(tiny_bytes)
    text = bridge.chat_prompt([{"role": "user", "content": "hi"}])
    assert "hi" in text and text != "hi"


@pytest.mark.parametrize("params, message", [
    ({"temperature": "hot"}, "must be a number"),
    ({"top_k": 2.5}, "must be an integer"),
    ({"evil": 1}, "unknown sampling setting 'evil'"),
])
def test_bad_sampling_settings_are_refused_by_name(tiny_bytes, params, message):
    bridge.load_model(tiny_bytes)
    with pytest.raises(ValueError, match=message):
        bridge.start_generation({"prompt": "x", "params": params})


def test_runtime_info_in_cpython():
    info = bridge.runtime_info()
    assert info["platform"] != "emscripten" and len(info["check"]) == 6
    chat = bridge.chat_check()
    assert chat["chat_check"].startswith("<bos><start_of_turn>user\nHi <b>&</b>")


def test_regenerate_and_edit_reuse_the_shared_prefix(tiny_bytes):
    """Asking again (regenerate) or changing the end of the prompt (an edited turn) recomputes only
    from where the prompts differ, and answers exactly as a fresh model would."""
    bridge.load_model(tiny_bytes)
    drive(bridge.start_generation({"prompt": "The cat sat on the mat", "params": GREEDY}))
    again = bridge.start_generation({"prompt": "The cat sat on the mat", "params": GREEDY})
    n_prompt = len(again.prompt_tokens)
    assert again.reused == n_prompt - 1  # all but the last prompt token, which must run for logits
    assert [e["token_id"] for e in drive(again) if e["type"] == "token"] == \
        reference_tokens(tiny_bytes, "The cat sat on the mat", 12)
    edited = bridge.start_generation({"prompt": "The cat sat on the rug", "params": GREEDY})
    assert 0 < edited.reused < len(edited.prompt_tokens) - 1
    assert [e["token_id"] for e in drive(edited) if e["type"] == "token"] == \
        reference_tokens(tiny_bytes, "The cat sat on the rug", 12)


def test_reusable_prefix_rules():
    from engine.session import reusable_prefix

    assert reusable_prefix([1, 2, 3], [1, 2, 3, 4], 3) == 3         # next turn: an extension
    assert reusable_prefix([1, 2, 3], [1, 2, 3], 3) == 2            # the same prompt: rerun the last token
    assert reusable_prefix([1, 2, 3], [1, 9, 3, 4], 3) == 1         # an edit after the first token
    assert reusable_prefix([1, 2, 3], [1, 2, 3, 4], 2) == 0         # the cache holds something else
    assert reusable_prefix([1, 2, 3], [1, 9], 3, rewind=False) == 0  # atome: extensions only
    assert reusable_prefix([1, 2, 3], [1, 2, 3, 4], 3, rewind=False) == 3
    assert reusable_prefix([1, 2, 3], [1, 2, 9], 3, floor=2) == 2    # a ring's floor: cut back to it
    assert reusable_prefix([1, 2, 3], [1, 9], 3, floor=2) == 0       # below it: compute everything

def test_events_count_reused_tokens_and_reset_forgets_the_conversation(tiny_bytes):
    """prefill and done say how much of the prompt came from the KV cache; after reset() ("New
    chat") the same prompt is computed whole again, and answers the same."""
    bridge.load_model(tiny_bytes)
    first = drive(bridge.start_generation({"prompt": "The cat sat", "params": GREEDY}))
    assert first[0]["n_reused"] == 0 and first[-1]["n_reused"] == 0
    again = drive(bridge.start_generation({"prompt": "The cat sat", "params": GREEDY}))
    assert again[0]["n_reused"] == again[0]["n_prompt"] - 1 == again[-1]["n_reused"]
    bridge.reset()
    fresh = drive(bridge.start_generation({"prompt": "The cat sat", "params": GREEDY}))
    assert fresh[0]["n_reused"] == 0 and fresh[-1]["n_prompt"] == first[-1]["n_prompt"]
    assert fresh[-1]["token_ids"] == first[-1]["token_ids"] == again[-1]["token_ids"]


def test_prompt_longer_than_the_context_is_refused_before_any_work(tmp_path):
    """A clear error naming both sizes, at start (the page shows it); a prompt that fits but leaves
    little room stops with reason "length" when the cache is full."""
    path = write_tiny(tmp_path / "short.gguf", "llama", ctx=64)
    bridge.load_model(path.read_bytes())
    with pytest.raises(ValueError, match=r"the prompt is \d+ tokens but the context holds 64"):
        bridge.start_generation({"prompt": "word " * 100, "params": GREEDY})
    n_prompt = len(bridge._session.prompt_tokens({"prompt": "word " * 4}))
    assert n_prompt < 64
    done = drive(bridge.start_generation({"prompt": "word " * 4, "params": {"temperature": 0, "max_tokens": 500}}))[-1]
    assert done["reason"] == "length" and n_prompt + done["n_generated"] <= 64 + 1


def test_steps_batches_the_same_events_as_step(tiny_bytes):
    """steps(budget_ms): the events step() gives, several per call (at least one), ending at done."""
    bridge.load_model(tiny_bytes)
    one_by_one = drive(bridge.start_generation({"prompt": "The cat", "params": GREEDY}))
    bridge.reset()
    gen = bridge.start_generation({"prompt": "The cat", "params": GREEDY})
    assert len(gen.steps(0)) == 1                  # a zero budget: exactly one step per call
    batched = [one_by_one[0]]
    while batch := gen.steps(1000):
        batched += batch
    assert batched[-1]["type"] == "done" and len(batched) == len(one_by_one)
    strip = lambda evs: [{k: v for k, v in e.items() if not k.endswith("tok_s")} for e in evs]  # noqa: E731
    assert strip(batched) == strip(one_by_one)


def test_reset_during_a_generation_is_not_undone_by_its_end(tiny_bytes):
    """New chat pressed while an answer streams: that answer's end records nothing, so the next
    request reuses nothing of the old conversation."""
    bridge.load_model(tiny_bytes)
    gen = bridge.start_generation({"prompt": "The cat sat", "params": GREEDY})
    first = [gen.step(), gen.step()]
    bridge.reset()
    rest = drive(gen)
    assert first[0]["type"] == "prefill" and rest[-1]["type"] == "done"
    again = drive(bridge.start_generation({"prompt": "The cat sat", "params": GREEDY}))
    assert again[0]["n_reused"] == 0


def test_load_model_reuses_the_header_budget_parsed(tmp_path, monkeypatch):
    """The worker asks header_budget about the file's first bytes, then loads the whole file: the
    header (Gemma's 262,144 token strings take ~0.45 s in Pyodide) is parsed once, when the loaded
    file starts with exactly those header bytes, and the model answers as one parsed afresh. A file
    whose header differs is parsed on its own."""
    a = tmp_path / "a.gguf"
    write_tiny(a, "llama", seed=3)
    data = a.read_bytes()
    at = data.index(b"tokenizer.ggml.model") + len(b"tokenizer.ggml.model") + 4 + 8   # (key, type, length)
    assert data[at : at + 5] == b"llama"
    other = data[:at] + b"LLAMA" + data[at + 5 :]   # the same size, another header
    parses = []
    real = GGUFFile._parse
    monkeypatch.setattr(GGUFFile, "_parse", lambda self: parses.append(type(self).__name__) or real(self))
    want = reference_tokens(data, "The cat sat", 8)
    parses.clear()
    assert bridge.header_budget(data, len(data)) is not None
    assert parses == ["ShardFile"]
    bridge.load_model(data)
    assert parses == ["ShardFile"]                                    # no second parse
    got = [e["token_id"] for e in drive(bridge.start_generation({"prompt": "The cat sat", "params": {**GREEDY, "max_tokens": 8}}))
           if e["type"] == "token"]
    assert got == want
    parses.clear()
    bridge.header_budget(data, len(data))
    with pytest.raises(Exception, match="LLAMA"):                     # parsed on its own: the fault named
        bridge.load_model(other)
    assert parses == ["ShardFile", "GGUFFile"]
    parses.clear()
    bridge.load_model(data)                                           # nothing kept from before
    assert parses == ["GGUFFile"]


def test_header_budget_of_a_filled_model_buffer(tmp_path, monkeypatch):
    """A worker that read the file into a ModelBuffer before the engine was up asks with the buffer
    itself: the same verdict as for the first bytes, no copy of the file, and load_model of that
    buffer reuses the parse."""
    path = tmp_path / "a.gguf"
    write_tiny(path, "llama", seed=3)
    data = path.read_bytes()
    buf = bridge.ModelBuffer(len(data), hash=False)
    for at in range(0, len(data), 4096):
        buf.write(data[at : at + 4096])
    want = bridge.header_budget(data[: len(data) // 2 + 1], len(data))
    parses = []
    real = GGUFFile._parse
    monkeypatch.setattr(GGUFFile, "_parse", lambda self: parses.append(type(self).__name__) or real(self))
    assert bridge.header_budget(buf, len(data)) == want and want["budget"] is not None
    bridge.load_model(buf)
    assert parses == ["ShardFile"]                                    # the buffer's header parse, reused
    half = bridge.ModelBuffer(len(data), hash=False)
    half.write(data[:40])
    assert bridge.header_budget(half, len(data)) is None              # not the whole header yet


def test_a_warm_up_leaves_the_next_answer_as_a_load_leaves_it(tiny_bytes):
    """The worker's warm-up once idle after ready (bridge.warm_up in slices, then end_warm_up, also
    mid-answer): the first request then reuses nothing and answers with the reference's tokens."""
    bridge.load_model(tiny_bytes)
    for budget_ms in (0, 0, 5, 5, 50):        # single steps, then answers run to their end and start again
        assert bridge.warm_up(budget_ms) is True
    bridge.end_warm_up()
    events = drive(bridge.start_generation({"prompt": "The cat", "params": GREEDY}))
    assert events[-1]["n_reused"] == 0
    assert [e["token_id"] for e in events if e["type"] == "token"] == reference_tokens(tiny_bytes, "The cat", 12)
    bridge.end_warm_up()                        # with nothing warming: harmless, the conversation kept
    follow = drive(bridge.start_generation({"prompt": "The cat" + events[-1]["full_text"] + " and",
                                            "params": GREEDY}))
    assert follow[-1]["n_reused"] > 0


def test_no_warm_up_over_a_conversation_or_for_a_large_model(tiny_bytes, monkeypatch):
    bridge.load_model(tiny_bytes)
    drive(bridge.start_generation({"prompt": "The cat", "params": GREEDY}))
    assert bridge.warm_up(5) is False           # the cache holds a conversation: it is left alone
    bridge.end_warm_up()
    bridge.reset()
    monkeypatch.setattr(bridge, "WARM_MAX_WEIGHTS", 10)
    assert bridge.warm_up(5) is False           # a model whose step is long warms within its first token
    monkeypatch.undo()
    assert bridge.warm_up(0) is True
    bridge.end_warm_up()


def test_a_warm_up_ends_with_its_model(tiny_bytes, tmp_path):
    """A load (or drop) while a throwaway answer is open: the next warm-up starts on the new model."""
    bridge.load_model(tiny_bytes)
    assert bridge.warm_up(0) is True            # an answer of the old model left open
    other = tmp_path / "other.gguf"
    write_tiny(other, "llama", seed=4)
    bridge.load_model(other.read_bytes())
    assert bridge.warm_up(0) is True
    assert bridge._warm.session is bridge._session
    bridge.end_warm_up()
    events = drive(bridge.start_generation({"prompt": "The cat", "params": GREEDY}))
    assert [e["token_id"] for e in events if e["type"] == "token"] == reference_tokens(other.read_bytes(), "The cat", 12)
    bridge.drop_model()
    assert bridge._warm is None and bridge.warm_up(5) is False


def test_a_warm_up_that_ends_on_a_finished_answer_leaves_nothing_cached(tiny_bytes, monkeypatch):
    """warm_up(0) runs one step per call: with 2-token answers the fourth call returns the done
    event, and the session then records the throwaway answer; end_warm_up must forget it."""
    monkeypatch.setattr(bridge, "WARM_TOKENS", 2)
    bridge.load_model(tiny_bytes)
    for _ in range(4):                          # prefill, token, token, done
        assert bridge.warm_up(0) is True
    bridge.end_warm_up()
    events = drive(bridge.start_generation({"prompt": bridge.WARM_PROMPT, "params": GREEDY}))
    assert events[-1]["n_reused"] == 0
    assert [e["token_id"] for e in events if e["type"] == "token"] == reference_tokens(tiny_bytes, bridge.WARM_PROMPT, 12)


def test_a_warm_up_the_context_cannot_hold_raises_and_clears(tiny_bytes):
    """The worker catches what warm_up raises (a console warning) and calls end_warm_up: nothing is
    left open, and the model answers a request it can hold."""
    tok = Tokenizer.from_metadata(GGUFFile(tiny_bytes).metadata)
    n_ctx = len(tok.encode("a")) + 2
    assert len(tok.encode(bridge.WARM_PROMPT)) >= n_ctx
    bridge.load_model(tiny_bytes, n_ctx=n_ctx)
    with pytest.raises(ValueError, match=f"context holds {n_ctx}"):
        bridge.warm_up(5)
    bridge.end_warm_up()
    assert bridge._warm is None and bridge._warm_turn == 0
    events = drive(bridge.start_generation({"prompt": "a", "params": {"temperature": 0, "max_tokens": 1}}))
    assert events[-1]["type"] == "done" and events[-1]["n_reused"] == 0


def chat_answer(messages: list[dict], data: bytes | None = None) -> list[dict]:
    """A chat request's events on the loaded model (on a fresh load of `data` first, when given)."""
    if data is not None:
        bridge.load_model(data)
    return drive(bridge.start_generation({"messages": messages, "params": GREEDY}))


def tokens_of(events: list[dict]) -> list[int]:
    return [e["token_id"] for e in events if e["type"] == "token"]


def test_the_chat_templates_opening_prefilled_while_idle_is_reused_with_the_same_tokens(tiny_bytes):
    """bridge.prefill_opening (the worker, once idle after ready): the template's opening goes into the
    KV cache in slices; a new chat's first request then reuses all of it and answers with the tokens
    of a load that prefilled nothing."""
    question = [{"role": "user", "content": "Why is the sky blue?"}]
    reference = chat_answer(question, tiny_bytes)
    assert reference[-1]["n_reused"] == 0
    bridge.load_model(tiny_bytes)
    opening = bridge._session.opening()
    assert len(opening) >= 2
    slices = 0
    while bridge.prefill_opening():
        slices += 1
    assert slices == -(-len(opening) // bridge.OPENING_CHUNK) - 1
    assert bridge._session._cached == opening and bridge.prefill_opening() is False   # done: nothing more
    events = chat_answer(question)
    assert events[-1]["n_reused"] == len(opening)
    assert tokens_of(events) == tokens_of(reference)
    assert bridge.prefill_opening() is False    # a conversation in the cache is left alone


def test_an_opening_cut_short_or_not_matching_still_answers_the_same(tiny_bytes, monkeypatch):
    """A request arriving after one slice reuses what is there; a reset mid-way starts the opening
    again; a system prompt of the page's own, or a raw prompt, reuses only what it shares with it."""
    monkeypatch.setattr(bridge, "OPENING_CHUNK", 1)
    question = [{"role": "user", "content": "Add two numbers."}]
    with_system = [{"role": "system", "content": "Answer in French."}, *question]
    reference, reference_system = chat_answer(question, tiny_bytes), chat_answer(with_system, tiny_bytes)

    bridge.load_model(tiny_bytes)
    assert bridge.prefill_opening() is True     # one token of several
    events = chat_answer(question)
    assert events[-1]["n_reused"] == 1 and tokens_of(events) == tokens_of(reference)

    bridge.load_model(tiny_bytes)
    bridge.prefill_opening(), bridge.prefill_opening()
    bridge.reset()                              # "New chat" between two slices
    while bridge.prefill_opening():
        pass
    events = chat_answer(question)
    assert events[-1]["n_reused"] == len(bridge._session.opening()) and tokens_of(events) == tokens_of(reference)

    bridge.load_model(tiny_bytes)
    while bridge.prefill_opening():
        pass
    events = chat_answer(with_system)
    assert events[-1]["n_reused"] <= len(bridge._session.opening())
    assert tokens_of(events) == tokens_of(reference_system)

    bridge.load_model(tiny_bytes)
    while bridge.prefill_opening():
        pass
    events = drive(bridge.start_generation({"prompt": "The cat", "params": GREEDY}))   # no template: BOS shared
    assert 0 < events[-1]["n_reused"] < len(bridge._session.opening())
    assert tokens_of(events) == reference_tokens(tiny_bytes, "The cat", 12)


def test_no_opening_to_prefill_beside_a_warm_up_or_without_a_model(tiny_bytes):
    bridge.drop_model()
    assert bridge.prefill_opening() is False
    bridge.load_model(tiny_bytes)
    assert bridge.warm_up(0) is True            # a throwaway answer is open: the opening waits for its end
    assert bridge.prefill_opening() is False
    bridge.end_warm_up()
    assert bridge.prefill_opening() in (True, False) and bridge._session._cached == bridge._session.opening()[: len(bridge._session._cached)]


def test_no_opening_where_the_context_would_hold_little_else(tiny_bytes):
    """An opening of half the context or more is not prefilled (a request could hardly use it)."""
    from engine.session import Session
    assert len(Session.load(tiny_bytes).opening()) >= 2
    small = Session.load(tiny_bytes, n_ctx=16)
    assert small.opening() == [] and small.prefill_opening(8) is False and small._cached == []
