"""Chat formatting: a list of {role, content} messages -> prompt text (and token ids).

Sits before generate.py: `chat_tokens(tokenizer, template, messages)` gives the `prompt_tokens`
that `generate()` takes. Not part of the tensor pipeline; only the chat UIs and `mote chat` use it.

Where the template comes from:
1. The GGUF's own `tokenizer.chat_template` (a Hugging Face Jinja template), rendered with Jinja2
   in a sandbox with the globals HF and llama.cpp give templates: `messages`,
   `add_generation_prompt`, `bos_token`, `eos_token`, `raise_exception(msg)`,
   `strftime_now(fmt)`, and the `tojson` filter.
2. When the GGUF has none (Gemma 3 270M *base* has none), a built-in template of the model's
   family, chosen in this order:
     gemma   architecture name starts with "gemma"           <start_of_turn>user ... <end_of_turn>
     chatml  `<|im_start|>` in the vocabulary, or a qwen arch <|im_start|>user ... <|im_end|>
     llama3  `<|start_header_id|>` in the vocabulary          <|start_header_id|>user<|end_header_id|>
     llama2  llama/mistral arch with a "<s>" BOS              <s>[INST] ... [/INST]
     plain   anything else (tiny base models): a "User: ...\\nAssistant:" transcript
   The vocabulary probes come first for chatml/llama3 because many fine-tunes reuse the llama
   architecture name with those formats. A base model has never seen any chat format; the
   family's format is still the best guess, because its special tokens exist in the vocabulary.

Jinja2 is optional (Pyodide may not have it). Without it the built-in families are rendered by
pure-Python functions that give the same text as their Jinja sources (tests/test_chat.py renders
both and compares), and a GGUF template is mapped to its family by its marker tokens, which
reproduces the usual formats but not template-specific extras (default system prompts, tools).
`ChatTemplate.note` says which path was taken.
"""

from __future__ import annotations

import datetime
import functools
import json
import operator
import re
import sys
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from .strtable import StringTable

Message = Mapping[str, object]   # {"role": "system" | "user" | "assistant", "content": str | parts}


class ChatTemplateError(ValueError):
    """A template refused the conversation (raise_exception) or could not be rendered."""


# -- built-in templates: Jinja source + the equivalent pure-Python renderer, per family ---------
# Literal text sits inside {{ '...' }} so the output does not depend on trim_blocks/lstrip_blocks.

