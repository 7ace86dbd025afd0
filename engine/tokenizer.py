"""Tokenizer: text <-> token ids, built from GGUF metadata (pipeline stage: gguf.py -> tokenizer.py).

`Tokenizer.from_metadata(gguf.metadata)` reads the `tokenizer.ggml.*` keys once; generate.py then
turns sampled ids back into text with `token_bytes` (or `StreamDecoder`). Three vocabulary kinds,
chosen by `tokenizer.ggml.model`:

    "llama"  SentencePiece-style (Gemma, Llama 1/2, Mistral): spaces become U+2581 "▁", then
             adjacent pieces merge greedily by vocabulary score; characters the vocabulary lacks
             fall back to `<0xNN>` byte tokens.
    "gpt2"   byte-level BPE (GPT-2, Llama 3, Qwen2, ...): a regex chosen by `tokenizer.ggml.pre`
             splits the text into words, each UTF-8 byte is written as one printable character
             (GPT-2's bytes_to_unicode map), and `tokenizer.ggml.merges` ranks decide the merges.
    "bytes"  one token per UTF-8 byte, id = byte value (vocabulary 256; Atome and the vanilla byte
             GPT). Our own name, not a llama.cpp one; also chosen when there is no
             `tokenizer.ggml.model` key and the vocabulary has 256 entries (see `_byte_vocab_size`).

The reference is llama.cpp (src/llama-vocab.cpp, src/unicode.cpp), and tests/test_tokenizer.py
holds us to its token ids. What we follow from it, on purpose:
  - Special tokens are split out of the text first, longest text first, one token at a time over
    the whole text (llama.cpp's tokenizer_st_partition). User-defined tokens (Gemma's "\\n\\n",
    runs of spaces and tabs, "<b>") are always split out; control tokens ("<start_of_turn>",
    "<bos>") only with parse_special=True.
  - SPM: `add_space_prefix` puts a space before the first text fragment and before every fragment
    that follows a special token (Gemma's GGUF sets it to False).
  - Tokens named in llama.cpp's list of end-of-generation texts ("<end_of_turn>", "<|eot_id|>",
    "<|im_end|>", "</s>", ...) are forced to control type and, with eos/eot/eom, make `stop_ids`.
    So Gemma 3's "</s>" (a user-defined HTML tag there) is a control token that ends generation,
    exactly as in llama.cpp (checked against llama-cpp-python 0.3.36).
What we do not: the per-model LSTRIP/RSTRIP attributes (phi-3, jina), tokenizer kinds other than
the three above, pre-tokenizers outside `_PRE_TOKENIZERS`, and decode's clean_spaces pass: decode
returns exactly the bytes of the tokens, so decode(encode(s)) == s except for a literal "▁" in an
SPM text (it decodes as a space) and add_space_prefix spaces after special tokens. A character
with neither a token nor byte tokens becomes the unknown token (llama.cpp aborts there).

Pre-tokenizer regexes without `\\p{L}`/`\\p{N}`: Pyodide has no `regex` package and Python's `re`
has no Unicode property classes. We do what llama.cpp does for its std::regex path: "collapse" the
text to one character per code point - ASCII stays itself, every other code point becomes one
stand-in character for its class (letter, number, punctuation, symbol, mark, whitespace, other),
read from `unicodedata` - and run a plain `re` pattern whose classes name those stand-ins. Match
offsets in the collapsed text are code point offsets in the real text. Whitespace is Unicode's
White_Space set (str.isspace() minus U+001C..U+001F), which is llama.cpp's set. Category data is
Python's own Unicode version (14.0 in CPython 3.11, 15.0 in Pyodide's 3.12), so code points
assigned after that version split differently than in llama.cpp.
"""

from __future__ import annotations

import codecs
import heapq
import re
import unicodedata
from array import array
from typing import Iterable, Sequence

import numpy as np

from .strtable import StringTable

__all__ = ["Tokenizer", "StreamDecoder", "TokenizerError"]


class TokenizerError(ValueError):
    """The tokenizer metadata is missing, malformed or asks for an unsupported vocabulary kind."""


# tokenizer.ggml.token_type values (gguf-py TokenType / llama.cpp LLAMA_TOKEN_TYPE_*)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

