"""`mote chat` and `mote generate --messages` on a tiny model: the conversation goes through the
same Session the page uses (KV cache reused across turns), survives a full context, and bad input
is a one-line error, not a traceback."""

import json

import pytest

from mote.cli import main
from mote.loader import load
from tests.tiny_models import write_tiny


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_tiny(tmp_path_factory.mktemp("cli") / "tiny.gguf", "llama", ctx=128)


def _chat(monkeypatch, capsys, model, lines, *extra):
    feed = iter(lines)

    def fake_input(prompt=""):
        try:
            return next(feed)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("builtins.input", fake_input)
    code = main(["chat", str(model), "-n", "6", "--temperature", "0", *extra])
    return code, capsys.readouterr()


def test_chat_turns_reuse_the_cache_and_commands_work(monkeypatch, capsys, model):
    code, out = _chat(monkeypatch, capsys, model, ["hello", "and more", "/system be brief", "again", "/reset", "x"])
    assert code == 0  # ended by end of input, not by an error
    reused = [int(line.split(", ")[2].split()[0]) for line in out.err.splitlines() if "prompt tokens reused" in line]
    assert len(reused) == 4 and reused[0] == 0 and reused[1] > 0  # turn 2 extends turn 1's cache
    assert "[system prompt set]" in out.err and "Traceback" not in out.err


def test_chat_survives_a_full_context(monkeypatch, capsys, model):
    """The oldest turns leave the conversation instead of the chat ending; a single message longer
    than the context is refused, and the chat goes on."""
    words = ["one two three four five six seven eight nine ten"] * 12
    code, out = _chat(monkeypatch, capsys, model, words + ["z " * 300, "still here"])
    assert code == 0
    assert "context full" in out.err and "not sent" in out.err
    assert out.err.count("prompt tokens reused") == len(words) + 1  # every other message was answered


def test_generate_messages_json(tmp_path, capsys, model):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]
    (tmp_path / "m.json").write_text(json.dumps(messages))
    assert main(["generate", str(model), "--messages", str(tmp_path / "m.json"), "-n", "5",
                 "--temperature", "0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"prompt_tokens", "tokens", "text", "stop_reason", "timings"}
    assert {"prefill_tok_s", "decode_tok_s", "prefill_seconds", "decode_seconds", "load_seconds",
            "n_drafted", "n_accepted"} <= set(out["timings"])
    session = load(model)
    assert out["prompt_tokens"] == session.prompt_tokens({"messages": messages})  # the template's rendering
    assert 1 <= len(out["tokens"]) <= 5


@pytest.mark.parametrize("content, message", [
    ("not json", "not JSON"),
    ('{"messages": []}', "expected a non-empty list"),
    ('[{"role": "user"}]', "expected a non-empty list"),
    ('[{"role": "user", "content": 5}]', "expected a non-empty list"),
])
def test_generate_bad_messages_file_is_one_clear_line(tmp_path, capsys, model, content, message):
    (tmp_path / "m.json").write_text(content)
    assert main(["generate", str(model), "--messages", str(tmp_path / "m.json")]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_sampling_value_fails_before_loading(capsys, monkeypatch):
    """--temperature nan is refused by name, before any model is read (the model path is not even valid)."""
    assert main(["generate", "/nonexistent.gguf", "-p", "x", "--temperature", "nan"]) == 1
    err = capsys.readouterr().err
    assert "temperature=nan must be a finite number" in err


def test_generate_no_lookup_gives_the_same_tokens(capsys, model):
    """Prompt lookup is on by default and changes no token; --no-lookup drafts nothing."""
    runs = {}
    for flag in ([], ["--no-lookup"]):
        assert main(["generate", str(model), "-p", "ab ab ab ab ab ab", "-n", "24", "--temperature", "0",
                     "--json", *flag]) == 0
        runs[bool(flag)] = json.loads(capsys.readouterr().out)
    assert runs[True]["tokens"] == runs[False]["tokens"]
    assert runs[True]["timings"]["n_drafted"] == runs[True]["timings"]["n_accepted"] == 0
