"""Chat templates: Jinja2 and pure-Python renderers agree; family choice; no-jinja2 fallback;
tokenization of a Gemma chat against llama.cpp's token ids."""

import json
import os
import sys
from pathlib import Path

import pytest

from engine import chat
from engine.chat import FAMILIES, ChatTemplate, ChatTemplateError, chat_tokens, choose_family

CONVERSATIONS = [
    [],
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "  padded\n  "}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": " b "},
     {"role": "user", "content": "c\n\nd"}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "héllo 😀 {{ x }} {% y %}"},
     {"role": "assistant", "content": "<b>&amp;</b>"}, {"role": "user", "content": "again"}],
    [{"role": "user", "content": [{"type": "text", "text": "part one, "},
                                  {"type": "image"}, {"type": "text", "text": "part two"}]}],
]

TOKENS = {"gemma": ("<bos>", "<eos>"), "chatml": ("", "<|endoftext|>"),
          "llama3": ("<|begin_of_text|>", "<|eot_id|>"), "llama2": ("<s>", "</s>"),
          "plain": ("", "")}


def family_template(name):
    bos, eos = TOKENS[name]
    return ChatTemplate(name, None, bos, eos, "test")


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("conv", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("gen", [True, False])
def test_jinja_and_python_renderers_agree(family, conv, gen):
    tmpl = family_template(family)
    messages = CONVERSATIONS[conv]
    try:
        want = tmpl.render(messages, gen, engine="jinja")
    except ChatTemplateError as e:
        with pytest.raises(ChatTemplateError) as py_err:
            tmpl.render(messages, gen, engine="python")
        assert str(py_err.value) == str(e)
        return
    assert tmpl.render(messages, gen, engine="python") == want


@pytest.mark.parametrize("family", ["gemma", "llama2"])
def test_alternation_is_enforced_by_both_paths(family):
    bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    for engine in ("jinja", "python"):
        with pytest.raises(ChatTemplateError, match="alternate"):
            family_template(family).render(bad, engine=engine)


def test_gemma_format_is_the_documented_one():
    # Gemma's documented turn format: <start_of_turn>{user|model}\n ... <end_of_turn>\n, a system
    # prompt folded into the first user turn, and the reply opened with <start_of_turn>model\n
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}]
    assert family_template("gemma").render(msgs) == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n"
        "<start_of_turn>model\n")


def test_plain_and_chatml_shapes():
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
    assert family_template("plain").render(msgs) == "S\n\nUser: Q\nAssistant:"
    assert family_template("chatml").render(msgs) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n")
    assert family_template("plain").stop == ("\nUser:",)


def test_choose_family():
    assert choose_family("gemma3", ["<bos>"], "<bos>") == "gemma"
    assert choose_family("gemma2") == "gemma"
    assert choose_family("qwen2") == "chatml"
    assert choose_family("llama", ["<s>", "<|im_start|>"], "<s>") == "chatml"    # SmolLM-style
    assert choose_family("llama", ["<|begin_of_text|>", "<|start_header_id|>"]) == "llama3"
    assert choose_family("llama", ["<s>", "</s>"], "<s>") == "llama2"
    assert choose_family("llama", ["<|endoftext|>"], "") == "plain"
    assert choose_family("gpt2", ["<|endoftext|>"]) == "plain"


def test_from_metadata_without_template():
    md = {"general.architecture": "gemma3", "tokenizer.ggml.tokens": ["<pad>", "<eos>", "<bos>"],
          "tokenizer.ggml.bos_token_id": 2, "tokenizer.ggml.eos_token_id": 1}
    t = ChatTemplate.from_metadata(md)
    assert (t.family, t.source, t.bos_token, t.eos_token) == ("gemma", None, "<bos>", "<eos>")
    assert "no chat template" in t.note and "gemma" in t.note
    assert t.stop == ("<end_of_turn>",)


def test_from_parsed_gguf_probes_its_vocabulary():
    """A parsed file's token list (a StringTable, engine/strtable.py) is probed like a list: a
    llama-arch fine-tune with Llama 3's header tokens and no template gets the llama3 format."""
    import io

    from engine.gguf import GGUFFile, ValueType as V, write_gguf

    tokens = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "a"]
    buf = io.BytesIO()
    write_gguf(buf, {"general.architecture": (V.STRING, "llama"),
                     "tokenizer.ggml.tokens": (V.ARRAY, (V.STRING, tokens)),
                     "tokenizer.ggml.bos_token_id": (V.UINT32, 0)}, [])
    t = ChatTemplate.from_metadata(GGUFFile(buf.getvalue()).metadata)
    assert (t.family, t.bos_token) == ("llama3", "<|begin_of_text|>")