# Gemma: <bos><start_of_turn>user\n{system}\n\n{user}<end_of_turn>\n<start_of_turn>model\n{reply}...
# The assistant role is called "model"; a system message has no turn of its own, it is prepended
# to the first user turn; roles must alternate; contents are stripped.
_GEMMA_JINJA = (
    "{{ bos_token }}"
    "{%- set ns = namespace(prefix='', start=0) -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set ns.prefix = messages[0]['content'] + '\\n\\n' -%}{%- set ns.start = 1 -%}"
    "{%- endif -%}"
    "{%- for m in messages[ns.start:] -%}"
    "{%- if (m['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('gemma: roles must alternate user/assistant after an optional system message') }}"
    "{%- endif -%}"
    "{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else m['role']) + '\\n' }}"
    "{{ (ns.prefix if loop.first else '') + (m['content'] | trim) + '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)


def _render_gemma(messages: Sequence[Message], add_generation_prompt: bool,
                  bos_token: str, eos_token: str) -> str:
    """Python twin of _GEMMA_JINJA (same text, same error)."""
    out = [bos_token]
    prefix, rest = "", list(messages)
    if rest and rest[0]["role"] == "system":
        prefix, rest = str(rest[0]["content"]) + "\n\n", rest[1:]
    for i, m in enumerate(rest):
        if (m["role"] == "user") != (i % 2 == 0):
            raise ChatTemplateError(
                "gemma: roles must alternate user/assistant after an optional system message")
        role = "model" if m["role"] == "assistant" else str(m["role"])
        out.append(f"<start_of_turn>{role}\n")
        out.append((prefix if i == 0 else "") + str(m["content"]).strip() + "<end_of_turn>\n")
    if add_generation_prompt:
        out.append("<start_of_turn>model\n")
    return "".join(out)


# ChatML (Qwen, SmolLM, ...): <|im_start|>{role}\n{content}<|im_end|>\n per message, any roles,
# contents verbatim; no BOS text.
_CHATML_JINJA = (
    "{%- for m in messages -%}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def _render_chatml(messages: Sequence[Message], add_generation_prompt: bool,
                   bos_token: str, eos_token: str) -> str:
    """Python twin of _CHATML_JINJA."""
    out = [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
    if add_generation_prompt:
        out.append("<|im_start|>assistant\n")
    return "".join(out)


# Llama 3: <|begin_of_text|> then <|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>
# per message (contents stripped); the reply opens with an assistant header.
_LLAMA3_JINJA = (
    "{{ bos_token }}"
    "{%- for m in messages -%}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + (m['content'] | trim) + '<|eot_id|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif -%}"
)


def _render_llama3(messages: Sequence[Message], add_generation_prompt: bool,
                   bos_token: str, eos_token: str) -> str:
    """Python twin of _LLAMA3_JINJA."""
    out = [bos_token]
    for m in messages:
        out.append(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n"
                   f"{str(m['content']).strip()}<|eot_id|>")
    if add_generation_prompt:
        out.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
    return "".join(out)


# Llama 2: the system prompt goes inside the first [INST] block; every exchange is wrapped in
# bos ... eos; the prompt ends after [/INST], so add_generation_prompt changes nothing.
_LLAMA2_JINJA = (
    "{%- set ns = namespace(sys='', start=0) -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set ns.sys = '<<SYS>>\\n' + (messages[0]['content'] | trim) + '\\n<</SYS>>\\n\\n' -%}"
    "{%- set ns.start = 1 -%}"
    "{%- endif -%}"
    "{%- for m in messages[ns.start:] -%}"
    "{%- if (m['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('llama2: roles must alternate user/assistant after an optional system message') }}"
    "{%- endif -%}"
    "{%- if m['role'] == 'user' -%}"
    "{{ bos_token + '[INST] ' + (ns.sys if loop.first else '') + (m['content'] | trim) + ' [/INST]' }}"
    "{%- else -%}"
    "{{ ' ' + (m['content'] | trim) + ' ' + eos_token }}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


def _render_llama2(messages: Sequence[Message], add_generation_prompt: bool,
                   bos_token: str, eos_token: str) -> str:
    """Python twin of _LLAMA2_JINJA (same text, same error)."""
    sys_block, rest = "", list(messages)
    if rest and rest[0]["role"] == "system":
        sys_block = f"<<SYS>>\n{str(rest[0]['content']).strip()}\n<</SYS>>\n\n"
        rest = rest[1:]
    out = []
    for i, m in enumerate(rest):
        if (m["role"] == "user") != (i % 2 == 0):
            raise ChatTemplateError(
                "llama2: roles must alternate user/assistant after an optional system message")
        if m["role"] == "user":
            out.append(f"{bos_token}[INST] {sys_block if i == 0 else ''}"
                       f"{str(m['content']).strip()} [/INST]")
        else:
            out.append(f" {str(m['content']).strip()} {eos_token}")
    return "".join(out)


# Plain transcript for base models without chat tokens: "{system}\n\nUser: {q}\nAssistant: {a}\n..."
# ending with "Assistant:"; the stop string "\nUser:" ends the reply when the model starts the
# next user line itself.
_PLAIN_JINJA = (
    "{{ bos_token }}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}{{ (m['content'] | trim) + '\\n\\n' }}"
    "{%- elif m['role'] == 'user' -%}{{ 'User: ' + (m['content'] | trim) + '\\n' }}"
    "{%- else -%}{{ 'Assistant: ' + (m['content'] | trim) + '\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}"
)


def _render_plain(messages: Sequence[Message], add_generation_prompt: bool,
                  bos_token: str, eos_token: str) -> str:
    """Python twin of _PLAIN_JINJA."""
    out = [bos_token]
    for m in messages:
        content = str(m["content"]).strip()
        if m["role"] == "system":
            out.append(content + "\n\n")
        elif m["role"] == "user":
            out.append(f"User: {content}\n")
        else:
            out.append(f"Assistant: {content}\n")
    if add_generation_prompt:
        out.append("Assistant:")
    return "".join(out)


@dataclass(frozen=True)
class Family:
    """A built-in chat format: its Jinja source, the same format in Python, its end-of-turn text."""
    name: str
    jinja: str
    render: Callable[[Sequence[Message], bool, str, str], str]
    stop: tuple[str, ...]    # stop strings for generate(): the end-of-turn marker as text
    marker: str | None       # text that identifies a foreign template of this family


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("gemma", _GEMMA_JINJA, _render_gemma, ("<end_of_turn>",), "<start_of_turn>"),
    Family("chatml", _CHATML_JINJA, _render_chatml, ("<|im_end|>",), "<|im_start|>"),
    Family("llama3", _LLAMA3_JINJA, _render_llama3, ("<|eot_id|>",), "<|start_header_id|>"),
    Family("llama2", _LLAMA2_JINJA, _render_llama2, (), "[INST]"),
    Family("plain", _PLAIN_JINJA, _render_plain, ("\nUser:",), None),
)}


def choose_family(arch: str, vocab: Sequence[str] | frozenset[str] = (), bos_token: str = "") -> str:
    """Built-in family for a model without a chat template (rules in the module docstring).

    >>> choose_family("gemma3"), choose_family("llama", ["<s>", "<|im_start|>"]), choose_family("gpt2")
    ('gemma', 'chatml', 'plain')
    """
    arch = arch.lower()
    if arch.startswith("gemma"):
        return "gemma"
    if "<|im_start|>" in vocab or arch.startswith("qwen"):
        return "chatml"
    if "<|start_header_id|>" in vocab:
        return "llama3"
    if arch in ("llama", "mistral") and bos_token == "<s>":
        return "llama2"
    return "plain"


def family_of_template(source: str) -> str | None:
    """Family whose marker tokens a (foreign) Jinja template uses, or None if none does."""
    for fam in FAMILIES.values():
        if fam.marker is not None and fam.marker in source:
            return fam.name
    return None


# -- Jinja2 (optional) ----------------------------------------------------------------------------

def _import_jinja():
    """The jinja2 module (with .sandbox and .ext loaded), or None when it cannot be imported."""
    try:
        import jinja2.compiler
        import jinja2.ext
        import jinja2.sandbox
    except ImportError:
        return None
    return jinja2


def jinja_available() -> bool:
    """Whether HF templates can be rendered here (False in a Pyodide without jinja2)."""
    return _import_jinja() is not None


def _raise_exception(message: str) -> None:
    # templates call raise_exception('...') to refuse a conversation (HF/llama.cpp global)
    raise ChatTemplateError(message)


def _strftime_now(fmt: str) -> str:
    # llama.cpp/HF global used by Llama 3.x templates for "Today Date: ..."
    return datetime.datetime.now().strftime(fmt)


def _tojson(value: object, indent: int | None = None, ensure_ascii: bool = False,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # HF's tojson: plain JSON, no HTML escaping (the jinja2 built-in escapes < > & ')
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, separators=separators,
                      sort_keys=sort_keys)


# Bounds on what a template (text from a model file, so untrusted) may cost. A real chat template
# renders a conversation in a few ms into text about as long as the messages.
MAX_TEMPLATE_CHARS = 1 << 20     # the longest string or list a template may build, and its output
MAX_TEMPLATE_SECONDS = 2.0       # CPU time for one render
MAX_TEMPLATE_STEPS = 1 << 18     # range() elements and template lines run (a real template: a few thousand)


class _Budget:
    """One render's allowance: a deadline and a step count, checked from a line tracer."""

    def __init__(self, extra_chars: int):
        self.deadline = time.perf_counter() + MAX_TEMPLATE_SECONDS
        self.steps = 0
        self.max_chars = MAX_TEMPLATE_CHARS + extra_chars  # the messages themselves may be long

    def step(self, n: int = 1) -> None:
        self.steps += n
        if self.steps > MAX_TEMPLATE_STEPS:
            raise ChatTemplateError(f"chat template runs too long (over {MAX_TEMPLATE_STEPS} steps)")
        if self.steps % 1024 < n and time.perf_counter() > self.deadline:
            raise ChatTemplateError(f"chat template runs too long (over {MAX_TEMPLATE_SECONDS} s)")

    def size(self, n: int, what: str) -> None:
        if n > self.max_chars:
            raise ChatTemplateError(f"chat template builds a {what} of {n} items "
                                    f"(at most {self.max_chars})")


_BUDGET: list[_Budget] = []  # the render in progress (a stack: renders do not nest, but be safe)


def _budget() -> _Budget:
    if not _BUDGET:  # compile-time folding: no render running, so no allowance
        raise ChatTemplateError("chat template evaluated outside a render")
    return _BUDGET[-1]


def _length(value: object) -> int:
    return len(value) if isinstance(value, (str, list, tuple, dict)) else 0


def _bounded_sandbox(jinja2):
    """jinja2's immutable sandbox with size and time bounds (the sandbox itself only blocks
    attribute escapes and ranges over 100,000 items)."""
    width_spec = re.compile(r"%[-+ #0]*(\d+)|\{[^{}]*?:[^{}]*?(\d+)[^{}]*\}")

    def check_width(fmt: object) -> None:
        if isinstance(fmt, str):
            for m in width_spec.finditer(fmt):
                _budget().size(int(m.group(1) or m.group(2)), "formatted field")

    class BoundedCodeGenerator(jinja2.compiler.CodeGenerator):
        def visit_Concat(self, node, frame):  # `a ~ b`: through bounded_join, never folded
            self.write("environment.bounded_join((")
            for arg in node.nodes:
                self.visit(arg, frame)
                self.write(", ")
            self.write("))")

    class Bounded(jinja2.sandbox.ImmutableSandboxedEnvironment):
        # these operators go through call_binop (and are therefore never folded at compile time)
        intercepted_binops = frozenset(["*", "+", "**", "%", "//"])
        code_generator_class = BoundedCodeGenerator

        def wrap_str_format(self, value):  # str.format / format_map: the sandbox wraps them here
            wrapped = super().wrap_str_format(value)
            if wrapped is not None:
                check_width(value.__self__)
            return wrapped

        @staticmethod
        def bounded_join(parts) -> str:
            parts = [str(p) for p in parts]
            _budget().size(sum(map(len, parts)), "joined string")
            return "".join(parts)

        def call_binop(self, context, operator, left, right):
            budget = _budget()
            if operator == "*" and isinstance(left, int) and not isinstance(left, bool):
                left, right = right, left
            if operator == "*" and isinstance(right, int):
                budget.size(_length(left) * max(right, 0), "repeated string or list")
            elif operator == "+":
                budget.size(_length(left) + _length(right), "joined string or list")
            elif operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1:
                budget.size(int(right), "power")  # 2 ** n has n bits
            elif operator == "%":
                check_width(left)
            return super().call_binop(context, operator, left, right)

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja2's own signature)
            budget = _budget()
            name = getattr(__obj, "__name__", "")
            if isinstance(getattr(__obj, "__self__", None), str):  # str methods
                if name in ("center", "ljust", "rjust", "zfill", "expandtabs"):
                    budget.size(max([a for a in args if isinstance(a, int)], default=0), f"str.{name} width")
                elif name == "replace" and len(args) >= 2:
                    text, old, new = __obj.__self__, str(args[0]), str(args[1])
                    count = text.count(old) if old else len(text) + 1
                    budget.size(len(text) + count * max(0, len(new) - len(old)), "replaced string")
                elif name == "join" and args:
                    budget.size(sum(_length(x) for x in args[0]) if isinstance(args[0], (list, tuple)) else 0,
                                "joined string")
            return super().call(__context, __obj, *args, **kwargs)

    return Bounded


def _bounded_filters(jinja2, env) -> None:
    """Filters that can build huge strings get a size check; marked pass_context, so the compiler
    never runs them while folding constants (outside any budget)."""
    def wrap(name, size_of):
        inner = env.filters[name]

        @jinja2.pass_context
        def bounded(_ctx, value, *args, **kwargs):
            _budget().size(size_of(value, *args, **kwargs), f"{name} result")
            return inner(value, *args, **kwargs)

        env.filters[name] = bounded

    text_len = lambda v: len(str(v))  # noqa: E731
    wrap("center", lambda v, width=80: max(text_len(v), int(width)))
    wrap("indent", lambda v, width=4, *a, **k: text_len(v) * (1 + (int(width) if isinstance(width, int) else len(str(width)))))
    wrap("wordwrap", lambda v, width=79, *a, **k: 2 * text_len(v))
    wrap("format", lambda v, *a, **k: text_len(v) + sum(_length(x) for x in a) + max(
        [int(m.group(1) or m.group(2)) for m in re.finditer(r"%[-+ #0]*(\d+)|\{[^{}]*?:[^{}]*?(\d+)[^{}]*\}", str(v))],
        default=0))
    wrap("replace", lambda v, old, new, count=None: text_len(v) + (str(v).count(str(old)) if str(old) else text_len(v) + 1)
         * max(0, len(str(new)) - len(str(old))))


def _range(*args: int) -> range:
    """range() that counts its elements against the render's step budget (nested loops multiply)."""
    r = range(*args)
    _budget().step(len(r))
    return r


@functools.lru_cache(maxsize=8)
def _compile(source: str):
    """Compile once per template text (a chat re-renders the same template every turn)."""
    jinja2 = _import_jinja()
    if jinja2 is None:
        raise ChatTemplateError("jinja2 is not installed; install the 'chat' extra or use a "
                                "built-in template family")
    env = _bounded_sandbox(jinja2)(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    _bounded_filters(jinja2, env)
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["range"] = _range
    del env.globals["lipsum"]  # lorem-ipsum generator: no chat template needs it, lipsum(10**7) is huge
    if len(source) > MAX_TEMPLATE_CHARS:
        raise ChatTemplateError(f"chat template is {len(source)} characters (at most {MAX_TEMPLATE_CHARS})")
    try:
        return env.from_string(source)
    except ChatTemplateError:
        raise
    except Exception as e:  # TemplateError; RecursionError or MemoryError on a pathological source
        raise ChatTemplateError(f"chat template failed: {type(e).__name__}: {e}") from e


MAX_TEMPLATE_DEPTH = 64  # nested macro calls (recursion would otherwise exhaust the stack)


def _tracer(budget: _Budget):
    """A sys.settrace function that charges every line run in template code to `budget` and
    bounds the nesting of template functions (macros)."""
    depth = [0]

    def local(frame, event, arg):
        if event == "line":
            budget.step()
        elif event == "return":
            depth[0] -= 1
        return local

    def global_(frame, event, arg):
        if frame.f_code.co_filename != "<template>":
            return None
        depth[0] += 1
        if depth[0] > MAX_TEMPLATE_DEPTH:
            raise ChatTemplateError(f"chat template nests macro calls deeper than {MAX_TEMPLATE_DEPTH}")
        return local

    return global_


def render_jinja(source: str, messages: Sequence[Message], add_generation_prompt: bool,
                 bos_token: str, eos_token: str, **extra: object) -> str:
    """Render a HF-style chat template with Jinja2 in an immutable sandbox, within the bounds above.

    Hostile templates (huge loops, string multiplication to GBs, recursion, never-ending output)
    end in a ChatTemplateError that says which bound they hit.
    """
    if _import_jinja() is None:       # checked per call: the compile cache outlives an import
        raise ChatTemplateError("jinja2 is not installed; install the 'chat' extra or use a "
                                "built-in template family")
    template = _compile(source)
    budget = _Budget(extra_chars=sum(_length(m.get("content")) for m in messages if isinstance(m, Mapping)))
    _BUDGET.append(budget)
    previous = sys.gettrace()
    sys.settrace(_tracer(budget))
    try:
        out: list[str] = []
        n = 0
        for piece in template.generate(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                       bos_token=bos_token, eos_token=eos_token, **extra):
            n += len(piece)
            budget.size(n, "rendered prompt")
            out.append(piece)
        return "".join(out)
    except ChatTemplateError:
        raise
    except Exception as e:            # jinja2.TemplateError, SecurityError, TypeError, RecursionError, MemoryError
        raise ChatTemplateError(f"chat template failed: {type(e).__name__}: {e}") from e
    finally:
        sys.settrace(previous)
        _BUDGET.pop()


# -- the template a model uses --------------------------------------------------------------------

def normalize_messages(messages: Sequence[Message]) -> list[dict[str, str]]:
    """Check messages and flatten list-of-parts content ([{'type': 'text', 'text': ...}]) to str."""
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise ValueError(f"message {i} must be a mapping with 'role' and 'content', got {m!r}")
        content = m["content"]
        if isinstance(content, (list, tuple)):
            content = "".join(str(p.get("text", "")) for p in content
                              if isinstance(p, Mapping) and p.get("type") == "text")
        elif not isinstance(content, str):
            raise ValueError(f"message {i} content must be a string or a list of parts, "
                             f"got {type(content).__name__}")
        out.append({"role": str(m["role"]), "content": content})
    return out


@dataclass(frozen=True)
class ChatTemplate:
    """How one model formats a conversation."""
    family: str | None         # built-in family used (or matched), None for an unknown GGUF template
    source: str | None         # the GGUF's Jinja template, None when a built-in family is used
    bos_token: str             # text of the BOS token ("" if none)
    eos_token: str             # text of the EOS token ("" if none)
    note: str                  # which template, and why

    @classmethod
    def create(cls, template: str | None, arch: str, vocab: Sequence[str] = (),
               bos_token: str = "", eos_token: str = "") -> "ChatTemplate":
        if template:
            return cls(family_of_template(template), template, bos_token, eos_token,
                       "the model's own chat template (GGUF tokenizer.chat_template)")
        fam = choose_family(arch, vocab, bos_token)
        return cls(fam, None, bos_token, eos_token,
                   f"the model has no chat template; using the built-in '{fam}' format "
                   f"(chosen for architecture '{arch}')")

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, object]) -> "ChatTemplate":
        """From GGUF metadata: tokenizer.chat_template, general.architecture, the vocabulary."""
        tokens = metadata.get("tokenizer.ggml.tokens", [])
        vocab = tokens if isinstance(tokens, (list, tuple, StringTable)) else []

        def tok(key: str) -> str:
            try:
                i = operator.index(metadata.get(key))   # int or numpy integer
            except TypeError:
                return ""                               # key absent
            return str(vocab[i]) if 0 <= i < len(vocab) else ""
        template = metadata.get("tokenizer.chat_template")
        return cls.create(template if isinstance(template, str) else None,
                          str(metadata.get("general.architecture", "")), vocab,
                          tok("tokenizer.ggml.bos_token_id"), tok("tokenizer.ggml.eos_token_id"))

    @property
    def stop(self) -> tuple[str, ...]:
        """Stop strings to pass to generate(), in addition to the tokenizer's stop ids."""
        return FAMILIES[self.family].stop if self.family else ()

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True,
               engine: str = "auto") -> str:
        """The prompt text. engine: 'auto' (Jinja2 if importable), 'jinja' or 'python'."""
        if engine not in ("auto", "jinja", "python"):
            raise ValueError(f"engine {engine!r} must be 'auto', 'jinja' or 'python'")
        use_jinja = engine == "jinja" or (engine == "auto" and jinja_available())
        if use_jinja:
            if self.source is not None:   # the model's own template gets the messages as given
                return render_jinja(self.source, messages, add_generation_prompt,
                                    self.bos_token, self.eos_token)
            return render_jinja(FAMILIES[self.family].jinja, normalize_messages(messages),
                                add_generation_prompt, self.bos_token, self.eos_token)
        if self.family is None:
            raise ChatTemplateError(
                "this model's chat template needs jinja2 (it matches no built-in family); "
                "install jinja2")
        return FAMILIES[self.family].render(normalize_messages(messages), add_generation_prompt,
                                            self.bos_token, self.eos_token)


def opening_tokens(tokenizer, template: ChatTemplate) -> list[int]:
    """The tokens every new conversation through `template` starts with, whatever the user writes
    (BOS, the template's default system prompt, the user turn's header): the common prefix of two
    one-message conversations; [] when it is shorter than 2 tokens or the template fails on them."""
    try:
        a, b = (chat_tokens(tokenizer, template, [{"role": "user", "content": c}]) for c in "12")
    except Exception:  # a template this conversation does not suit: no opening
        return []
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n] if n >= 2 else []


def chat_tokens(tokenizer, template: ChatTemplate, messages: Sequence[Message],
                add_generation_prompt: bool = True, engine: str = "auto") -> list[int]:
    """Render and tokenize a conversation; the ids to pass to generate().

    Special-token text (<start_of_turn>, the BOS text...) is parsed as special tokens. BOS is added
    only if the tokenizer wants one and the template did not already write it.
    """
    text = template.render(messages, add_generation_prompt, engine)
    ids = list(tokenizer.encode(text, add_bos=False, parse_special=True))
    bos = getattr(tokenizer, "bos_id", None)
    if getattr(tokenizer, "add_bos", False) and bos is not None and (not ids or ids[0] != bos):
        ids.insert(0, bos)
    return ids