SPACE_MARK = "\u2581"  # "▁": SentencePiece's visible space

# Token texts llama.cpp (llama-vocab.cpp, `special_eog_ids`) treats as end-of-generation: any of
# them in the vocabulary joins `stop_ids` and is forced to control type. The last line is its
# fill-in-the-middle pad/repo/file-separator names, which also end generation.
_EOG_TEXTS = frozenset({
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<\uff5cend\u2581of\u2581sentence\uff5c>", "[e~[",
    "<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]", "<|fim_repo|>", "<|repo_name|>",
    "<fim-repo>", "<REPO>", "<reponame>", "<|file_sep|>",
})
# Texts that name the end-of-turn token when `tokenizer.ggml.eot_token_id` is absent.
_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
              "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]", "<end_of_utterance>")
# gpt-oss's harmony markers, which llama.cpp always renders (forced to user-defined).
_ALWAYS_SHOWN = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")


# --------------------------------------------------------------------------------------------
# Byte-level BPE: GPT-2's byte <-> printable character map
# --------------------------------------------------------------------------------------------

def _bytes_to_unicode() -> list[str]:
    """Byte value -> the printable character that stands for it in byte-level BPE vocabularies.

    Printable Latin-1 bytes stand for themselves; the other 68 (controls, space, 0x7F-0xA0,
    soft hyphen) take U+0100, U+0101, ... in byte order. So b" " -> "Ġ" (U+0120), b"\\n" -> "Ċ".
    >>> _bytes_to_unicode()[ord(" ")]
    'Ġ'
    """
    keep = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    table, n = [], 0
    for b in range(256):
        if b in keep:
            table.append(chr(b))
        else:
            table.append(chr(256 + n))
            n += 1
    return table


_BYTE_TO_CHAR = _bytes_to_unicode()                       # 256 one-character strings
_CHAR_TO_BYTE = {c: b for b, c in enumerate(_BYTE_TO_CHAR)}


def _byte_encode(word: str) -> str:
    """UTF-8 bytes of `word`, each written as its byte-level BPE character: "é " -> "Ã©Ġ"."""
    return "".join([_BYTE_TO_CHAR[b] for b in word.encode("utf-8")])


# --------------------------------------------------------------------------------------------
# Pre-tokenizer: Unicode classes through a collapsed text (see the module docstring)
# --------------------------------------------------------------------------------------------

# Stand-in characters for non-ASCII code points, one per class. None of them is a letter, digit or
# whitespace for the patterns below, which name every class explicitly.
_LETTER, _NUMBER, _PUNCT, _SYMBOL, _MARK, _OTHER = "\x80", "\x81", "\x82", "\x83", "\x84", "\x85"
_WS_STANDIN = "\x0b"  # non-ASCII whitespace collapses to vertical tab (as in llama.cpp)
_CATEGORY_STANDIN = {"L": _LETTER, "N": _NUMBER, "P": _PUNCT, "S": _SYMBOL, "M": _MARK}
_ASCII_WS = "\t\n\x0b\x0c\r "  # White_Space in ASCII; U+001C..U+001F are not (str.isspace says yes)


def _ascii_class(major: str) -> str:
    """re class body for the ASCII code points of one Unicode major category, e.g. "L" -> A-Za-z."""
    return "".join(re.escape(chr(c)) for c in range(128) if unicodedata.category(chr(c))[0] == major)


# class bodies (the inside of [...]) over the collapsed text
_CLS = {
    "S": re.escape(_ASCII_WS),                             # \s
    "L": _ascii_class("L") + _LETTER,                      # \p{L}
    "N": _ascii_class("N") + _NUMBER,                      # \p{N}
    "P": _ascii_class("P") + _PUNCT,                       # \p{P}
}


def _collapse_char(c: str) -> str:
    """One non-ASCII code point -> its stand-in character."""
    if c.isspace() and c not in "\x1c\x1d\x1e\x1f":
        return _WS_STANDIN
    return _CATEGORY_STANDIN.get(unicodedata.category(c)[0], _OTHER)


_collapse_cache: dict[str, str] = {}


def _collapse(text: str) -> str:
    """Same length as `text`; ASCII kept, other code points replaced by their class stand-in."""
    if text.isascii():
        return text
    cache = _collapse_cache
    out = []
    for c in text:
        if c < "\x80":
            out.append(c)
        else:
            s = cache.get(c)
            if s is None:
                s = cache[c] = _collapse_char(c)
            out.append(s)
    return "".join(out)


def _pattern(p: str) -> re.Pattern:
    """Compile a pattern written with {S} {L} {N} {P} class bodies (see `_CLS`)."""
    return re.compile(p.format(**_CLS))


# The split regexes, written from the patterns in each model's tokenizer.json. "(?i:'s|...)" is
# spelled out as '[sS]... because re's IGNORECASE would also fold "ſ" and "K" (Kelvin).
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?[{L}]+| ?[{N}]+| ?[^{S}{L}{N}]+|[{S}]+(?![^{S}])|[{S}]+"
_CONTRACTIONS = r"'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD]"
_LLAMA3 = (_CONTRACTIONS + r"|[^\r\n{L}{N}]?[{L}]+|[{N}]{{1,3}}| ?[^{S}{L}{N}]+[\r\n]*"
           r"|[{S}]*[\r\n]+|[{S}]+(?![^{S}])|[{S}]+")
_QWEN2 = (_CONTRACTIONS + r"|[^\r\n{L}{N}]?[{L}]+|[{N}]| ?[^{S}{L}{N}]+[\r\n]*"
          r"|[{S}]*[\r\n]+|[{S}]+(?![^{S}])|[{S}]+")

# tokenizer.ggml.pre -> (split regexes applied in turn, each to the pieces of the one before;
#                        ignore_merges: a word that is itself a token is kept whole;
#                        add_bos default)
# Names and patterns as in llama.cpp's llm_tokenizer_bpe; "default" is its fallback for a missing
# or "default" pre-tokenizer.
_PRE_TOKENIZERS: dict[str, tuple[tuple[str, ...], bool, bool]] = {}
for _names, _spec in [
    (("gpt-2", "gpt2", "phi-2", "mpt", "olmo", "roberta-bpe", "jais"), ((_GPT2,), False, False)),
    (("llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral", "dbrx", "smaug-bpe"),
     ((_LLAMA3,), True, True)),
    (("qwen2", "stablelm2", "deepseek-r1-qwen", "megrez", "hunyuan"), ((_QWEN2,), False, False)),
    (("starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b"),
     ((r"[{N}]", _GPT2), False, False)),
    (("default", ""), ((r"[{P}\$\+<=>\^~\|]+", _GPT2, r"[{N}]+", r"[0-9][0-9][0-9]"), False, False)),
]:
    for _name in _names:
        _PRE_TOKENIZERS[_name] = _spec


def _split_words(text: str, patterns: list[re.Pattern]) -> list[str]:
    """Split `text` with each pattern in turn; text between matches is kept as its own piece.

    >>> _split_words("Hello world's 12345", [_pattern(_LLAMA3)])
    ['Hello', ' world', "'s", ' ', '123', '45']
    """
    collapsed = _collapse(text)                              # same length as text
    spans = [(0, len(text))]
    for pat in patterns:
        out = []
        for start, end in spans:
            pos = start
            for m in pat.finditer(collapsed, start, end):
                if m.start() > pos:
                    out.append((pos, m.start()))             # unmatched gap: one piece
                if m.end() > m.start():
                    out.append((m.start(), m.end()))
                pos = m.end()
            if pos < end:
                out.append((pos, end))
        spans = out
    return [text[a:b] for a, b in spans]


# --------------------------------------------------------------------------------------------
# The tokenizer
# --------------------------------------------------------------------------------------------

def _byte_vocab_size(metadata: dict) -> int | None:
    """Vocabulary size of a model without tokenizer.ggml.model: its token list, else {arch}.vocab_size."""
    tokens = metadata.get("tokenizer.ggml.tokens")
    if tokens is not None:
        return len(tokens)
    arch = metadata.get("general.architecture")
    size = metadata.get(f"{arch}.vocab_size") if arch else None
    return int(size) if size is not None else None


class Tokenizer:
    """Encode text to token ids and back, for one GGUF vocabulary (see the module docstring).

    Attributes: kind ("llama" | "gpt2" | "bytes"), vocab_size, bos_id, eos_id, unk_id (None when
    the model has none), add_bos / add_eos (what encode() does by default), add_space_prefix,
    stop_ids (ids that end generation), tokens (token texts, a StringTable), token_types (np.int32
    array).

    The vocabulary stays as the file's bytes (engine/strtable.py): text -> id and merge -> rank are
    lookups in the token and merge tables, scores an array('f'). No Python object per entry.
    """

    def __init__(self, kind: str, tokens: Sequence[str], token_types: np.ndarray,
                 scores: Sequence[float] | np.ndarray | None = None,
                 merges: Sequence[str] | None = None,
                 pre: str = "default", bos_id: int | None = None, eos_id: int | None = None,
                 unk_id: int | None = None, eot_id: int | None = None, eom_id: int | None = None,
                 add_bos: bool = False, add_eos: bool = False, add_space_prefix: bool = False):
        if not isinstance(tokens, StringTable):
            tokens = StringTable.from_strings(tokens, "surrogateescape")
        n = len(tokens)
        if kind not in ("llama", "gpt2", "bytes"):
            raise TokenizerError(f"tokenizer.ggml.model {kind!r} not supported "
                                 "(expected 'llama', 'gpt2' or 'bytes')")
        if len(token_types) != n:
            raise TokenizerError(f"tokenizer.ggml.token_type has {len(token_types)} entries "
                                 f"(expected {n}, one per token)")
        self.kind = kind
        self.tokens = tokens
        self.vocab_size = n
        types = np.array(token_types, dtype=np.int32)         # (n,) copied: we adjust it below

        def valid(i, key):
            if i is None:
                return None
            if not 0 <= int(i) < n:
                raise TokenizerError(f"{key} = {int(i)} is outside the vocabulary (0..{n - 1})")
            return int(i)

        self.bos_id = valid(bos_id, "tokenizer.ggml.bos_token_id")
        self.eos_id = valid(eos_id, "tokenizer.ggml.eos_token_id")
        self.unk_id = valid(unk_id, "tokenizer.ggml.unknown_token_id")
        self.add_bos = bool(add_bos)
        self.add_eos = bool(add_eos)
        self.add_space_prefix = bool(add_space_prefix) and kind == "llama"
        if self.add_bos and self.bos_id is None:
            raise TokenizerError("tokenizer.ggml.add_bos_token is true but there is no BOS token id")

        # text -> id (`_id`); a repeated text maps to its last id, and an empty text gets a
        # placeholder that no input can produce (both as llama.cpp does)
        empty = np.flatnonzero(tokens.lengths() == 0).tolist()
        self._empty = {f"[EMPTY_{i}]": i for i in empty}
        self._id = tokens.find if not empty else self._id_with_placeholders
        text = self._text

        # end of generation: every token with an end-of-generation text (forced to control
        # type), then eos, eot and eom; then llama.cpp's two exceptions
        eot_id = valid(eot_id, "tokenizer.ggml.eot_token_id")
        if eot_id is None:
            eot_id = next((i for i in map(self._id, _EOT_TEXTS) if i is not None), None)
        stop = {i for i in map(self._id, _EOG_TEXTS) if i is not None}
        if kind != "bytes":
            types[list(stop)] = CONTROL
            types[[i for i in map(self._id, _ALWAYS_SHOWN) if i is not None]] = USER_DEFINED
        stop |= {i for i in (self.eos_id, eot_id, valid(eom_id, "tokenizer.ggml.eom_token_id"))
                 if i is not None}
        names = {text(i): i for i in stop}
        has = names.__contains__
        if has("<|end|>") and (has("<|call|>") or has("<|calls|>")) and (
                has("<|return|>") or has("<|flush|>")):           # gpt-oss / solar-open: a turn end
            stop.discard(names["<|end|>"])
            types[names["<|end|>"]] = USER_DEFINED
        if has("</s>") and (has("<|tool_response>") or has("<|plamo:eos|>")):
            stop.discard(names["</s>"])                           # gemma4 / plamo: plain text
            types[names["</s>"]] = NORMAL
        self.eot_id = eot_id
        self.stop_ids = frozenset(stop)
        self.token_types = types

        # special tokens split out before tokenizing: (text, id, needs parse_special), longest
        # UTF-8 text first (ties by id; llama.cpp's std::sort leaves tie order unspecified)
        special = np.nonzero((types == CONTROL) | (types == USER_DEFINED) | (types == UNKNOWN))[0]
        self._special = sorted(((text(i), int(i), bool(types[i] != USER_DEFINED))
                                for i in special.tolist()),
                               key=lambda s: -len(s[0].encode("utf-8", "surrogateescape")))

        self._piece_cache: dict[int, bytes] = {}
        if kind == "llama":
            if scores is None:
                scores = [0.0] * n
            if len(scores) != n:
                raise TokenizerError(f"tokenizer.ggml.scores has {len(scores)} entries (expected {n})")
            self._scores = array("f", np.asarray(scores, np.float32).tobytes())   # (n,) [i] -> float
            # byte fallback: "<0xNN>" tokens, else the one-byte text (llama.cpp byte_to_token)
            self._byte_ids = [self._first_id(f"<0x{b:02X}>", chr(b)) if b < 128
                              else self._id(f"<0x{b:02X}>") for b in range(256)]
        elif kind == "gpt2":
            if pre not in _PRE_TOKENIZERS:
                raise TokenizerError(f"tokenizer.ggml.pre {pre!r} not supported (expected one of "
                                     f"{', '.join(sorted(p for p in _PRE_TOKENIZERS if p))})")
            patterns, self._ignore_merges, _ = _PRE_TOKENIZERS[pre]
            self._split = [_pattern(p) for p in patterns]
            # merge rules "left right"; a pair's rank is the line's index, the first occurrence
            # winning (llama.cpp's emplace), see `_rank`
            if not isinstance(merges, StringTable):
                merges = StringTable.from_strings(merges or (), "surrogateescape")
            self._merges = merges
            self._byte_ids = [self._id(c) for c in _BYTE_TO_CHAR]
            self._word_cache: dict[str, list[int]] = {}
        self.pre = pre

    def _text(self, i: int) -> str:
        """Token i's text as the lookups see it (an empty text's placeholder)."""
        return self.tokens[i] or f"[EMPTY_{i}]"

    def _id_with_placeholders(self, text: str) -> int | None:
        """`_id` of a vocabulary with empty texts: the last of the real ids and placeholders."""
        i = self.tokens.find(text) if text else None
        j = self._empty.get(text)
        return i if j is None or (i is not None and i > j) else j

    def _first_id(self, text: str, fallback: str) -> int | None:
        i = self._id(text)
        return self._id(fallback) if i is None else i

    def _rank(self, left: str, right: str) -> int | None:
        """Rank of the merge "left right". The old (left, right) split of a line was at its first
        space after position 0; byte-level symbols hold no space (it is "Ġ"), so the line
        left + " " + right is the same test."""
        return self._merges.find(f"{left} {right}", last=False)

    # ---------------------------------------------------------------------------------------
    # construction from GGUF metadata
    # ---------------------------------------------------------------------------------------

    @classmethod
    def from_metadata(cls, metadata: dict) -> "Tokenizer":
        """Build from a GGUF metadata dict (the `tokenizer.ggml.*` keys)."""
        g = lambda key, default=None: metadata.get("tokenizer.ggml." + key, default)  # noqa: E731
        model = g("model")
        if model is None or model == "bytes":
            size = 256 if model == "bytes" else _byte_vocab_size(metadata)
            if size != 256:
                raise TokenizerError("tokenizer.ggml.model is missing and the vocabulary has "
                                     f"{size} tokens (expected 256 for a byte tokenizer)")
            return cls.byte_tokenizer(bos_id=g("bos_token_id"), eos_id=g("eos_token_id"),
                                      add_bos=bool(g("add_bos_token", False)))
        tokens = g("tokens")
        if tokens is None:
            raise TokenizerError("tokenizer.ggml.tokens is missing (a vocabulary is needed for "
                                 f"tokenizer.ggml.model {model!r})")
        n = len(tokens)
        types = g("token_type")
        types = np.full(n, NORMAL, np.int32) if types is None else np.asarray(types)
        scores = g("scores")
        pre = g("pre", "default") or "default"
        if model == "llama":
            # llama.cpp's SPM defaults: BOS 1, EOS 2, UNK 0, add BOS, add a space prefix
            defaults = dict(bos=1, eos=2, unk=0, add_bos=True, prefix=True)
        elif model == "gpt2":
            if g("merges") is None:
                raise TokenizerError("tokenizer.ggml.merges is missing (needed for 'gpt2' BPE)")
            llama3_like = _PRE_TOKENIZERS.get(pre, ((), False, False))[2]
            defaults = dict(bos=None, eos=None, unk=None, prefix=False,
                            add_bos=llama3_like and g("bos_token_id") is not None)
        else:
            raise TokenizerError(f"tokenizer.ggml.model {model!r} not supported "
                                 "(expected 'llama', 'gpt2' or 'bytes')")

        def special_id(key, default):
            v = g(key, default)
            return int(v) if v is not None and 0 <= int(v) < n else None  # llama.cpp drops bad ids

        return cls(model, tokens, types, scores=scores, merges=g("merges"), pre=pre,
                   bos_id=special_id("bos_token_id", defaults["bos"]),
                   eos_id=special_id("eos_token_id", defaults["eos"]),
                   unk_id=special_id("unknown_token_id", defaults["unk"]),
                   eot_id=special_id("eot_token_id", None), eom_id=special_id("eom_token_id", None),
                   add_bos=g("add_bos_token", defaults["add_bos"]),
                   add_eos=g("add_eos_token", False),
                   add_space_prefix=g("add_space_prefix", defaults["prefix"]))

    @classmethod
    def byte_tokenizer(cls, bos_id: int | None = None, eos_id: int | None = None,
                       add_bos: bool = False) -> "Tokenizer":
        """The byte tokenizer: token id b is the byte b; text is UTF-8."""
        tokens = [f"<0x{b:02X}>" for b in range(256)]
        return cls("bytes", tokens, np.full(256, BYTE, np.int32), bos_id=bos_id, eos_id=eos_id,
                   add_bos=add_bos)

    # ---------------------------------------------------------------------------------------
    # encode
    # ---------------------------------------------------------------------------------------

    def encode(self, text: str, add_bos: bool | None = None,
               parse_special: bool = False) -> list[int]:
        """Token ids of `text`.

        add_bos: None -> the model's own choice (`self.add_bos`, and EOS after when `self.add_eos`);
        True -> BOS first; False -> neither BOS nor EOS. parse_special=True lets control-token
        texts in `text` ("<start_of_turn>") become those tokens; user-defined tokens always do.
        """
        out: list[int] = []
        if add_bos if add_bos is not None else self.add_bos:
            if self.bos_id is None:
                raise TokenizerError("add_bos requested but this vocabulary has no BOS token")
            out.append(self.bos_id)
        if self.kind == "bytes":
            out.extend(text.encode("utf-8"))
        else:
            is_prev_special = True                        # the first fragment counts as after one
            for frag in self._partition(text, parse_special):
                if isinstance(frag, int):
                    out.append(frag)
                    is_prev_special = True
                elif self.kind == "llama":
                    if self.add_space_prefix and is_prev_special:
                        frag = " " + frag
                    self._encode_spm(frag.replace(" ", SPACE_MARK), out)
                    is_prev_special = False
                else:
                    self._encode_bpe(frag, out)
        if add_bos is None and self.add_eos and self.eos_id is not None:
            out.append(self.eos_id)
        return out

    def _partition(self, text: str, parse_special: bool) -> list[str | int]:
        """Split special-token texts out of `text`: a list of text fragments and token ids.

        Each special token in turn (longest first) is cut out of every text fragment left so far,
        so a longer token wins over a shorter one anywhere in the text, not just at one position.
        >>> gemma._partition("a\\n\\nb", False)    # "\\n\\n" is a user-defined token (id 108)
        ['a', 108, 'b']
        """
        frags: list[str | int] = [text] if text else []
        for stext, sid, needs_parse in self._special:
            if needs_parse and not parse_special:
                continue
            if stext not in text:                          # cheap test on the whole text first
                continue
            out: list[str | int] = []
            for f in frags:
                if isinstance(f, int) or stext not in f:
                    out.append(f)
                    continue
                parts = f.split(stext)
                for k, part in enumerate(parts):
                    if k:
                        out.append(sid)
                    if part:
                        out.append(part)
            frags = out
        return frags

    def _encode_spm(self, text: str, out: list[int]) -> None:
        """SentencePiece-style merging of one fragment (spaces already "▁"), appended to `out`.

        Start from single characters; repeatedly merge the adjacent pair whose concatenation is the
        highest-scoring vocabulary token (leftmost on ties), until no pair is a token. Pieces that
        are not tokens (a character outside the vocabulary) become their UTF-8 byte tokens.
        """
        if not text:
            return
        find, scores = self._id, self._scores
        sym = list(text)                                   # symbol texts; "" once merged away
        n = len(sym)
        nxt = list(range(1, n)) + [-1]                     # linked list over live symbols
        prv = list(range(-1, n - 1))
        heap: list[tuple[float, int, int, int]] = []       # (-score, left, right, merged length)
        for i in range(n - 1):
            t = find(sym[i] + sym[i + 1])
            if t is not None:
                heap.append((-scores[t], i, i + 1, 2))
        heapq.heapify(heap)
        while heap:
            _, left, right, size = heapq.heappop(heap)
            a, b = sym[left], sym[right]
            if not a or not b or len(a) + len(b) != size:  # stale: a side changed since the push
                continue
            sym[left], sym[right] = a + b, ""
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prv[nxt[right]] = left
            for l, r in ((prv[left], left), (left, nxt[left])):   # the two new neighbours
                if l >= 0 and r >= 0:
                    merged = sym[l] + sym[r]
                    t = find(merged)
                    if t is not None:
                        heapq.heappush(heap, (-scores[t], l, r, len(merged)))
        i = 0
        while i >= 0:
            t = find(sym[i])
            if t is not None:
                out.append(t)
            else:
                out.extend(self._byte_token(b) for b in sym[i].encode("utf-8"))
            i = nxt[i]

    def _byte_token(self, b: int) -> int:
        t = self._byte_ids[b]
        if t is None:
            if self.unk_id is None:
                raise TokenizerError(f"byte 0x{b:02X} has no token (no <0x{b:02X}> in the "
                                     "vocabulary and no unknown token)")
            return self.unk_id
        return t

    def _encode_bpe(self, text: str, out: list[int]) -> None:
        """Byte-level BPE of one fragment: split into words, merge each word, append ids."""
        cache = self._word_cache
        for word in _split_words(text, self._split):
            ids = cache.get(word)
            if ids is None:
                if len(cache) > 50_000:
                    cache.clear()
                ids = cache[word] = self._bpe_word(_byte_encode(word))
            out.extend(ids)

    def _bpe_word(self, word: str) -> list[int]:
        """Merge one byte-encoded word: always the lowest-ranked adjacent pair (leftmost on ties).

        Pieces left that are not tokens fall back to their single-byte tokens (dropped when the
        vocabulary lacks one, as llama.cpp does).
        """
        find, rank_of = self._id, self._rank
        if self._ignore_merges:
            t = find(word)
            if t is not None:
                return [t]
        sym = list(word)
        n = len(sym)
        nxt = list(range(1, n)) + [-1]
        prv = list(range(-1, n - 1))
        heap: list[tuple[int, int, int, str]] = []         # (rank, left, right, merged text)
        for i in range(n - 1):
            r = rank_of(sym[i], sym[i + 1])
            if r is not None:
                heap.append((r, i, i + 1, sym[i] + sym[i + 1]))
        heapq.heapify(heap)
        while heap:
            _, left, right, merged = heapq.heappop(heap)
            a, b = sym[left], sym[right]
            if not a or not b or a + b != merged:          # stale
                continue
            sym[left], sym[right] = merged, ""
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prv[nxt[right]] = left
            for l, r in ((prv[left], left), (left, nxt[left])):
                if l >= 0 and r >= 0:
                    rank = rank_of(sym[l], sym[r])
                    if rank is not None:
                        heapq.heappush(heap, (rank, l, r, sym[l] + sym[r]))
        result = []
        i = 0
        while i >= 0:
            t = find(sym[i])
            if t is not None:
                result.append(t)
            else:
                result.extend(self._byte_ids[_CHAR_TO_BYTE[c]] for c in sym[i]
                              if self._byte_ids[_CHAR_TO_BYTE[c]] is not None)
            i = nxt[i]
        return result

    # ---------------------------------------------------------------------------------------
    # decode
    # ---------------------------------------------------------------------------------------

    def token_bytes(self, token_id: int, special: bool = False) -> bytes:
        """The bytes one token stands for.

        Byte tokens give their byte, "▁" gives a space, byte-level BPE characters give their bytes.
        Control and unknown tokens ("<bos>", "<end_of_turn>") give b"" unless special=True, like
        llama.cpp's token_to_piece; user-defined tokens ("<b>", "\\n\\n") give their text.
        """
        token_id = int(token_id)
        if special and self.kind != "bytes":
            t = self.token_types[token_id]
            if t == CONTROL or t == UNKNOWN:
                return self.tokens[token_id].encode("utf-8", "surrogateescape")
        piece = self._piece_cache.get(token_id)
        if piece is None:
            if not 0 <= token_id < self.vocab_size:
                raise ValueError(f"token id {token_id} is outside the vocabulary "
                                 f"(0..{self.vocab_size - 1})")
            piece = self._piece_cache[token_id] = self._piece(token_id)
        return piece

    def _piece(self, i: int) -> bytes:
        """Uncached token_bytes(i) with special=False."""
        if self.kind == "bytes":
            return bytes([i])
        text, t = self.tokens[i], self.token_types[i]
        if t == CONTROL or t == UNKNOWN:
            return b""
        if t == USER_DEFINED:
            return text.encode("utf-8", "surrogateescape")
        if t == BYTE:
            return bytes([int(text[3:5], 16)])             # "<0xNN>"
        if t != NORMAL:
            return b""                                     # unused / undefined types
        if self.kind == "llama":
            return text.replace(SPACE_MARK, " ").encode("utf-8", "surrogateescape")
        # byte-level BPE; a character outside the byte map is kept as its own UTF-8
        return b"".join(bytes([_CHAR_TO_BYTE[c]]) if c in _CHAR_TO_BYTE else c.encode("utf-8")
                        for c in text)

    def decode(self, ids: Iterable[int], special: bool = False) -> str:
        """Text of a token sequence (invalid UTF-8 becomes U+FFFD).

        With add_space_prefix (SentencePiece models that put "▁" before the text) the one space
        that encode() added before the first text is removed, so decode(encode(s)) == s when no
        special or user-defined token is involved (encode also prefixes the text after each one).
        special=True renders control tokens as their text.
        """
        ids = [int(i) for i in ids]
        pieces = [self.token_bytes(i, special) for i in ids]
        if self.add_space_prefix:
            # the first shown piece carries the prefix if it is a normal token (text that follows
            # a special token at the start got no prefix)
            k = next((k for k, p in enumerate(pieces) if p), None)
            if k is not None and self.token_types[ids[k]] == NORMAL and pieces[k][:1] == b" ":
                pieces[k] = pieces[k][1:]
        return b"".join(pieces).decode("utf-8", errors="replace")

    def stream(self, special: bool = False) -> "StreamDecoder":
        """A StreamDecoder for this vocabulary."""
        return StreamDecoder(self, special)

    def __repr__(self) -> str:
        return (f"Tokenizer(kind={self.kind!r}, pre={self.pre!r}, vocab_size={self.vocab_size}, "
                f"bos_id={self.bos_id}, eos_id={self.eos_id}, stop_ids={sorted(self.stop_ids)})")


class StreamDecoder:
    """Token ids in, printable text out, one token at a time.

    A character split over several byte tokens prints nothing until its last byte arrives, so a
    stream never shows half a character; `flush()` at the end releases a dangling partial
    character as U+FFFD.
    >>> d = StreamDecoder(gemma)              # "𠀀" (U+20000) is 4 byte tokens in Gemma's vocabulary
    >>> [d.feed(i) for i in gemma.encode("𠀀", add_bos=False)]
    ['', '', '', '𠀀']
    """

    def __init__(self, tokenizer: Tokenizer, special: bool = False):
        self.tokenizer = tokenizer
        self.special = special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id: int) -> str:
        """The text that became complete with this token ("" while a character is unfinished)."""
        piece = self.tokenizer.token_bytes(token_id, True) if self.special else self.tokenizer.token_bytes(token_id)
        return self._utf8.decode(piece)

    def flush(self) -> str:
        """End of stream: whatever is left (U+FFFD for an unfinished character), then reset."""
        tail = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return tail