HF_STYLE = (
    "{%- set ns = namespace(n=0) -%}"
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% if m.role not in ['user', 'assistant'] %}{{ raise_exception('bad role ' + m.role) }}{% endif %}"
    "{% if loop.index > 3 %}{% break %}{% endif %}"
    "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
    "{% set ns.n = ns.n + 1 %}"
    "{% endfor %}"
    "{{ {'n': ns.n, 'q': '<&>'} | tojson }}|{{ strftime_now('%Y') | length }}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_gguf_template_with_hf_globals():
    t = ChatTemplate.create(HF_STYLE, "qwen2", bos_token="", eos_token="<|im_end|>")
    assert t.source == HF_STYLE and t.family == "chatml"
    msgs = [{"role": "user", "content": f"m{i}"} for i in range(5)]
    out = t.render(msgs, engine="jinja")
    assert out == ("<|im_start|>user\nm0<|im_end|>\n<|im_start|>user\nm1<|im_end|>\n"
                   "<|im_start|>user\nm2<|im_end|>\n" '{"n": 3, "q": "<&>"}|4'
                   "<|im_start|>assistant\n")
    with pytest.raises(ChatTemplateError, match="bad role tool"):
        t.render([{"role": "tool", "content": "x"}], engine="jinja")


def test_template_is_sandboxed():
    evil = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(ChatTemplateError, match="chat template failed"):
        ChatTemplate.create(evil, "llama").render([], engine="jinja")
    with pytest.raises(ChatTemplateError, match="chat template failed"):
        ChatTemplate.create("{% for %}", "llama").render([], engine="jinja")


@pytest.fixture
def no_jinja(monkeypatch):
    for name in [m for m in sys.modules if m == "jinja2" or m.startswith("jinja2.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "jinja2", None)     # import jinja2 -> ImportError


def test_without_jinja2_auto_uses_python(no_jinja):
    assert not chat.jinja_available()
    msgs = CONVERSATIONS[5]
    for family in FAMILIES:
        out = family_template(family).render(msgs)            # engine="auto"
        assert out == FAMILIES[family].render(chat.normalize_messages(msgs), True, *TOKENS[family])
    # a GGUF template is mapped to its family by its markers; an unknown one needs jinja2
    gemma_like = ChatTemplate.create("{{ '<start_of_turn>' }} custom", "gemma3", bos_token="<bos>")
    assert gemma_like.render([{"role": "user", "content": "x"}]) == \
        "<bos><start_of_turn>user\nx<end_of_turn>\n<start_of_turn>model\n"
    with pytest.raises(ChatTemplateError, match="needs jinja2"):
        ChatTemplate.create("{{ 'Q:' }}", "gpt2").render([{"role": "user", "content": "x"}])
    with pytest.raises(ChatTemplateError, match="not installed"):
        family_template("gemma").render([], engine="jinja")


def test_bad_messages_are_clear_errors():
    with pytest.raises(ValueError, match="message 0 must be a mapping with 'role' and 'content'"):
        family_template("plain").render([{"content": "x"}])
    with pytest.raises(ValueError, match="content must be a string"):
        family_template("plain").render([{"role": "user", "content": 3}])
    with pytest.raises(ValueError, match="engine 'x'"):
        family_template("plain").render([], engine="x")


class FakeTokenizer:
    bos_id = 1
    add_bos = True

    def __init__(self, specials):
        self.specials = specials                      # text -> id

    def encode(self, text, add_bos=None, parse_special=False):
        assert add_bos is False and parse_special is True
        ids, i = [], 0
        while i < len(text):
            for s, sid in self.specials.items():
                if text.startswith(s, i):
                    ids.append(sid)
                    i += len(s)
                    break
            else:
                ids.append(1000 + ord(text[i]))
                i += 1
        return ids


def test_chat_tokens_adds_bos_once():
    tok = FakeTokenizer({"<bos>": 1, "<start_of_turn>": 5, "<end_of_turn>": 6})
    msgs = [{"role": "user", "content": "Hi"}]
    ids = chat_tokens(tok, family_template("gemma"), msgs)
    assert ids[:2] == [1, 5] and ids.count(1) == 1
    ids = chat_tokens(tok, family_template("chatml"), msgs)   # chatml writes no BOS text
    assert ids[0] == 1 and ids.count(1) == 1
    tok.add_bos = False
    assert chat_tokens(tok, family_template("chatml"), msgs)[0] != 1


GEMMA = Path(os.environ.get("MOTE_GEMMA_PATH", "/tmp/gemma/gemma-3-270m-q4_k_m.gguf"))
from tests.paths import shared_file  # noqa: E402

REFERENCE = shared_file("reference/gemma3-270m.json")


def test_gemma_chat_tokens_match_llama_cpp():
    if not GEMMA.is_file():
        pytest.skip(f"Gemma 3 270M not found at {GEMMA} (set MOTE_GEMMA_PATH)")
    gguf_mod = pytest.importorskip("engine.gguf")
    tok_mod = pytest.importorskip("engine.tokenizer")
    md = gguf_mod.open_gguf(GEMMA).metadata
    tmpl = ChatTemplate.from_metadata(md)
    assert tmpl.family == "gemma" and tmpl.source is None       # the base model has no template
    tok = tok_mod.Tokenizer.from_metadata(md)
    cases = json.loads(REFERENCE.read_text())["llama_cpp"]["tokenize_special"]["cases"]
    turn = "<start_of_turn>user\nHi<end_of_turn>"
    ids = chat_tokens(tok, tmpl, [{"role": "user", "content": "Hi"}], add_generation_prompt=False)
    newline = cases[turn][2]                                    # llama.cpp's id of "\n"
    assert ids == [tok.bos_id] + cases[turn] + [newline]


# ---- hostile templates (the template is text from a model file: untrusted) -----------------------

HOSTILE = {
    "multiply to 2 GB": "{{ ('a' * 2000000000)|length }}",
    "multiply, int first": "{{ (2000000000 * 'a')|length }}",
    "lipsum": "{{ lipsum(10**7) }}",
    "nested ranges": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "nested loops over strings": "{% for a in 'x' * 100000 %}{% for b in 'y' * 100000 %}{% endfor %}{% endfor %}",
    "doubling with ~": "{% set ns = namespace(s='a') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
                       "{% endfor %}{{ ns.s|length }}",
    "doubling with +": "{% set ns = namespace(s='a') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}"
                       "{% endfor %}{{ ns.s|length }}",
    "doubling by recursion": "{% macro d(s, n) %}{% if n %}{{ d(s ~ s, n - 1) }}{% else %}{{ s|length }}"
                             "{% endif %}{% endmacro %}{{ d('a', 40) }}",
    "endless recursion": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "str.center": "{{ 'x'.center(1000000000) }}",
    "center filter": "{{ 'x'|center(1000000000) }}",
    "printf width": "{{ '%999999999s' % 'x' }}",
    "format filter width": "{{ '%999999999s'|format('x') }}",
    "str.format width": "{{ '{:>999999999}'.format(1) }}",
    "replace blow-up": "{{ ('a' * 100000)|replace('a', 'a' * 100000) }}",
    "str.replace blow-up": "{{ ('a' * 100000).replace('a', 'a' * 100000) }}",
    "huge power": "{{ 2 ** 1000000000 }}",
    "endless output": "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",
    "class escape": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "globals escape": "{{ cycler.__init__.__globals__ }}",
    "joiner internals": "{{ joiner.__init__.__globals__['os'] }}",
    "never closes": "{% for m in messages %}{{ m.content }}",
    "indent blow-up": "{{ ('a\\n' * 100000)|indent(100000) }}",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_template_is_stopped_with_a_clear_error(name):
    """Each ends in a ChatTemplateError (a ValueError) well within memory and time bounds; a hang is
    caught by a generous watchdog (SIGALRM), not by asserting on time."""
    import signal
    import tracemalloc

    def hung(*_):
        raise AssertionError(f"template {name!r} still running after 60 s")

    template = ChatTemplate.create(HOSTILE[name], "llama")
    signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    tracemalloc.start()
    try:
        with pytest.raises(ChatTemplateError, match="chat template"):
            template.render([{"role": "user", "content": "hi"}])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        signal.alarm(0)
    assert peak < 64 << 20, f"{name}: peak {peak >> 20} MiB"


def test_bounds_leave_long_real_conversations_alone():
    """The bounds scale with the messages: a 3 MB conversation through a ChatML template renders."""
    from engine.chat import FAMILIES, MAX_TEMPLATE_CHARS

    long = "word " * (MAX_TEMPLATE_CHARS // 5 + 1000)
    messages = [{"role": "user", "content": long}, {"role": "assistant", "content": long},
                {"role": "user", "content": long}]
    text = ChatTemplate.create(FAMILIES["chatml"].jinja, "qwen2").render(messages)
    assert text.count(long) == 3
